"""The training loop: Adam with linear warm-up, gradient-norm clipping and EMA weights; resumable bit for bit.

One step (step k = 0, 1, ..., counted before the update):

    lr_k   = lr * min(1, (k + 1) / warmup) * decay(k)               linear warm-up (Song et al. 2021: 5000 steps),
                                                                    then lr_schedule: constant, cosine to 0 at
                                                                    the last step, or inv_sqrt (Karras et al. 2024)
    idx    ~ U{0..N-1}^B from the index generator                   the global batch, B = train.batch_size
    loss   = mean over this rank's shard of objective(model, x[idx_shard], generator=loss_gen)  (ranks average)
    g      = grad(loss), averaged over ranks (DistributedDataParallel), clipped to norm <= grad_clip
    theta  <- Adam(theta, g, lr_k)
    ema    <- beta_k * ema + (1 - beta_k) * theta                   the weights used for sampling: beta_k =
                                                                    ema_decay, or with ema_power = gamma the
                                                                    power-function EMA (1 - 1/(k+1))^(gamma+1)
                                                                    (Karras et al. 2024), which averages a fixed
                                                                    fraction of the run at every length

Every random draw comes from one of two torch.Generators: the index generator (seeded by train.seed, the same
on every rank, so all ranks agree on the global batch and each takes its contiguous shard) and the loss
generator (noise, times and probes inside the objective; seeded from (train.seed, rank)). Both states, the
model, EMA and Adam moments go into every checkpoint, so ``resume=True`` continues exactly where the run
stopped: on the CPU the resumed run ends with the same weights as an uninterrupted one (torch.equal).

The run directory is owned by the run: training refuses a directory that is neither new, empty nor a scorelab
run, holds an exclusive lock on it while it writes (a second trainer or a concurrent --resume is refused),
deletes only tensor files its ownership record lists, writes every file atomically (temporary file, fsync,
rename; log rows are appended whole) and removes stale temporaries of an interrupted write. The loss and gradient
norm are checked for NaN/inf on the device at every step (no host sync); a step that produced one is never
checkpointed: training stops with a ValueError at the next log or checkpoint step and the last finite checkpoint
stays. SIGINT/SIGTERM (single process) save a checkpoint at the current step and raise ``TrainingInterrupted``.

The run directory gets config.yaml (the complete config), log.csv (step, loss = mean over the steps since the
previous row, lr, grad_norm before clipping, seconds of training), checkpoint.json + weights-STEP.safetensors
(see scorelab.checkpoint) and, if tensorboard is installed, tensorboard/ event files.

Multi-process data parallel: launch with ``torchrun --nproc_per_node P -m scorelab.cli train ...``
(or ``python -m torch.distributed.run``); gloo on CPU, NCCL on CUDA; rank 0 writes the run directory.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml

from . import checkpoint as ckpt
from .config import (
    build_labels,
    build_model,
    build_objective,
    build_sde,
    label_dropout,
    load_config,
    load_data,
    measure_sigma_data,
    resolve_device,
    scaler_state,
)
from .objectives import conditioned, drop_labels

LOG_NAME = "log.csv"
LOG_COLUMNS = ("step", "loss", "lr", "grad_norm", "seconds")
# settings that may change between a run and its resumption (they do not alter the trajectory)
RESUMABLE_CHANGES = {("train", "steps"), ("train", "log_every"), ("train", "ckpt_every"), ("train", "device"),
                     ("train", "tensorboard"), ("train", "threads"), ("train", "sample_every"),
                     ("train", "sample_nfe")}
# keys added after runs were written: a saved config without one trained as if it held this value
ADDED_KEYS = {("data", "split"): None, ("data", "layout"): "auto", ("data", "dequantize"): False,
              ("train", "precision"): "auto",
              ("train", "sample_every"): 0, ("train", "sample_nfe"): 20}
SAMPLES_DIR = "samples"
SAMPLE_GRID = 64  # images in a periodic sample grid (8 x 8)


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training; a checkpoint of the current step was saved (``step``)."""

    def __init__(self, message: str, signum: int, step: int):
        super().__init__(message)
        self.signum, self.step = signum, step


