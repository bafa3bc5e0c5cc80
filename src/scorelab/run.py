"""Runs on disk: ``load(run_dir)`` turns a trained run directory back into a score function.

    run = load("runs/toy")
    run.score(x, t)      # grad_x log p_t(x) with the EMA weights (frozen), eval mode, [B, *dims] -> [B, *dims]
    run.sde              # the forward process it was trained with
    run.model            # the ScoreModel (EMA weights)
    run.config           # the complete config dict it was trained with
    run.scaler           # the data scaler (``scaler.inverse`` maps samples back), or None
    run.step             # training steps behind the weights
    run.data_info        # the training data: {"shape", "range" (data units), "levels", "source", "split"}, or
                         # None for runs written without it
    run.num_classes      # K for a class-conditional run (model.num_classes), 0 otherwise
    run.score(x, t, y)   # class-conditional runs: grad_x log p_t(x | y), y an int or [B] labels; y=None is the
                         # unconditional score of the same network (its null class, trained by label dropout)

Only JSON and safetensors are read (see scorelab.checkpoint); nothing is unpickled.

``score`` checks its input: x a floating tensor [B, *data_shape] on the run's device (any floating dtype: the
network runs in its own dtype and the score comes back in x's), t a number or [B] tensor in [0, T] (NaN, inf,
t < 0 or t > T is a ValueError). Times below ``T_MIN`` = 1e-5 (the smallest time the training objectives draw;
at t = 0 a VP/sub-VP marginal has zero noise and the score is undefined) are evaluated at T_MIN.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from ._checks import check_batch
from .config import build_model, build_sde, resolve_device, scaler_from_state

T_MIN = 1e-5  # the smallest time the objectives train on (sde_dsm eps, Song et al. 2021)


class Run:
    """A trained run: ``score(x, t)`` is a plain score function usable by every sampler and likelihood."""

    def __init__(self, model: torch.nn.Module, config: dict, step: int, run_dir: Path, scaler: Any = None,
                 data_shape: tuple[int, ...] = (), data_info: dict | None = None):
        self.model, self.config, self.step, self.run_dir = model, config, step, run_dir
        self.scaler, self.data_shape = scaler, tuple(data_shape)
        self.data_info = data_info
        self.sde = model.sde

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """Data units -> the units the model was trained in (the run's data scaler; identity without one)."""
        return self.scaler.forward(x) if self.scaler is not None else x

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        """Model units (samples, denoised data) -> data units."""
        return self.scaler.inverse(x) if self.scaler is not None else x

    def data_range(self) -> tuple[float, float] | None:
        """(lo, hi) of the data the run was trained on, in data units: ``data_info["range"]`` when the run records
        it, else the scaler's inverse of the config's ``data.scale`` target; None when neither is known."""
        info = getattr(self, "data_info", None)
        if isinstance(info, dict) and info.get("range") is not None:
            lo, hi = info["range"]
            return float(lo), float(hi)
        target = self.config.get("data", {}).get("scale")
        if self.scaler is None or target is None:
            return None
        ends = self.scaler.inverse(torch.tensor([[float(target[0])], [float(target[1])]], dtype=torch.float64))
        return float(ends.min()), float(ends.max())

    @property
    def dequantized(self) -> bool:
        """True when the run was trained on dequantised data v = x + U[0, 1) (data.dequantize): its samples are
        v, whose grey level is floor(v), not round(v)."""
        return bool(self.config.get("data", {}).get("dequantize", False))

    def data_levels(self) -> int | None:
        """Quantisation levels of the run's data (``data_info["levels"]``; 17 for digits, 256 for Fashion-MNIST
        when not recorded), None for continuous data."""
        info = getattr(self, "data_info", None)
        if isinstance(info, dict) and "levels" in info:
            return None if info["levels"] is None else int(info["levels"])
        return {"digits": 17, "fashion_mnist": 256}.get(self.config.get("data", {}).get("name"))

    def check_data(self, x: torch.Tensor, what: str = "data", noise: float = 0.0) -> torch.Tensor:
        """Refuse, with one ValueError line, data unlike the run's: another example shape (28x28 for an 8x8
        run, channels last), NaN/inf, or values outside the run's data range (0..255 data for a 0..16 run; a
        margin of half the range, plus 5 ``noise`` stds given in model units, e.g. denoise's sigma). Entries that
        are NaN are skipped when ``noise`` is None (inpainting's unknowns). Returns x."""
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point or x.ndim < 1:
            raise TypeError(f"{what} must be a floating tensor [N, *dims].")
        shape = tuple(self.data_shape)
        got = tuple(x.shape[1:])
        if got != shape:
            hint = ""
            if len(got) == len(shape) == 3 and got == (shape[1], shape[2], shape[0]):
                hint = " The channel axis is last: give [N, C, H, W] (x.transpose(0, 3, 1, 2))."
            elif len(got) == len(shape) == 3:
                hint = f" Resize or choose the run trained on {got[-2]}x{got[-1]} images."
            raise ValueError(f"{what} has examples of shape {list(got)}; this run was trained on "
                             f"{list(shape)}, so give [N, {', '.join(map(str, shape))}].{hint}")
        vals = x if noise is not None else x[~torch.isnan(x)]
        if not bool(torch.isfinite(vals).all()):
            raise ValueError(f"{what} contains NaN/inf; drop or impute those examples first.")
        rng = self.data_range()
        if rng is None or vals.numel() == 0:
            return x
        lo, hi = rng
        margin = 0.5 * (hi - lo)
        if noise and self.scaler is not None:
            margin += 5 * float(noise) / float(self.scaler.scale.abs().min())
        elif noise:
            margin += 5 * float(noise)
        vlo, vhi = float(vals.min()), float(vals.max())
        if vlo < lo - margin or vhi > hi + margin:
            raise ValueError(f"{what} has values in [{vlo:g}, {vhi:g}], but this run was trained on data in "
                             f"[{lo:g}, {hi:g}]; give data in the run's units (e.g. rescale 0..255 pixels to "
                             f"{lo:g}..{hi:g}).")
        return x

    @property
    def num_classes(self) -> int:
        """K for a class-conditional run (labels 0..K-1), 0 for an unconditional one."""
        return int(getattr(self.model, "num_classes", 0) or 0)

    def score(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        """The EMA model's score grad_x log p_t(x), shaped like x [B, *dims]; t a [B] tensor or a number.
        y (class-conditional runs): an int or [B] integer labels in [0, num_classes) for grad_x log p_t(x | y);
        None gives the unconditional score.

        The weights are frozen (requires_grad False), so no graph is kept unless x itself requires grad (as
        when a likelihood takes the divergence of the score); an energy model differentiates E internally.
        """
        x_in = x
        x, t = self._check(x, t)
        if y is not None:
            y = self.check_label(y, x.shape[0])
        out = self.model.score(x, t, y) if y is not None else self.model.score(x, t)
        out = out if out.dtype == x_in.dtype else out.to(x_in.dtype)
        return out if x_in.requires_grad else out.detach()

    def check_label(self, y, batch: int | None = None):
        """y as an int or a [B] long tensor on the run's device, checked against num_classes (a ValueError that
        says what to do otherwise)."""
        k = self.num_classes
        if not k:
            raise ValueError(f"{self.run_dir} is not class-conditional (trained without model.num_classes): sample "
                             "it without a class, or guide it with a noise-conditional classifier.")
        if isinstance(y, bool) or not isinstance(y, (int, torch.Tensor)):
            raise TypeError(f"y must be an int class label or a [B] tensor of labels, got {type(y).__name__}.")
        if isinstance(y, torch.Tensor):
            if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool or y.ndim > 1:
                raise ValueError(f"y must be integer labels [B], got dtype {y.dtype} and shape {tuple(y.shape)}.")
            if y.ndim == 1 and batch is not None and y.shape[0] != batch:
                raise ValueError(f"y has {y.shape[0]} labels for a batch of {batch}; give one per example or an int.")
            lo, hi = (int(y.min()), int(y.max())) if y.numel() else (0, 0)
        else:
            lo = hi = y
        if lo < 0 or hi >= k:
            raise ValueError(f"class {lo if lo < 0 else hi} is out of range: this run has {k} classes, 0..{k - 1}.")
        return y if isinstance(y, int) else y.to(device=self.device, dtype=torch.long)

    def _check(self, x, t) -> tuple[torch.Tensor, torch.Tensor | float]:
        check_batch(x)
        if self.data_shape and tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"x has examples of shape {tuple(x.shape[1:])}, this run was trained on "
                             f"{self.data_shape}: x must be [B, *{self.data_shape}].")
        param = next(self.model.parameters())
        if x.device != param.device:
            raise ValueError(f"x is on {x.device}, the run on {param.device}; move one of them (x.to(run.device) "
                             "or run.to(device)).")
        if x.dtype != param.dtype:
            x = x.to(param.dtype)
        T = float(self.sde.T)
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            if not (math.isfinite(t) and 0.0 <= t <= T * (1 + 1e-6)):
                raise ValueError(f"t must lie in [0, {T:g}] (the process's time range), got {t!r}.")
            return x, min(max(float(t), T_MIN), T)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be a number or a tensor [B], got {type(t).__name__}.")
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
            raise ValueError(f"t must be a number or have shape [B] = [{x.shape[0]}], got {tuple(t.shape)}.")
        t = t.to(device=x.device, dtype=x.dtype)
        if not bool(((t >= 0) & (t <= T * (1 + 1e-6))).all()):  # one host sync; NaN fails both comparisons
            bad = t[~((t >= 0) & (t <= T * (1 + 1e-6)))].flatten()[:3].tolist()
            raise ValueError(f"t must lie in [0, {T:g}] (the process's time range, finite), got values such as "
                             f"{bad}.")
        return x, t.clamp(T_MIN, T)

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
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{run_dir / ckpt.META_NAME} has an incomplete config ({e}); restore it or retrain.") from None
    dev = _device(device)
    for _ in range(3):  # a trainer may commit a newer checkpoint (and delete this tensor file) while we read
        try:
            tensors = ckpt.load_tensors(run_dir, meta)
            break
        except ValueError:
            newer = ckpt.read_meta(run_dir)
            if newer["weights_file"] == meta["weights_file"]:
                raise
            meta = newer
    else:
        tensors = ckpt.load_tensors(run_dir, meta)
    cfg = meta["config"]
    ckpt.load_module_state(model, ckpt.split_prefix(tensors, "ema"), "EMA")
    model.requires_grad_(False).eval()
    info = meta.get("data_info")
    return Run(model.to(dev), cfg, int(meta["step"]), run_dir, scaler_from_state(meta.get("scaler")),
               tuple(meta["data_shape"]), data_info=info if isinstance(info, dict) else None)


def _device(device) -> torch.device:
    """'auto', a device string or a torch.device -> a device this machine has; a ValueError otherwise."""
    if isinstance(device, str) and device == "auto":
        return resolve_device(device)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r} is not a device; use 'auto', 'cpu' or 'cuda'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} asked for, but CUDA is not available here; use device='cpu' or "
                         "'auto'.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {str(dev)!r} cannot hold a run; use 'auto', 'cpu' or 'cuda'.")
    return dev
