"""Data parallel: 2 processes under torchrun (gloo, CPU) reach the parameters of 1 process on the same global batch.

The objective is made deterministic (implicit score matching at a fixed time on the data as given), so the only
randomness is the batch indices, which every rank draws from the same index generator and then shards. The
two runs then compute the same mean gradient, except for floating-point order: each rank averages its half and
DDP averages the two halves, where one process averages all 16 at once. That is a relative difference of order
1e-7 per step, so the parameters agree to ~1e-6 after a few Adam steps, not bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from scorelab import checkpoint as ckpt
from scorelab.config import build_model, build_sde, load_config
from scorelab.train import train

ROOT = Path(__file__).resolve().parents[1]



def test_two_processes_match_one(tmp_path):
    data = tmp_path / "d.npy"
    np.save(data, np.random.default_rng(4).standard_normal((100, 2)).astype(np.float32))
    cfg = {
        "data": {"path": str(data)},
        "sde": {"type": "ve", "sigma_max": 3.0},
        "model": {"type": "mlp", "hidden": 16, "depth": 2, "embed_dim": 8},
        "objective": {"name": "ism", "t": 0.5, "perturb": False},
        "train": {"steps": 6, "batch_size": 16, "lr": 1e-2, "warmup": 0, "ema_decay": 0.5, "ckpt_every": 3,
                  "log_every": 2, "device": "cpu", "tensorboard": False, "seed": 1},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    for attempt in range(2):
        out = tmp_path / f"ddp{attempt}"
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "scorelab.cli", "train", str(path), "--out", str(out), "--quiet"],
                              env=env, capture_output=True, text=True, timeout=120)
        # Under a loaded machine a gloo rank sometimes aborts in C++ at process teardown ("terminate called
        # without an active exception", SIGABRT) on a fresh checkout: seen in about 1 of 3 first runs of the
        # whole suite, never alone. One fresh try for exactly that; any other failure fails at once.
        if proc.returncode == 0 or "terminate called without an active exception" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = ckpt.read_meta(out)
    assert meta["world_size"] == 2 and len(meta["generators"]["loss"]) == 2 and meta["step"] == 6
    ddp = ckpt.load_tensors(out, meta)

    train(path, tmp_path / "single", progress=False)
    one = ckpt.load_tensors(tmp_path / "single", ckpt.read_meta(tmp_path / "single"))
    assert ddp.keys() == one.keys()
    for k in ddp:  # model, EMA and Adam moments
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-5, atol=1e-6, msg=k)

    # the comparison is not vacuous: the weights moved well away from their initial values
    c = load_config(path)
    with torch.random.fork_rng():
        torch.manual_seed(c["train"]["seed"])
        fresh = build_model(c["model"], build_sde(c["sde"]), (2,))
    key = "net.mlp.out.weight"
    assert (fresh.state_dict()[key] - one[f"model.{key}"]).abs().max() > 1e-2

