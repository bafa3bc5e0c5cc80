"""Re-run the categories of issue 15's adversarial pass and count what still goes wrong.

    PYTHONPATH=src python benchmarks/probe_adversarial.py [--verbose]

Every case is a hostile or careless input to the CLI (in process, through click's runner) or the API. A case
ends in one of
    ok            one clean line (``error: ...``, exit 2; 130 for Ctrl-C) or the correct result
    data_loss     a file the user had (or the last finite checkpoint) changed or vanished
    silent_wrong  exit 0 / a returned value where the input should have been refused, or a wrong result
    traceback     an exception escaped (a traceback for user input)
and the script prints the counts per outcome (the issue's "must show": 0, 0, 0). Exit status 1 if any case is
not ok. Takes about half a minute on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner

from scorelab import checkpoint as ckpt
from scorelab import train as train_mod
from scorelab.cli import main
from scorelab.likelihood import log_likelihood
from scorelab.run import load
from scorelab.sde import VPSDE
from scorelab.train import train

CASES = []


def case(category):
    def deco(fn):
        CASES.append((category, fn))
        return fn
    return deco


def tiny(data, **kw):
    return {"data": {"path": str(data)}, "sde": {"type": "vp"},
            "model": {"type": "mlp", "hidden": 16, "depth": 2, "embed_dim": 8}, "objective": {"name": "sde_dsm"},
            "train": {"steps": 6, "batch_size": 8, "lr": 1e-3, "warmup": 2, "ema_decay": 0.5, "log_every": 3,
                      "ckpt_every": 3, "device": "cpu", "tensorboard": False, "threads": 1, **kw}}


def snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def cli(*args) -> str:
    """Outcome of one CLI call that should be refused with one line."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        return "traceback"
    if res.exit_code == 0:
        return "silent_wrong"
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    clean = res.exit_code in (2, 130) and (len(lines) == 1 and lines[0].startswith("error: ")
                                          or lines[-1:] and lines[-1].startswith("Error: "))  # click usage error
    return "ok" if clean else "traceback"


def api(fn) -> str:
    """Outcome of an API call that should raise a ValueError or TypeError with a clear message."""
    try:
        fn()
    except (ValueError, TypeError):
        return "ok"
    except Exception:
        return "traceback"
    return "silent_wrong"


class Env:
    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data.npy"
        np.save(self.data, np.random.default_rng(1).standard_normal((64, 2)).astype(np.float32))
        self.n = 0

    def fresh_run(self) -> Path:
        self.n += 1
        d = self.root / f"run{self.n}"
        train(tiny(self.data), d, progress=False)
        return d

    def path(self, name) -> Path:
        self.n += 1
        return self.root / f"{self.n}-{name}"


def forge(run_dir: Path, edit_meta=None, edit_tensors=None):
    from safetensors.torch import load_file, save_file

    meta = json.loads((run_dir / ckpt.META_NAME).read_text())
    if edit_tensors is not None:
        w = run_dir / meta["weights_file"]
        save_file(edit_tensors(load_file(w)), w)
        meta["weights_sha256"] = ckpt._sha256(w)
    if edit_meta is not None:
        edit_meta(meta)
    meta["record_sha256"] = ckpt.record_digest(meta)
    (run_dir / ckpt.META_NAME).write_text(json.dumps(meta))


# --------------------------------------------------------------------------- data loss
@case("train into a foreign directory")
def _(env):
    d = env.path("mine")
    d.mkdir()
    (d / "weights-final.safetensors").write_bytes(b"mine")
    (d / "config.yaml").write_text("mine")
    before = snapshot(d)
    out = cli("train", env.root / "c.yaml", "--out", d, "--quiet")
    return "data_loss" if snapshot(d) != before else out


@case("train --out ''")
def _(env):
    cwd = os.getcwd()
    os.chdir(env.path("cwd").parent)
    try:
        before = snapshot(Path("."))
        out = cli("train", env.root / "c.yaml", "--out", "", "--quiet")
        return "data_loss" if snapshot(Path(".")) != before else out
    finally:
        os.chdir(cwd)


