"""Runs on disk: ``load(run_dir)`` turns a trained run directory back into a score function.

    run = load("runs/toy")
    run.score(x, t)      # grad_x log p_t(x) with the EMA weights (frozen), eval mode, [B, *dims] -> [B, *dims]
    run.sde              # the forward process it was trained with
    run.model            # the ScoreModel (EMA weights)
    run.config           # the complete config dict it was trained with
    run.scaler           # the data scaler (``scaler.inverse`` maps samples back), or None
    run.step             # training steps behind the weights

Only JSON and safetensors are read (see scorelab.checkpoint); nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from .config import build_model, build_sde, resolve_device, scaler_from_state


class Run:
    """A trained run: ``score(x, t)`` is a plain score function usable by every sampler and likelihood."""

    def __init__(self, model: torch.nn.Module, config: dict, step: int, run_dir: Path, scaler: Any = None,
                 data_shape: tuple[int, ...] = ()):
        self.model, self.config, self.step, self.run_dir = model, config, step, run_dir
        self.scaler, self.data_shape = scaler, tuple(data_shape)
        self.sde = model.sde

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """The EMA model's score grad_x log p_t(x), shaped like x [B, *dims]; t a [B] tensor or a number.

        The weights are frozen (requires_grad False), so no graph is kept unless x itself requires grad (as
        when a likelihood takes the divergence of the score); an energy model differentiates E internally.
        """
        out = self.model.score(x, t)
        return out if x.requires_grad else out.detach()

    __call__ = score

    def to(self, device: str | torch.device) -> Run:
        self.model.to(device)
        return self

    def __repr__(self) -> str:
        return (f"Run({str(self.run_dir)!r}, step={self.step}, sde={self.sde!r}, "
                f"model={self.config['model']['type']}/{self.config['model']['parameterization']})")


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """The run in ``run_dir`` with its EMA weights, in eval mode on ``device`` ('cpu', 'cuda' or 'auto')."""
    run_dir = Path(run_dir)
    meta = ckpt.read_meta(run_dir)
    cfg = meta["config"]
    try:
        sde = build_sde(cfg["sde"])
        model = build_model(cfg["model"], sde, tuple(meta["data_shape"]))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{run_dir / ckpt.META_NAME} has an incomplete config ({e}); restore it or retrain.") from None
    tensors = ckpt.load_tensors(run_dir, meta)
    ckpt.load_module_state(model, ckpt.split_prefix(tensors, "ema"), "EMA")
    model.requires_grad_(False).eval()
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    return Run(model.to(dev), cfg, int(meta["step"]), run_dir, scaler_from_state(meta.get("scaler")),
               tuple(meta["data_shape"]))
