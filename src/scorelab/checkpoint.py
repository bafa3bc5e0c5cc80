"""Checkpoints a user can trust: safetensors for tensors, JSON for everything else, never pickle.

A run directory holds

    .scorelab-run.json              the ownership record: written first, it lists every tensor file this run
                                    wrote (the only files training ever deletes) and every other output it
                                    wrote (``outputs``: samples/*.png; the only files it ever overwrites)
    checkpoint.json                 the commit record: format version, step, config, data shape, RNG states
                                    (torch generator states as lists of bytes), optimiser hyper-parameters and
                                    param-group layout, and the name + SHA-256 of the tensor file it belongs to
    weights-STEP.safetensors        model.*, ema.* and optim.<param index>.<state name> tensors

checkpoint.json carries ``record_sha256``, a SHA-256 over every other entry (canonical JSON), so an edit to any
field that decides what the checkpoint means (config, parameterization, data shape, scaler, generator states,
optimiser layout) is refused on load, as is an edit to the tensor file (``weights_sha256``). A checkpoint
never holds non-finite weights: saving refuses them, and so does loading.

Writing is atomic: the tensor file is written under a temporary name, fsynced and renamed; only then is
checkpoint.json replaced the same way (the commit point), and only after that is the previous tensor file
deleted, and only if the ownership record lists it. A crash at any moment leaves the previous complete checkpoint
loadable; the temporary files a crash leaves are removed by ``clean_stale_temporaries`` at the next start.
A run directory has one writer at a time: ``lock_run_dir`` takes an exclusive flock on the directory.

Loading parses JSON and safetensors only. A truncated or edited file, a pickle renamed .safetensors, a
checkpoint of another model (missing keys or shapes that differ) are a ValueError saying what is wrong and
what to do; a failed load never writes to the run directory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

try:
    import fcntl
except ImportError:  # not POSIX (Windows): run directories are not locked there
    fcntl = None

FORMAT = "scorelab-checkpoint"
FORMAT_VERSION = 1
META_NAME = "checkpoint.json"
RUN_MARKER = ".scorelab-run.json"
MAX_META_BYTES = 64 << 20  # a checkpoint.json is a few kB (plus generator states); refuse absurd files
WEIGHTS_RE = re.compile(r"weights-\d{9}\.safetensors")
# temporary files of _atomic_write: ".<name>.<random>.tmp" for a file name this module or train.py writes
_TMP_RE = re.compile(r"\.(checkpoint\.json|config\.yaml|log\.csv|\.scorelab-run\.json|weights-\d{9}\.safetensors)"
                     r"\.[A-Za-z0-9_]+\.tmp")
# outputs besides the checkpoint (run-relative paths) and the temporaries their atomic writes leave
OUTPUT_RE = re.compile(r"samples/(step_\d{9}|latest)\.png")
_OUTPUT_TMP_RE = re.compile(r"\.(step_\d{9}|latest)\.png\.[A-Za-z0-9_]+\.tmp")


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


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, os.replace): readers see old or new."""
    path = Path(path)
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def record_digest(record: dict) -> str:
    """SHA-256 of a checkpoint record's canonical JSON, every entry except ``record_sha256`` itself."""
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- run-directory ownership
def is_run_dir(run_dir: str | Path) -> bool:
    """True if ``run_dir`` was written by scorelab training (its ownership record or a checkpoint)."""
    run_dir = Path(run_dir)
    return (run_dir / RUN_MARKER).is_file() or (run_dir / META_NAME).is_file()


def _own_entries(names) -> bool:
    return all(_TMP_RE.fullmatch(n) for n in names)


def check_can_start(run_dir: str | Path) -> None:
    """A ValueError unless a new run may be written into ``run_dir``: it does not exist, is empty (or holds
    only scorelab temporaries), or is a scorelab run that never committed a checkpoint."""
    text = str(run_dir)
    if not text.strip():
        raise ValueError("--out is empty; name a new run directory, e.g. --out runs/toy.")
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ValueError(f"--out {text!r} exists and is not a directory; choose a new run directory.")
    if (run_dir / META_NAME).is_file():
        raise ValueError(f"{text!r} already holds a run; pass --resume to continue it, or choose a new --out.")
    if (run_dir / RUN_MARKER).is_file():
        return
    try:
        names = [p.name for p in run_dir.iterdir()]
    except OSError as e:
        raise ValueError(f"cannot read --out {text!r} ({e.strerror}); choose a run directory you own.") from None
    if names and not _own_entries(names):
        shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
        raise ValueError(f"--out {text!r} is not empty ({shown}) and is not a scorelab run; training writes and "
                         "deletes files in its run directory, so give a new or empty directory.")