@dataclass
class TrainResult:
    """What ``train`` returns: the trained ScoreModel, its EMA copy, the final step and the run directory."""

    model: torch.nn.Module
    ema: torch.nn.Module
    step: int
    run_dir: Path
    last_loss: float


class _Seam:
    """What objectives see: ``score`` goes through ``net`` (the DDP wrapper, so gradients get averaged); a
    class-conditional model gets the batch's labels as ``score(x, t, y)`` (objectives.conditioned).

    With ``autocast`` (a device type) the model runs under bf16 autocast: matrix products and convolutions in
    bfloat16, everything the model computes elementwise (noise embedding, preconditioning, the score formula) in
    float32 by type promotion; the score comes back in float32, so the loss, its reduction, the gradients (the
    weights stay float32) and the EMA are float32."""

    def __init__(self, net, sde, sigma_data=None, autocast: str | None = None):
        self.net, self.sde, self.sigma_data, self.autocast = net, sde, sigma_data, autocast

    def score(self, x, t, y=None):
        args = (x, t) if y is None else (x, t, y)
        if self.autocast is None:
            return self.net(*args)
        with torch.autocast(device_type=self.autocast, dtype=torch.bfloat16):
            out = self.net(*args)
        return out.float()


def autocast_device(precision: str, device: torch.device) -> str | None:
    """The device type to run bf16 autocast on, or None for float32: train.precision auto = bf16 on CUDA
    (Ampere and later compute bf16 at twice the fp32 tensor rate, with fp32's exponent range, so no loss
    scaling), fp32 on the CPU; bf16 forces it (also on the CPU, where it is slower: for testing)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return device.type
    return None


def cpu_threads(threads: int | None, device: torch.device) -> int | None:
    """The CPU threads to train with: train.threads, or when it is None one thread on the CPU (the networks here
    are small: on 2 shared cores the digits U-Net measured 480 images/s on 1 thread, 30 on 2) and torch's
    default (None) on CUDA."""
    if threads is not None:
        return threads
    return 1 if device.type == "cpu" else None


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owned: bool = False  # this call started the process group, so it also ends it

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_name: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world <= 1:
        return _Dist(0, 1, device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return _Dist(dist.get_rank(), dist.get_world_size(), device, owned)


def _short_section(section: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in section.items())[:200]


def loss_seed(seed: int, rank: int) -> int:
    """The loss generator's seed on ``rank``: distinct per rank, a pure function of (seed, rank)."""
    return int(np.random.SeedSequence([seed, rank, 0x5C0E]).generate_state(1, dtype=np.uint64)[0] >> 1)


def warmup_lr(step: int, lr: float, warmup: int) -> float:
    """lr * min(1, (step + 1) / warmup): linear warm-up, then constant (Song et al. 2021)."""
    return lr if warmup <= 0 else lr * min(1.0, (step + 1) / warmup)


LR_SCHEDULES = ("constant", "cosine", "inv_sqrt")


def scheduled_lr(step: int, tc: dict) -> float:
    """The learning rate of step ``step`` (0-based): linear warm-up, then ``tc['lr_schedule']``:
    constant; cosine from lr to 0 over the steps after warm-up; inv_sqrt lr / sqrt(max(1, k / warmup))
    (Karras et al. 2024's decay, with their reference point at the end of warm-up)."""
    lr, warmup, kind = tc["lr"], tc["warmup"], tc.get("lr_schedule", "constant")
    base = warmup_lr(step, lr, warmup)
    if kind == "cosine":
        span = max(1, tc["steps"] - warmup)
        frac = min(1.0, max(0.0, (step - warmup) / span))
        return base * 0.5 * (1 + math.cos(math.pi * frac))
    if kind == "inv_sqrt":
        return base / math.sqrt(max(1.0, (step + 1) / max(1, warmup)))
    return base