@case("resume deletes only its own files")
def _(env):
    d = env.fresh_run()
    (d / "weights-final.safetensors").write_bytes(b"a")
    (d / "weights-000000001.safetensors").write_bytes(b"b")
    train(tiny(env.data, steps=9), d, resume=True, progress=False)
    ok = (d / "weights-final.safetensors").exists() and (d / "weights-000000001.safetensors").exists()
    return "ok" if ok else "data_loss"


@case("divergence between log steps")
def _(env):
    real, calls = train_mod.build_objective, [0]

    def bind(*args, **kwargs):
        fn = real(*args, **kwargs)

        def wrapped(model, x, generator=None):
            calls[0] += 1
            loss = fn(model, x, generator=generator)
            return loss * float("nan") if calls[0] > 5 else loss
        return wrapped
    train_mod.build_objective = bind
    d = env.path("nan")
    try:
        train(tiny(env.data, steps=20, ckpt_every=1, log_every=100), d, progress=False)
        return "silent_wrong"
    except ValueError:
        pass
    finally:
        train_mod.build_objective = real
    run = load(d)
    finite = all(bool(torch.isfinite(p).all()) for p in run.model.parameters())
    return "ok" if finite and run.step == 4 else "data_loss"


@case("sample a NaN checkpoint")
def _(env):
    d = env.fresh_run()
    forge(d, edit_tensors=lambda t: {k: v * float("nan") for k, v in t.items()})
    return cli("sample", d, "-n", 4, "--out", env.path("s.npy"))


@case("concurrent writer")
def _(env):
    d = env.fresh_run()
    fd = ckpt.lock_run_dir(d)
    try:
        before = snapshot(d)
        out = cli("train", env.root / "c.yaml", "--out", d, "--resume", "--set", "train.steps=9", "--quiet")
        return "data_loss" if snapshot(d) != before else out
    finally:
        ckpt.unlock_run_dir(fd)


@case("stale temporaries")
def _(env):
    d = env.fresh_run()
    (d / ".log.csv.x1.tmp").write_text("x")
    (d / ".user.tmp").write_text("mine")
    train(tiny(env.data, steps=9), d, resume=True, progress=False)
    if not (d / ".user.tmp").exists():
        return "data_loss"
    return "ok" if not (d / ".log.csv.x1.tmp").exists() else "silent_wrong"


