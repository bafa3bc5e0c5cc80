"""Images (issue 11): U-Net throughput on the CPU and a GPU, bits/dim exact vs Hutchinson, the Fashion-MNIST GPU run.

    python benchmarks/images.py throughput [--configs digits fashion_mnist] [--device auto] [--steps 60 10]
        training and sampling images/s of the shipped digits and Fashion-MNIST configs' networks, through the real
        training loop (scorelab.train on the data set, timed between two log rows so start-up is excluded) and
        the default sampler (scorelab.samplers.sample, --nfe evaluations per batch)
    python benchmarks/images.py bpd-check RUN [--n 20] [--tol 1e-5]
        bits/dim of n test images with the exact divergence and with Hutchinson (one Rademacher probe per image,
        the same dequantisation noise): each with its standard error, the paired difference with its standard
        error, and the seconds each took
    python benchmarks/images.py fashion-gpu OUT [--minutes 20] [--set key=value ...]
        the Fashion-MNIST recipe: time 100 training steps, train the shipped config for the steps that fit in
        --minutes of device time in all, then `scorelab evaluate` (test split: bits/dim, Frechet distance with
        floor and baseline) and a 64-image grid; prints each command, and the device and the date

Every command prints the device (name, CUDA version) and the date; timings on a shared machine are medians of
what one run saw, so quote ratios.

Measured 2026-11-24 17:46 UTC, CPU, 1 torch thread, 2 cores shared with other jobs (load average 6-10),
main's configs (`throughput --steps 40 4 --n 64 --nfe 20`; no GPU this session):

    | config        | batch | train img/s | sampler   | nfe | sample img/s (n=64) | ms/eval |
    | digits        | 128   | 273.7       | ancestral | 20  | 41.28               | 77.5    |
    | fashion_mnist | 128   | 5.9         | ancestral | 20  | 1.04                | 3071.5  |
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def device_line(device: torch.device) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        name = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    return f"device: {name}; torch {torch.__version__}; {now}"


def _resolve(device: str) -> torch.device:
    from scorelab.config import resolve_device

    return resolve_device(device)


# ------------------------------------------------------------------------------------------- throughput
def train_throughput(config: str, steps: int, device: torch.device, workdir: Path) -> dict:
    """Images/s of ``steps`` training steps of ``config`` (its data set, network and batch), timed between the
    first and the last log row."""
    from scorelab.config import load_config
    from scorelab.train import train

    log_every = max(1, steps // 4)
    overrides = [f"train.steps={steps}", f"train.log_every={log_every}", f"train.ckpt_every={steps}",
                 f"train.device={device}", "train.tensorboard=false"]
    cfg = load_config(config, overrides)
    out = workdir / f"train-{config}"
    train(cfg, out, progress=False)
    with open(out / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    (s0, t0), (s1, t1) = ((int(r["step"]), float(r["seconds"])) for r in (rows[0], rows[-1]))
    batch = cfg["train"]["batch_size"]
    rate = (s1 - s0) * batch / (t1 - t0) if t1 > t0 else float("nan")
    return {"config": config, "batch": batch, "steps_timed": s1 - s0, "train_img_per_s": rate, "run": out}


def sample_throughput(run_dir: Path, n: int, nfe: int, device: torch.device) -> dict:
    """Images/s of drawing n images in one batch with the default sampler at ``nfe`` evaluations (one warm-up
    batch of 2 first), and milliseconds per score evaluation."""
    from scorelab.run import load
    from scorelab.samplers import default_method, sample

    run = load(run_dir, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    sample(run.score, run.sde, (2, *run.data_shape), nfe=nfe, generator=g)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    res = sample(run.score, run.sde, (n, *run.data_shape), nfe=nfe, generator=g)
    if device.type == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - start
    return {"sampler": default_method(nfe), "nfe": res.nfe, "n": n, "sample_img_per_s": n / sec,
            "ms_per_eval": 1000 * sec / res.nfe}


def throughput(args) -> None:
    device = _resolve(args.device)
    print(device_line(device))
    steps = args.steps + [args.steps[-1]] * (len(args.configs) - len(args.steps))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config, k in zip(args.configs, steps, strict=False):
            tr = train_throughput(config, k, device, Path(tmp))
            sa = sample_throughput(tr.pop("run"), args.n, args.nfe, device)
            rows.append({**tr, **sa})
            print(json.dumps(rows[-1]))
    print(f"\n| config | batch | train img/s | sampler | nfe | sample img/s (n={args.n}) | ms/eval |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['batch']} | {r['train_img_per_s']:.1f} | {r['sampler']} | {r['nfe']} | "
              f"{r['sample_img_per_s']:.2f} | {r['ms_per_eval']:.1f} |")


# ------------------------------------------------------------------------------------------- bits/dim check
def bpd_check(args) -> None:
    from scorelab.evaluate import _image_sets, image_bits_per_dim
    from scorelab.run import load

    device = _resolve(args.device)
    print(device_line(device))
    run = load(args.run, device=device)
    name = run.config["data"]["name"]
    x = _image_sets()[name](split="test").x
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))[:args.n]]
    res = {d: image_bits_per_dim(run, x, divergence=d, tol=args.tol, batch_size=args.batch_size, seed=args.seed,
                                 progress=True) for d in ("hutchinson", "exact")}
    diff = torch.tensor(res["hutchinson"]["per_image"]) - torch.tensor(res["exact"]["per_image"])
    for d, r in res.items():
        print(f"{d:<10} bits/dim {r['bpd']:.4f} +- {r['se']:.4f}  ({r['n']} images, {r['seconds']:.1f} s, "
              f"{r['nfe']} score evaluations, tol {args.tol:g})")
    print(f"hutchinson - exact: {float(diff.mean()):+.4f} +- {float(diff.std() / math.sqrt(len(diff))):.4f} (paired, "
          f"same dequantisation); probe noise per image: std {float(diff.std()):.4f} bits/dim")


# ------------------------------------------------------------------------------------------- Fashion-MNIST on a GPU
def _cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "scorelab.cli", *args]
    print("$ scorelab " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def fashion_gpu(args) -> None:
    """Train config fashion_mnist for the steps that fit in ``minutes``, evaluate it, draw a grid."""
    device = _resolve(args.device)
    print(device_line(device))
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; give a new folder.")
    out.mkdir(parents=True, exist_ok=True)
    budget = 60.0 * args.minutes
    start = time.perf_counter()
    probe = train_throughput("fashion_mnist", 100, device, out / "probe")
    shutil.rmtree(probe.pop("run"))
    steps_per_s = probe["train_img_per_s"] / probe["batch"]
    left = budget - (time.perf_counter() - start) - 60.0  # start-up and checkpoints
    steps = max(100, int(left * steps_per_s))
    print(f"measured {probe['train_img_per_s']:.0f} img/s ({steps_per_s:.2f} steps/s): training {steps} steps")
    run = out / "run"
    sets = [a for kv in args.set for a in ("--set", kv)]
    _cli("train", "fashion_mnist", "--set", f"train.steps={steps}", "--set", f"train.device={device}", *sets,
         "--out", str(run), "--quiet")
    print(f"training took {(time.perf_counter() - start) / 60:.1f} min in all (budget {args.minutes} min)")
    _cli("evaluate", str(run), "--device", str(device), "--out", str(out / "evaluate.json"))
    _cli("sample", str(run), "-n", "64", "--device", str(device), "--out", str(out / "grid.png"), "--quiet")
    print(f"grid: {out / 'grid.png'}; results: {out / 'evaluate.json'}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput", help="training and sampling images/s of the image configs")
    t.add_argument("--configs", nargs="+", default=["digits", "fashion_mnist"])
    t.add_argument("--steps", nargs="+", type=int, default=[60, 10], help="training steps timed, per config")
    t.add_argument("--n", type=int, default=64, help="images per sampling batch")
    t.add_argument("--nfe", type=int, default=20, help="score evaluations per sampling batch")
    t.add_argument("--device", default="auto")
    b = sub.add_parser("bpd-check", help="bits/dim, exact vs Hutchinson, on test images of a run")
    b.add_argument("run")
    b.add_argument("--n", type=int, default=20)
    b.add_argument("--tol", type=float, default=1e-5)
    b.add_argument("--batch-size", type=int, default=20)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="auto")
    f = sub.add_parser("fashion-gpu", help="the Fashion-MNIST run: train --minutes, evaluate, grid")
    f.add_argument("out")
    f.add_argument("--minutes", type=float, default=20.0)
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for training")
    f.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    {"throughput": throughput, "bpd-check": bpd_check, "fashion-gpu": fashion_gpu}[args.cmd](args)


if __name__ == "__main__":
    main()