def ema_beta(step: int, tc: dict) -> float:
    """The EMA decay after update ``step`` (0-based): train.ema_decay, or with train.ema_power = gamma the
    power-function profile (1 - 1/(step+1))^(gamma+1) of Karras et al. 2024 (gamma 6.94: sigma_rel 0.10)."""
    gamma = tc.get("ema_power")
    if gamma is None:
        return tc["ema_decay"]
    return (1.0 - 1.0 / (step + 1)) ** (gamma + 1)


def _config_diff(a: Any, b: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            key = (*prefix, k)
            old = a[k] if k in a else ADDED_KEYS.get(key)  # a run older than the key trained with its default
            out += _config_diff(old, b.get(k), key)
        return out
    return [] if a == b else [prefix]


def _read_log_rows(path: Path, upto: int) -> list[list[str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return [r for r in rows[1:] if len(r) == len(LOG_COLUMNS) and r[0].isdigit() and int(r[0]) <= upto]


def train(config: dict | str | Path, out: str | Path, *, resume: bool = False, overrides=(),
          progress: bool = True, data=None) -> TrainResult:
    """Train the config's model on its data into the run directory ``out``; returns a TrainResult.

    data: instead of the config's data section, a tensor [N, *dims], a torch Dataset or DataLoader (items x or
    (x, y)); it is read once into memory (``scorelab.data.from_dataset``) and batches are drawn from it as from
    any data set; the config's data.scale still applies. Pass the same data again to resume.

    config: a validated config dict, a YAML path or a bundled name (``overrides`` are ``key=value`` strings);
    resume: continue the checkpoint in ``out`` (the config may differ only in train.steps/log_every/
    ckpt_every/device/tensorboard/threads; bit-for-bit equality assumes the same device and thread count).
    Without resume, ``out`` must not already hold a checkpoint.
    Everything is checked before anything is written, so a refused start leaves ``out`` unchanged.
    """
    lock: list = [None]  # the run directory's lock fd (rank 0), held until training ends
    try:
        return _train_locked(config, out, resume, overrides, progress, lock, data)
    finally:
        ckpt.unlock_run_dir(lock[0])


def _train_locked(config, out, resume: bool, overrides, progress: bool, lock: list, data) -> TrainResult:
    if data is not None:  # the data section then only records where the data came from
        overrides = ["data.name=external", "data.split=null", *overrides]
    cfg = load_config(config, overrides)
    tc = cfg["train"]
    if not str(out).strip():
        raise ValueError("--out is empty; name a new run directory, e.g. --out runs/toy.")
    out = Path(out)
    if resume and int(os.environ.get("RANK", "0")) == 0 and out.is_dir():
        lock[0] = ckpt.lock_run_dir(out)  # before reading: a concurrent writer could replace the checkpoint
    if resume:
        meta = ckpt.read_meta(out)
        saved_sd = (meta.get("config") or {}).get("model", {}).get("sigma_data")
        if cfg["model"].get("sigma_data") is None and saved_sd is not None:  # measured when the run started
            cfg["model"]["sigma_data"] = saved_sd
        diff = [d for d in _config_diff(meta["config"], cfg) if d not in RESUMABLE_CHANGES]
        if diff:
            keys = ", ".join(".".join(map(str, d)) for d in diff)
            raise ValueError(f"cannot resume {str(out)!r}: the config differs from the run's in {keys}; use the "
                             f"run's config ({out / 'config.yaml'}) or train into a new --out directory.")
        if meta["step"] > tc["steps"]:
            raise ValueError(f"{str(out)!r} is already at step {meta['step']} > train.steps={tc['steps']}; "
                             f"raise train.steps to continue it.")
    else:
        ckpt.check_can_start(out)  # new, empty, or a scorelab run that never committed a checkpoint

    dd = _setup_distributed(tc["device"])
    threads = torch.get_num_threads()
    wanted = cpu_threads(tc["threads"], dd.device)
    if wanted is not None:  # small networks run fastest on one thread, especially on a busy machine
        torch.set_num_threads(wanted)
    try:
        result = _train(cfg, out, meta if resume else None, dd, progress, lock, data)
        if dd.owned and dd.world > 1:  # every rank done before the group goes: a gloo rank whose peer tears the
            dist.barrier()             # group down mid-exit can abort (SIGABRT, "terminate called") under load
        return result
    finally:
        torch.set_num_threads(threads)
        if dd.owned:
            dist.destroy_process_group()


def _given_data(given, section: dict):
    """train(data=...) -> (float32 tensor [N, *dims], scaler or None, data_info), checked like a configured
    data set."""
    from .data import from_dataset

    x = given if isinstance(given, torch.Tensor) else from_dataset(given)[0]
    return load_data({**section, "name": None, "path": None}, x=x.float())


def _labels(cfg: dict, n: int, given) -> torch.Tensor | None:
    """The class labels [n] of a class-conditional model's training data (None for an unconditional one)."""
    k = cfg["model"].get("num_classes")
    if not k:
        return None
    if given is None:
        y = build_labels(cfg["data"], n)
    else:
        from .data import from_dataset

        y = None if isinstance(given, torch.Tensor) else from_dataset(given)[1]
    if y is None:
        source = cfg["data"]["name"] or cfg["data"]["path"]
        raise ValueError(f"model.num_classes={k} needs class labels, but the data {source!r} has none: use a labelled "
                         "data set (digits, fashion_mnist, a mixture toy, an image folder with a subfolder per class) "
                         "or give data.labels: FILE.npy with data.path.")
    y = y.long()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
        raise ValueError(f"the data's labels range over [{int(y.min())}, {int(y.max())}] but model.num_classes={k}; "
                         f"labels must lie in [0, {k}): set model.num_classes={int(y.max()) + 1}.")
    return y


def _train(cfg: dict, out: Path, meta: dict | None, dd: _Dist, progress: bool, lock: list,
           given=None) -> TrainResult:
    tc, resume = cfg["train"], meta is not None
    if tc["batch_size"] % dd.world:
        raise ValueError(f"train.batch_size={tc['batch_size']} must be divisible by the number of processes "
                         f"({dd.world}); each takes an equal shard of the global batch.")
    shard = tc["batch_size"] // dd.world

    data, scaler, data_info = load_data(cfg["data"]) if given is None else _given_data(given, cfg["data"])
    data = data.to(dd.device)
    bin_width = dequantization_width(cfg["data"], data_info, scaler)
    if tc["sample_every"] and data.ndim != 4:
        raise ValueError(f"train.sample_every={tc['sample_every']} writes image grids, but the data has examples of "
                         f"shape {list(data.shape[1:])}, not [C, H, W]; set train.sample_every=0.")
    sde = build_sde(cfg["sde"])
    if cfg["model"]["parameterization"] == "edm" and cfg["model"].get("sigma_data") is None:
        cfg["model"]["sigma_data"] = measure_sigma_data(data)  # kept in the run's config (scorelab.load)
    with torch.random.fork_rng(devices=[]):  # initial weights from train.seed, without touching the caller's RNG
        torch.manual_seed(tc["seed"])
        model = build_model(cfg["model"], sde, tuple(data.shape[1:])).to(dd.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    objective = build_objective(cfg["objective"], cfg["data"], sde)
    labels, p_uncond = _labels(cfg, data.shape[0], given), label_dropout(cfg["objective"])
    if labels is not None:
        labels = labels.to(dd.device)
    opt = torch.optim.Adam(model.parameters(), lr=tc["lr"], betas=tuple(tc["adam_betas"]), eps=tc["adam_eps"])
    index_gen = torch.Generator().manual_seed(tc["seed"])
    loss_gen = torch.Generator(device=dd.device).manual_seed(loss_seed(tc["seed"], dd.rank))

    start, elapsed = 0, 0.0
    if resume:
        tensors = ckpt.load_tensors(out, meta)
        ckpt.load_module_state(model, ckpt.split_prefix(tensors, "model"), "model")
        ckpt.load_module_state(ema, ckpt.split_prefix(tensors, "ema"), "EMA")
        try:
            opt.load_state_dict(ckpt.optimizer_state_dict(tensors, meta["optimizer_param_groups"]))
        except (ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f"the optimiser state in {str(out)!r} does not fit this model ({e}); train into a new "
                             "--out directory.") from None
        ckpt.check_optimizer_state(opt, str(out))
        gens = meta.get("generators", {})
        if not isinstance(gens, dict) or not isinstance(gens.get("loss"), list) or not gens["loss"]:
            raise ValueError(f"{out / ckpt.META_NAME} lacks the generator states of the run; restore the file or "
                             "train into a new --out directory.")
        if len(gens.get("loss", [])) != dd.world:
            raise ValueError(f"{str(out)!r} was trained with {len(gens.get('loss', []))} process(es), this run has "
                             f"{dd.world}; resume with the same number of processes (torchrun --nproc_per_node).")
        try:
            ckpt.set_generator_state(index_gen, gens["index"])
            ckpt.set_generator_state(loss_gen, gens["loss"][dd.rank])
        except (RuntimeError, TypeError, KeyError, ValueError, OverflowError):
            raise ValueError(f"the generator states in {out / ckpt.META_NAME} are malformed (edited?); restore the "
                             "file or train into a new --out directory.") from None
        start, elapsed = int(meta["step"]), float(meta.get("seconds", 0.0))

    # one throw-away evaluation before anything is written: a bad objective option fails here, not mid-run
    preflight = torch.Generator(device=dd.device).manual_seed(0)
    seam = _Seam(model, sde, model.sigma_data)
    probe = objective(seam if labels is None else conditioned(seam, labels[: min(2, data.shape[0])]),
                      data[: min(2, data.shape[0])], generator=preflight)
    if probe.shape != (min(2, data.shape[0]),):
        raise ValueError(f"objective {cfg['objective']['name']!r} returned shape {list(probe.shape)}, expected one "
                         "loss per example [B]; check the objective options.")
    if not bool(torch.isfinite(probe).all()):  # before any update: the learning rate cannot be the cause
        raise ValueError(f"the objective is NaN/inf at the initial weights, before any training step: check the "
                         f"process's parameters (sde: {_short_section(cfg['sde'])}), the objective's options and the "
                         "data's scale (data.scale).")
    del probe

    net = model
    if dd.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dd.device.index] if dd.device.type == "cuda" else None)
    seam = _Seam(net, sde, model.sigma_data, autocast_device(tc["precision"], dd.device))

    log_path = out / LOG_NAME
    writer = None
    if dd.main:
        out.mkdir(parents=True, exist_ok=True)
        if lock[0] is None:
            lock[0] = ckpt.lock_run_dir(out)
            if not resume:  # another trainer may have started here between the first check and the lock
                ckpt.check_can_start(out)
        ckpt.clean_stale_temporaries(out)
        if not resume:
            ckpt.write_owned(out, ckpt.read_owned(out))  # the ownership record, before any other file
        ckpt.atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        rows = _read_log_rows(log_path, start) if resume else []
        buf = io.StringIO()
        csv.writer(buf).writerows([list(LOG_COLUMNS), *rows])
        ckpt.atomic_write_text(log_path, buf.getvalue())
        if tc["tensorboard"]:
            try:
                from torch.utils.tensorboard import SummaryWriter
                writer = SummaryWriter(str(out / "tensorboard"))
            except ImportError:  # the CSV log stays the record; say so rather than write nothing silently
                warnings.warn("train.tensorboard is true but tensorboard is not installed: logging to "
                              f"{log_path} only (pip install 'scorelab[tensorboard]', or set train.tensorboard="
                              "false).", stacklevel=2)
                writer = None

    def meta_now(step: int) -> dict:
        loss_states = [ckpt.generator_state(loss_gen)]
        if dd.world > 1:
            loss_states = [None] * dd.world
            dist.all_gather_object(loss_states, ckpt.generator_state(loss_gen))
        return {"step": step, "config": cfg, "data_shape": list(data.shape[1:]), "data_info": data_info,
                "seconds": elapsed,
                "world_size": dd.world, "scaler": scaler_state(scaler), "torch_version": torch.__version__,
                "generators": {"index": ckpt.generator_state(index_gen), "loss": loss_states}}

    def diverged_at() -> int:
        """The first step whose loss or gradient norm was NaN/inf (0 if none); collective under DDP."""
        if dd.world > 1:
            dist.all_reduce(bad_at, op=dist.ReduceOp.MAX)
        return int(bad_at)

    def stop_if_diverged(done: int) -> None:
        k = diverged_at()
        if k:
            kept = (f"the checkpoint of step {saved[0]} is kept" if saved[0] else "no checkpoint was written")
            fix = ("Check the process's parameters (sde.*) and the data's scale: the first step's loss comes from "
                   "the initial weights, before the learning rate acts." if k == 1 else "Lower train.lr, keep "
                   "train.grad_clip > 0, and check the data's scale and the process's parameters (sde.*).")
            raise ValueError(f"training diverged: the loss or gradient became NaN/inf at step {k} (checked at step "
                             f"{done}); nothing from that step on was saved, {kept}. {fix}")

    def save(step: int) -> None:
        stop_if_diverged(step)
        m = meta_now(step)  # collective: every rank takes part
        if dd.main:
            ckpt.save_checkpoint(out, model=model, ema=ema, optimizer=opt, meta=m)
        if dd.world > 1:
            dist.barrier()
        saved[0] = step

    from tqdm.auto import tqdm

    bar = tqdm(total=tc["steps"], initial=start, disable=not (progress and dd.main), desc="train",
               dynamic_ncols=True)
    params = list(model.parameters())
    ema_params = list(ema.parameters())
    clip = tc["grad_clip"] if tc["grad_clip"] > 0 else math.inf
    window = torch.zeros((), dtype=torch.float64, device=dd.device)
    last_loss, n_window = float("nan"), 0
    bad_at = torch.zeros((), dtype=torch.int64, device=dd.device)  # first non-finite step (1-based), 0: none
    saved = [start]
    stop: list = []  # the signal that asked to stop
    handlers = {}

    def on_signal(signum, frame):
        if stop:  # a second signal while the step or the save runs: stop now, the last checkpoint stays
            raise KeyboardInterrupt
        stop.append(signum)

    if dd.world == 1 and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, on_signal)
    model.train()
    t0 = time.perf_counter()
    try:
        for step in range(start, tc["steps"]):
            lr = scheduled_lr(step, tc)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, data.shape[0], (tc["batch_size"],), generator=index_gen)
            mine = idx[dd.rank * shard:(dd.rank + 1) * shard].to(dd.device)
            x = data[mine]
            if bin_width is not None:  # uniform dequantisation: x + U[0, 1) in data units
                x = x + bin_width * torch.rand(x.shape, generator=loss_gen, device=dd.device)
            if labels is None:
                loss = objective(seam, x, generator=loss_gen).mean()
            else:  # label dropout first, from the loss generator (checkpointed: resume stays exact)
                y = drop_labels(labels[mine], p_uncond, model.num_classes, loss_gen)
                loss = objective(conditioned(seam, y), x, generator=loss_gen).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            with torch.no_grad():
                for pe, p in zip(ema_params, params, strict=True):
                    pe.lerp_(p, 1.0 - ema_beta(step, tc))
            window += loss.detach().double()
            n_window += 1
            done = step + 1
            finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
            bad_at = torch.where((bad_at == 0) & ~finite, done, bad_at)
            if done % tc["log_every"] == 0 or done == tc["steps"]:
                if dd.world > 1:
                    dist.all_reduce(window)
                    window /= dd.world
                last_loss = float(window) / n_window
                stop_if_diverged(done)
                seconds = elapsed + time.perf_counter() - t0
                if dd.main:
                    with open(log_path, "a", newline="") as f:
                        csv.writer(f).writerow([done, f"{last_loss:.6g}", f"{lr:.6g}",
                                                f"{float(grad_norm):.6g}", f"{seconds:.3f}"])
                    if writer is not None:
                        writer.add_scalar("loss", last_loss, done)
                        writer.add_scalar("lr", lr, done)
                        writer.add_scalar("grad_norm", float(grad_norm), done)
                bar.set_postfix(loss=f"{last_loss:.4g}", lr=f"{lr:.2g}")
                window.zero_()
                n_window = 0
            bar.update(1)
            if done % tc["ckpt_every"] == 0 or done == tc["steps"]:
                elapsed += time.perf_counter() - t0
                t0 = time.perf_counter()
                save(done)
            if dd.main and tc["sample_every"] and (done % tc["sample_every"] == 0 or done == tc["steps"]):
                elapsed += time.perf_counter() - t0  # sampling time is not training time
                write_sample_grid(out, done, ema, sde, data_info, scaler, tc, cfg["data"].get("dequantize", False))
                t0 = time.perf_counter()
            if stop:
                elapsed += time.perf_counter() - t0
                t0 = time.perf_counter()
                if saved[0] != done:
                    save(done)
                name = signal.Signals(stop[0]).name
                raise TrainingInterrupted(f"{name} received: saved a checkpoint at step {done} in {out}; continue "
                                          "with --resume.", stop[0], done)
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        bar.close()
        if writer is not None:
            writer.close()
    model.eval()
    ema.eval()
    return TrainResult(model=model, ema=ema, step=max(start, tc["steps"]), run_dir=out, last_loss=last_loss)