def lock_run_dir(run_dir: str | Path) -> int | None:
    """An exclusive, non-blocking flock on the run directory; returns the fd to pass to ``unlock_run_dir``.
    A ValueError when another process holds it. Without fcntl (Windows) there is no lock: returns None."""
    if fcntl is None:
        return None
    try:
        fd = os.open(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as e:
        raise ValueError(f"cannot open the run directory {str(run_dir)!r} ({e.strerror}).") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ValueError(f"another scorelab process is writing to {str(run_dir)!r} (its lock is held); wait "
                             "for it to finish, or train into another --out.") from None
        raise
    return fd


def unlock_run_dir(fd: int | None) -> None:
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def clean_stale_temporaries(run_dir: str | Path) -> list[str]:
    """Remove the temporary files an interrupted write of this run left (only names this module writes);
    call it while holding the run's lock. Returns the names removed."""
    removed = []
    for p in Path(run_dir).iterdir():
        if _TMP_RE.fullmatch(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    samples = Path(run_dir) / "samples"
    if samples.is_dir() and not samples.is_symlink():
        for p in samples.iterdir():
            if _OUTPUT_TMP_RE.fullmatch(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(f"samples/{p.name}")
    return removed


def _read_record(run_dir: str | Path, key: str) -> list:
    try:
        rec = json.loads((Path(run_dir) / RUN_MARKER).read_text())
        items = rec.get(key, []) if isinstance(rec, dict) and rec.get("format") == "scorelab-run" else []
    except (OSError, ValueError, KeyError, RecursionError, AttributeError):
        items = []
    return items if isinstance(items, list) else []


def read_owned(run_dir: str | Path) -> list[str]:
    """The tensor files the ownership record lists (those this run wrote)."""
    return [f for f in _read_record(run_dir, "files") if isinstance(f, str) and WEIGHTS_RE.fullmatch(f)]


def read_owned_outputs(run_dir: str | Path) -> list[str]:
    """The other outputs (run-relative paths such as samples/latest.png) the ownership record lists."""
    return [f for f in _read_record(run_dir, "outputs") if isinstance(f, str) and OUTPUT_RE.fullmatch(f)]


def write_owned(run_dir: str | Path, files, outputs=None) -> None:
    """Atomically (re)write the ownership record listing the tensor ``files`` and the ``outputs`` (None: keep
    the outputs the record lists)."""
    files = sorted({f for f in files if WEIGHTS_RE.fullmatch(f)})
    outputs = read_owned_outputs(run_dir) if outputs is None else outputs
    record = {"format": "scorelab-run", "files": files}
    outputs = sorted({f for f in outputs if OUTPUT_RE.fullmatch(f)})
    if outputs:
        record["outputs"] = outputs
    atomic_write_text(Path(run_dir) / RUN_MARKER, json.dumps(record))


def write_output(run_dir: str | Path, relpath: str, write) -> bool:
    """Write the run output ``relpath`` (matching OUTPUT_RE, e.g. samples/latest.png) atomically with
    ``write(tmp_path)``, recording it in the ownership record first. A file already there that the record does
    not list is the user's: it is left alone (a warning, returns False). Call it while holding the run's lock."""
    import warnings

    if not OUTPUT_RE.fullmatch(relpath):
        raise ValueError(f"{relpath!r} is not a run output name this module writes.")
    run_dir = Path(run_dir)
    path = run_dir / relpath
    owned = read_owned_outputs(run_dir)
    if (path.exists() or path.is_symlink()) and relpath not in owned:
        warnings.warn(f"{path} exists and was not written by this run: left alone, that grid is not written.",
                      stacklevel=2)
        return False
    if path.parent.is_symlink() or (path.parent.exists() and not path.parent.is_dir()):
        warnings.warn(f"{path.parent} is not a directory this run made: the grid is not written.", stacklevel=2)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    if relpath not in owned:
        write_owned(run_dir, read_owned(run_dir), [*owned, relpath])
    _atomic_write(path, write)
    return True


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
    bad = non_finite_keys(tensors)
    if bad:
        more = " ..." if len(bad) > 1 else ""
        raise ValueError(f"refusing to checkpoint step {step}: the weights hold NaN/inf ({bad[0]}{more}); the "
                         "previous checkpoint is kept.")
    opt_tensors, groups = optimizer_to_tensors(optimizer)
    tensors.update(opt_tensors)

    weights = run_dir / f"weights-{step:09d}.safetensors"
    previous = None
    if (run_dir / META_NAME).is_file():
        try:
            previous = json.loads((run_dir / META_NAME).read_text()).get("weights_file")
        except (OSError, ValueError, AttributeError, RecursionError):
            previous = None
    owned = set(read_owned(run_dir))
    if isinstance(previous, str) and WEIGHTS_RE.fullmatch(previous):
        owned.add(previous)  # a run written before the ownership record existed
    write_owned(run_dir, owned | {weights.name})  # recorded before it exists: a crash cannot orphan it
    try:
        _atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT, "step": str(step)}))
    except BaseException:
        if not weights.exists():
            write_owned(run_dir, owned)
        raise
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "optimizer_param_groups": groups,
              "weights_file": weights.name, "weights_sha256": _sha256(weights)}
    record = json.loads(json.dumps(record))  # the digest is over exactly what a reader will parse
    record["record_sha256"] = record_digest(record)
    text = json.dumps(record, indent=1)
    _atomic_write(run_dir / META_NAME, lambda tmp: Path(tmp).write_text(text))
    for name in sorted(owned - {weights.name}):  # only files this run wrote, never a user's weights-*.safetensors
        (run_dir / name).unlink(missing_ok=True)
    write_owned(run_dir, {weights.name})
    return run_dir / META_NAME