@case("SIGINT mid-training")
def _(env):
    cfg = tiny(env.data, steps=10**6, ckpt_every=10**5, log_every=5)
    c = env.path("c.yaml")
    c.write_text(json.dumps(cfg))
    d = env.path("sig")
    proc = subprocess.Popen([sys.executable, "-m", "scorelab.cli", "train", str(c), "--out", str(d), "--quiet"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and (
            not (d / "log.csv").exists() or len((d / "log.csv").read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    if "Traceback" in err:
        return "traceback"
    try:
        return "ok" if load(d).step >= 10 else "data_loss"
    except ValueError:
        return "data_loss"


# --------------------------------------------------------------------------- silent wrong results
@case("edited parameterization")
def _(env):
    d = env.fresh_run()
    meta = json.loads((d / ckpt.META_NAME).read_text())
    meta["config"]["model"]["parameterization"] = "eps"
    (d / ckpt.META_NAME).write_text(json.dumps(meta))
    return cli("sample", d, "-n", 4, "--out", env.path("s.npy"))


@case("resume without Adam state")
def _(env):
    d = env.fresh_run()
    forge(d, edit_tensors=lambda t: {k: v for k, v in t.items() if not k.startswith("optim.")})
    return cli("train", env.root / "c.yaml", "--out", d, "--resume", "--set", "train.steps=9", "--quiet")


@case("wrongly shaped Adam tensor")
def _(env):
    d = env.fresh_run()
    forge(d, edit_tensors=lambda t: {k: (torch.zeros(3) if k == "optim.0.exp_avg" else v) for k, v in t.items()})
    return cli("train", env.root / "c.yaml", "--out", d, "--resume", "--set", "train.steps=9", "--quiet")


@case("log_likelihood with a score of the wrong shape")
def _(env):
    return api(lambda: log_likelihood(lambda x, t: x[:, :1], VPSDE(), torch.randn(3, 2), solver="euler", steps=4))


@case("log_likelihood with a NaN score")
def _(env):
    return api(lambda: log_likelihood(lambda x, t: x * float("nan"), VPSDE(), torch.randn(3, 2)))


@case("log_likelihood of 1e30")
def _(env):
    return api(lambda: log_likelihood(lambda x, t: -x, VPSDE(), torch.full((2, 2), 1e30)))


@case("log_likelihood float16")
def _(env):
    return api(lambda: log_likelihood(lambda x, t: -x, VPSDE(), torch.randn(3, 2).half()))


@case("log_likelihood empty x")
def _(env):
    return api(lambda: log_likelihood(lambda x, t: -x, VPSDE(), torch.zeros(0, 2)))


@case("Run.score bad t")
def _(env):
    run = load(env.fresh_run())
    x = torch.randn(3, 2)
    outs = [api(lambda t=t: run.score(x, t)) for t in (-0.5, float("nan"), float("inf"), 2.0)]
    return next((o for o in outs if o != "ok"), "ok")


@case("Run.score t = 0 and other dtypes")
def _(env):
    run = load(env.fresh_run())
    x = torch.randn(3, 2)
    try:
        outs = [run.score(x, 0.0), run.score(x.double(), 0.5), run.score(x.half(), 0.5)]
    except Exception:
        return "traceback"
    ok = all(bool(torch.isfinite(o).all()) for o in outs) and outs[1].dtype == torch.float64
    return "ok" if ok else "silent_wrong"


@case("load(device='cuda') without CUDA")
def _(env):
    if torch.cuda.is_available():
        return "ok"
    return api(lambda: load(env.fresh_run(), device="cuda"))


@case("UTF-8-BOM CSV")
def _(env):
    from scorelab.data import load_array

    p = env.path("bom.csv")
    p.write_bytes(b"\xef\xbb\xbf1,2\n3,4\n")
    try:
        return "ok" if load_array(p).shape == (2, 2) else "silent_wrong"
    except Exception:
        return "traceback"


@case("complex .npy")
def _(env):
    p = env.path("c.npy")
    np.save(p, np.ones((3, 2), np.complex64))
    return cli("train", env.root / "c.yaml", "--set", f"data.path={p}", "--out", env.path("r"), "--quiet")


@case("denoise --out x.txt")
def _(env):
    d = env.fresh_run()
    p = env.path("y.npy")
    np.save(p, np.zeros((2, 2), np.float32))
    return cli("denoise", d, "--data", p, "--sigma", 0.1, "--out", env.path("x.txt"))


@case("likelihood CLI on 1e30 data")
def _(env):
    d = env.fresh_run()
    p = env.path("far.npy")
    np.save(p, np.full((2, 2), 1e30, np.float32))
    return cli("likelihood", d, "--data", p)


# --------------------------------------------------------------------------- tracebacks for user input
def _blocker(env):
    b = env.path("blocker")
    b.write_text("x")
    return b


@case("train --out under a file")
def _(env):
    return cli("train", env.root / "c.yaml", "--out", _blocker(env) / "r", "--quiet")


@case("sample --out under a file (before sampling)")
def _(env):
    return cli("sample", env.fresh_run(), "-n", 4, "--out", _blocker(env) / "s.npy")


@case("sample --out .png of vectors (before sampling)")
def _(env):
    d = env.path("5d.npy")
    np.save(d, np.zeros((16, 5), np.float32))
    run = env.path("r5")
    train(tiny(d), run, progress=False)
    return cli("sample", run, "-n", 4, "--out", env.path("s.png"))


@case("denoise --out under a file")
def _(env):
    p = env.path("y.npy")
    np.save(p, np.zeros((2, 2), np.float32))
    return cli("denoise", env.fresh_run(), "--data", p, "--sigma", 0.1, "--out", _blocker(env) / "d.npy")


@case("demo --out under a file")
def _(env):
    return cli("demo", "--quick", "--out", _blocker(env) / "d")


@case("figures --out under a file")
def _(env):
    return cli("figures", "--quick", "--out", _blocker(env) / "f")


@case("sample -n 10^13")
def _(env):
    return cli("sample", env.fresh_run(), "-n", 10**13, "--out", env.path("s.npy"))


@case(".npy header claiming 10^12 rows")
def _(env):
    p = env.path("liar.npy")
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 2)})
        f.write(b"\0" * 16)
    return cli("train", env.root / "c.yaml", "--set", f"data.path={p}", "--out", env.path("r"), "--quiet")


@case("deeply nested checkpoint.json")
def _(env):
    d = env.fresh_run()
    (d / ckpt.META_NAME).write_text("[" * 100000 + "]" * 100000)
    return cli("sample", d, "-n", 4, "--out", env.path("s.npy"))


@case("train.device=meta")
def _(env):
    return cli("train", env.root / "c.yaml", "--set", "train.device=meta", "--out", env.path("r"), "--quiet")


@case("YAML alias bomb")
def _(env):
    p = env.path("bomb.yaml")
    p.write_text("".join(f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}]\n" if i else
                         "l0: &l0 [xxxxxxxx]\n" for i in range(10)) + "train: {steps: *l9}\n")
    t0 = time.perf_counter()
    out = cli("train", p, "--out", env.path("r"))
    return out if time.perf_counter() - t0 < 10 else "traceback"