def dequantization_width(section: dict, data_info: dict, scaler) -> float | None:
    """data.dequantize: the width of one quantisation bin in model units (data units: 1), else None. Needs data
    whose levels are known (data_info["levels"]: the built-in image sets, image folders)."""
    if not section.get("dequantize"):
        return None
    if data_info.get("levels") is None:
        raise ValueError(f"data.dequantize=true needs quantised data with known levels (the built-in image sets or "
                         f"an image folder); {data_info.get('source')!r} has none: set data.dequantize=false.")
    if scaler is None:
        return 1.0
    scale = scaler.scale.flatten()
    if scale.numel() != 1:
        raise ValueError("data.dequantize=true needs one scale for all values (data.scale: [lo, hi]).")
    return float(scale[0])


def write_sample_grid(out: Path, step: int, ema: torch.nn.Module, sde, data_info: dict, scaler, tc: dict,
                      dequantized: bool = False) -> Path:
    """Sample SAMPLE_GRID images from the EMA model and write them, in data units clipped to the data's range,
    to samples/step_STEP.png and samples/latest.png in the run directory (rank 0; atomic writes recorded in the
    run's ownership record, never over a file the run did not write).

    The draw uses its own generator, seeded by train.seed alone, so every grid of a run starts from the same
    noise (progress shows as change in one set of images) and training's generators, hence bit-exact resume,
    are untouched; the sampler is the default method at train.sample_nfe evaluations, in float32. Quantised
    data is drawn at its levels (floor(v) for a dequantised run's samples v = k + U), upscaled like the CLI's."""
    from .plots import save_image_grid
    from .samplers import sample

    device = next(ema.parameters()).device
    generator = torch.Generator(device=device).manual_seed(tc["seed"])
    was_training = ema.training
    ema.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            x = sample(ema.score, sde, (SAMPLE_GRID, *data_info["shape"]), nfe=tc["sample_nfe"],
                       generator=generator, device=device).x
    finally:
        ema.train(was_training)
    x = (scaler.inverse(x) if scaler is not None else x).float().cpu()
    lo, hi = data_info["range"]
    levels = data_info.get("levels")
    if dequantized and levels:
        x = x - (hi - lo) / (levels - 1) / 2
    path = out / SAMPLES_DIR / f"step_{step:09d}.png"
    for target in (path, out / SAMPLES_DIR / "latest.png"):
        ckpt.write_output(out, target.relative_to(out).as_posix(),
                          lambda tmp: save_image_grid(x, tmp, value_range=(lo, hi), levels=levels, min_size=56))
    return path
