"""Checkpoints a user can trust: safetensors for tensors, JSON for everything else, never pickle.

A run directory holds

    checkpoint.json                 the commit record: format version, step, config, data shape, RNG states
                                    (torch generator states as lists of bytes), optimiser hyper-parameters and
                                    param-group layout, and the name + SHA-256 of the tensor file it belongs to
    weights-STEP.safetensors        model.*, ema.* and optim.<param index>.<state name> tensors

Writing is atomic: the tensor file is written under a temporary name, fsynced and renamed; only then is
checkpoint.json replaced the same way (the commit point), and only after that is the previous tensor file
deleted. A crash at any moment leaves the previous complete checkpoint loadable.

Loading parses JSON and safetensors only. A truncated or edited file, a pickle renamed .safetensors, a
checkpoint of another model (missing keys or shapes that differ) are a ValueError saying what is wrong and
what to do; a failed load never writes to the run directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "scorelab-checkpoint"
FORMAT_VERSION = 1
META_NAME = "checkpoint.json"


# --------------------------------------------------------------------------- small helpers
def generator_state(g: torch.Generator) -> list[int]:
    """A torch.Generator's state as a JSON-friendly list of byte values."""
    return g.get_state().tolist()


def set_generator_state(g: torch.Generator, state: list[int]) -> None:
    g.set_state(torch.tensor(state, dtype=torch.uint8))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> None:
    """write(tmp_path) then fsync + os.replace onto ``path``; the temporary file is removed on failure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------- optimiser <-> tensors + JSON
def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Adam-style optimiser state -> ({'optim.<i>.<name>': tensor}, param-group layout for JSON)."""
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if not isinstance(v, torch.Tensor):
                v = torch.tensor(v)
            tensors[f"optim.{idx}.{name}"] = v.detach().cpu().contiguous()
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return tensors, groups


def optimizer_state_dict(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    param_groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": param_groups}


# --------------------------------------------------------------------------- save
def save_checkpoint(run_dir: str | Path, *, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, meta: dict[str, Any]) -> Path:
    """Atomically write weights-STEP.safetensors then checkpoint.json (``meta`` must hold 'step' and be
    JSON-serialisable); delete older tensor files only once the new checkpoint is committed."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    step = int(meta["step"])
    tensors = {f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().clone() for k, v in ema.state_dict().items()})
    opt_tensors, groups = optimizer_to_tensors(optimizer)
    tensors.update(opt_tensors)

    weights = run_dir / f"weights-{step:09d}.safetensors"
    _atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT, "step": str(step)}))
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "optimizer_param_groups": groups,
              "weights_file": weights.name, "weights_sha256": _sha256(weights)}
    text = json.dumps(record, indent=1)
    _atomic_write(run_dir / META_NAME, lambda tmp: Path(tmp).write_text(text))
    for old in run_dir.glob("weights-*.safetensors"):
        if old.name != weights.name:
            old.unlink(missing_ok=True)
    return run_dir / META_NAME


# --------------------------------------------------------------------------- load
def has_checkpoint(run_dir: str | Path) -> bool:
    return (Path(run_dir) / META_NAME).is_file()


def read_meta(run_dir: str | Path) -> dict:
    """checkpoint.json of a run directory, checked; a ValueError with the fix otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {str(run_dir)!r} does not exist; train one with "
                         f"`scorelab train CONFIG --out {run_dir}`.")
    path = run_dir / META_NAME
    if not path.is_file():
        raise ValueError(f"{str(run_dir)!r} holds no checkpoint ({META_NAME} missing); train into it with "
                         f"`scorelab train CONFIG --out {run_dir}` (add --resume to continue an interrupted run).")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e.__class__.__name__}: truncated or edited?); restore it from "
                         "a backup or retrain into a new --out directory.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a scorelab checkpoint record; point at a run directory written by "
                         "`scorelab train`.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format version {meta.get('format_version')!r}, this scorelab "
                         f"reads version {FORMAT_VERSION}; use the scorelab version that wrote it.")
    missing = [k for k in ("step", "config", "weights_file", "weights_sha256", "optimizer_param_groups")
               if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks {missing} (edited?); restore it or retrain into a new --out directory.")
    kinds = {"step": int, "config": dict, "weights_file": str, "weights_sha256": str, "optimizer_param_groups": list}
    wrong = [k for k, kind in kinds.items() if not isinstance(meta[k], kind) or isinstance(meta[k], bool)]
    if wrong or meta["step"] < 0:
        raise ValueError(f"{path} has malformed entries {wrong or ['step']} (edited?); restore it or retrain into a "
                         "new --out directory.")
    return meta


def load_tensors(run_dir: str | Path, meta: dict, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, after checking the file's SHA-256 against checkpoint.json. No pickle."""
    run_dir = Path(run_dir)
    name = str(meta["weights_file"])
    path = run_dir / name
    if Path(name).name != name or not path.is_file():
        raise ValueError(f"checkpoint tensor file {name!r} is missing from {str(run_dir)!r}; the run directory is "
                         "incomplete: restore it or retrain into a new --out directory.")
    if _sha256(path) != meta["weights_sha256"]:
        raise ValueError(f"{path} does not match the checksum in {META_NAME} (truncated, edited or replaced); "
                         "restore the file or retrain into a new --out directory.")
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({' '.join(str(e).split())}); "
                         "restore it or retrain into a new --out directory.") from None


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_module_state(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict) with a ValueError naming missing/unexpected keys and shape mismatches."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:3]))
        raise ValueError(f"the checkpoint's {what} weights do not fit this model ({', '.join(parts)}): it was "
                         "trained with another model config; use the run's own config (its checkpoint.json) "
                         "or train into a new --out directory.")
    module.load_state_dict(state, strict=True)