def non_finite_keys(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


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
    if path.stat().st_size > MAX_META_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size} bytes, far more than a checkpoint record; it is not one "
                         "scorelab wrote: restore it or retrain into a new --out directory.")
    try:
        meta = json.loads(path.read_text())
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to be a checkpoint record (edited?); restore it or retrain "
                         "into a new --out directory.") from None
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
    if not isinstance(meta.get("record_sha256"), str) or meta["record_sha256"] != record_digest(meta):
        raise ValueError(f"{path} does not match its own checksum (record_sha256): an entry was edited or the "
                         "record was written by an older scorelab; restore the file or retrain into a new --out "
                         "directory.")
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
        tensors = load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({' '.join(str(e).split())}); "
                         "restore it or retrain into a new --out directory.") from None
    bad = non_finite_keys(tensors)
    if bad:
        raise ValueError(f"{path} holds non-finite weights (NaN/inf in {bad[0]}{' ...' if len(bad) > 1 else ''}): "
                         "the run diverged before this checkpoint was written; retrain with a lower train.lr.")
    return tensors


def check_optimizer_state(opt: torch.optim.Optimizer, where: str) -> None:
    """After ``opt.load_state_dict``: every parameter has its state, and every per-parameter tensor has the
    parameter's shape (a resumed Adam without its moments would silently restart)."""
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            st = opt.state.get(p)
            if not st:
                raise ValueError(f"the checkpoint in {where!r} lacks the optimiser state of parameter {pi} (group "
                                 f"{gi}); resuming would restart the optimiser. Restore the checkpoint or train "
                                 "into a new --out directory.")
            for name, v in st.items():
                if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape != p.shape:
                    raise ValueError(f"the checkpoint in {where!r} has optimiser state {name!r} of shape "
                                     f"{list(v.shape)} for a parameter of shape {list(p.shape)}; restore the "
                                     "checkpoint or train into a new --out directory.")
                if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
                    raise ValueError(f"the checkpoint in {where!r} has non-finite optimiser state {name!r}; "
                                     "restore the checkpoint or train into a new --out directory.")


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