@case("--bits 5000")
def _(env):
    p = env.path("ints.npy")
    np.save(p, np.zeros((2, 2), np.float32))
    return cli("likelihood", env.fresh_run(), "--data", p, "--bits-per-dim", "--bits", 5000)


@case("huge --seed")
def _(env):
    return cli("sample", env.fresh_run(), "-n", 2, "--seed", 10**30, "--out", env.path("s.npy"))


@case("huge train.seed")
def _(env):
    return cli("train", env.root / "c.yaml", "--set", "train.seed=99999999999999999999999", "--out",
               env.path("r"), "--quiet")


@case("objective.eps=abc")
def _(env):
    return cli("train", env.root / "c.yaml", "--set", "objective.eps=abc", "--out", env.path("r"), "--quiet")


@case("Latin-1 CSV")
def _(env):
    p = env.path("latin.csv")
    p.write_bytes("temp\xe9rature,b\n1,2\n".encode("latin-1"))
    return cli("train", env.root / "c.yaml", "--set", f"data.path={p}", "--out", env.path("r"), "--quiet")


@case("missing generator states")
def _(env):
    d = env.fresh_run()
    forge(d, edit_meta=lambda m: m.pop("generators"))
    return cli("train", env.root / "c.yaml", "--out", d, "--resume", "--set", "train.steps=9", "--quiet")


@case("--method mala on a score model")
def _(env):
    return cli("sample", env.fresh_run(), "--method", "mala", "-n", 2, "--out", env.path("s.npy"))


@case("allocation failure at the CLI boundary")
def _(env):
    import scorelab.cli as c

    real = c._load_run

    def boom(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 4000000000000 bytes")
    c._load_run = boom
    try:
        return cli("sample", env.fresh_run(), "-n", 2, "--out", env.path("s.npy"))
    finally:
        c._load_run = real


@case("Ctrl-C during start-up")
def _(env):
    import scorelab.cli as c

    real = c._load_run

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    c._load_run = interrupt
    try:
        return cli("sample", env.fresh_run(), "-n", 2, "--out", env.path("s.npy"))
    finally:
        c._load_run = real


def main_(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    counts: Counter = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        env = Env(Path(tmp))
        (env.root / "c.yaml").write_text(json.dumps(tiny(env.data)))
        for name, fn in CASES:
            try:
                outcome = fn(env)
            except Exception as e:  # the case itself blew up: an escaped exception
                outcome = f"traceback ({type(e).__name__}: {str(e)[:80]})"
            key = outcome.split(" ")[0]
            counts[key] += 1
            if args.verbose or key != "ok":
                print(f"{key:13s} {name}{'' if key == outcome else ' ' + outcome}")
    print(f"{len(CASES)} cases: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in
                                              ("ok", "data_loss", "silent_wrong", "traceback")))
    return 0 if counts.get("ok", 0) == len(CASES) else 1


if __name__ == "__main__":
    sys.exit(main_())
