"""The trainer: bit-for-bit resume (in process and after a real SIGKILL), warm-up, EMA, bad input refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scorelab.config import available_configs, build_model, build_objective, build_sde, load_config
from scorelab.run import load
from scorelab.train import train, warmup_lr

ROOT = Path(__file__).resolve().parents[1]


def tiny(data_path, **train_kw):
    """A tiny MLP run on a .npy file: a few milliseconds per step."""
    return {
        "data": {"path": str(data_path)},
        "sde": {"type": "ve", "sigma_min": 0.01, "sigma_max": 3.0},
        "model": {"type": "mlp", "hidden": 16, "depth": 2, "embed_dim": 8},
        "objective": {"name": "sde_dsm"},
        "train": {"steps": 12, "batch_size": 16, "lr": 1e-3, "warmup": 4, "ema_decay": 0.9, "log_every": 2,
                  "ckpt_every": 4, "seed": 3, "device": "cpu", "tensorboard": False, **train_kw},
    }



@pytest.fixture
def data_path(tmp_path):
    g = np.random.default_rng(0)
    x = g.standard_normal((200, 2)).astype(np.float32) * np.array([1.0, 0.3], np.float32)
    p = tmp_path / "data.npy"
    np.save(p, x)
    return p


def snapshot(d: Path) -> dict:
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()} if d.exists() else {}


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_resume_after_stop_is_bit_for_bit(tmp_path, data_path):
    full = train(tiny(data_path), tmp_path / "full", progress=False)
    part = tiny(data_path, steps=5)  # stops between checkpoints: its own final checkpoint is at step 5
    train(part, tmp_path / "split", progress=False)
    resumed = train(tiny(data_path), tmp_path / "split", resume=True, progress=False)
    assert resumed.step == full.step == 12
    assert_same_weights(full.model, resumed.model)
    assert_same_weights(full.ema, resumed.ema)
    # the resumed log repeats nothing, and its rows after the restart agree with the uninterrupted log
    rows = lambda d: {r.split(",")[0]: r.split(",")[:4] for r in (d / "log.csv").read_text().splitlines()[1:]}  # noqa: E731
    full_rows, split_rows = rows(tmp_path / "full"), rows(tmp_path / "split")
    assert list(split_rows) == ["2", "4", "5", "6", "8", "10", "12"]
    assert [split_rows[k] for k in ("2", "4", "8", "10", "12")] == [full_rows[k] for k in ("2", "4", "8", "10", "12")]
    # and the weights really moved
    fresh = train(tiny(data_path, steps=1), tmp_path / "one", progress=False)
    assert not torch.equal(fresh.model.state_dict()["net.mlp.inp.weight"],
                           full.model.state_dict()["net.mlp.inp.weight"])


def test_resume_after_sigkill_is_bit_for_bit(tmp_path, data_path):
    import yaml

    cfg = tiny(data_path, steps=300, ckpt_every=25, log_every=50)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "scorelab.cli", "train", str(cfg_path), "--out", str(run),
                             "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (run / "checkpoint.json").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.2)  # land somewhere mid-run, possibly mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = load(run).step
    assert 0 < killed_at < 300
    resumed = train(cfg_path, run, resume=True, progress=False)
    full = train(cfg_path, tmp_path / "full", progress=False)
    assert_same_weights(full.model, resumed.model)
    assert_same_weights(full.ema, resumed.ema)


def test_warmup_schedule_and_logged_lr(tmp_path, data_path):
    assert warmup_lr(0, 1.0, 4) == 0.25 and warmup_lr(3, 1.0, 4) == 1.0 and warmup_lr(99, 1.0, 4) == 1.0
    assert warmup_lr(0, 2e-4, 0) == 2e-4
    train(tiny(data_path, steps=6, log_every=1), tmp_path / "r", progress=False)
    lines = (tmp_path / "r" / "log.csv").read_text().splitlines()
    assert lines[0] == "step,loss,lr,grad_norm,seconds"
    lrs = [float(r.split(",")[2]) for r in lines[1:]]
    assert lrs == pytest.approx([1e-3 * min(1, k / 4) for k in range(1, 7)])


def test_ema_is_the_exponential_average(tmp_path, data_path):
    """One step: ema = d * theta_0 + (1 - d) * theta_1 (theta_0 the initial weights)."""
    d = 0.9
    r0 = train(tiny(data_path, steps=1, ema_decay=d, lr=0.1, warmup=0), tmp_path / "a", progress=False)
    init = build_model(load_config(tiny(data_path))["model"], build_sde(tiny(data_path)["sde"]), (2,))
    with torch.random.fork_rng():
        torch.manual_seed(3)
        init = build_model(load_config(tiny(data_path))["model"], build_sde(tiny(data_path)["sde"]), (2,))
    for k, v in r0.ema.state_dict().items():
        expect = d * init.state_dict()[k] + (1 - d) * r0.model.state_dict()[k]
        torch.testing.assert_close(v, expect)
    assert not torch.equal(r0.model.state_dict()["net.mlp.out.weight"], init.state_dict()["net.mlp.out.weight"])


def test_grad_clip_bounds_the_step(tmp_path, data_path):
    """Clipping acts on the gradient Adam sees. With adam_eps = 1 >> |g|, Adam's first step is lr * g / (|g| + 1)
    ~ lr * g, so one step moves the weights by at most lr * grad_clip in norm; unclipped it moves much more."""
    def step_norm(clip, name):
        cfg = tiny(data_path, steps=1, grad_clip=clip, warmup=0, lr=1.0, adam_eps=1.0)
        r = train(cfg, tmp_path / name, progress=False)
        with torch.random.fork_rng():
            torch.manual_seed(cfg["train"]["seed"])
            init = build_model(load_config(cfg)["model"], build_sde(cfg["sde"]), (2,))
        sq = sum(float(((a - init.state_dict()[k]) ** 2).sum()) for k, a in r.model.state_dict().items())
        logged = float((tmp_path / name / "log.csv").read_text().splitlines()[1].split(",")[3])
        return sq**0.5, logged

    clipped, logged = step_norm(1e-3, "a")
    free, logged_free = step_norm(0.0, "b")
    assert clipped <= 1e-3 * (1 + 1e-4)
    assert logged == pytest.approx(logged_free, rel=1e-5) and logged > 1e-2  # the log shows the norm before clipping
    assert free > 10 * clipped


def test_load_gives_the_ema_score(tmp_path, data_path):
    r = train(tiny(data_path), tmp_path / "r", progress=False)
    run = load(tmp_path / "r")
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    t = torch.full((5,), 0.5)
    with torch.no_grad():
        expect = r.ema.score(x, t)
    out = run.score(x, t)
    assert torch.equal(out, expect) and not out.requires_grad
    assert all(not p.requires_grad for p in run.model.parameters())
    # a divergence of the score (likelihoods) still works: the graph is kept when x requires grad
    from scorelab.divergence import divergence_exact

    div, _ = divergence_exact(lambda y: run.score(y, t), x)
    assert div.shape == (5,) and torch.isfinite(div).all()
    assert run.step == 12 and run.sde.sigma_max == 3.0 and run.config["model"]["hidden"] == 16
    assert not run.model.training


def test_energy_run_scores_with_autograd(tmp_path, data_path):
    cfg = tiny(data_path, steps=2)
    cfg["model"] = {"type": "energy", "hidden": 16, "depth": 2, "embed_dim": 8}
    train(cfg, tmp_path / "e", progress=False)
    run = load(tmp_path / "e")
    x = torch.randn(4, 2)
    with torch.no_grad():  # samplers call it under no_grad: still a gradient of the energy
        s = run.score(x, torch.full((4,), 0.3))
    assert s.shape == x.shape and torch.isfinite(s).all()


@pytest.mark.parametrize("bad, words", [
    ({"train": {"lr": -1e-3}}, ["train.lr", "> 0"]),
    ({"train": {"learning_rate": 1e-3}}, ["train.learning_rate", "valid keys", "'lr'"]),
    ({"model": {"hiden": 3}}, ["model.hiden", "hidden"]),
    ({"optimizer": {}}, ["optimizer", "valid sections"]),
    ({"train": {"steps": 2.5}}, ["train.steps", "integer"]),
    ({"train": {"steps": True}}, ["train.steps"]),
    ({"sde": {"type": "vx"}}, ["sde.type", "ve"]),
    ({"sde": {"type": "vp", "sigma_max": 3.0}}, ["sde.sigma_max", "beta_max"]),
    ({"objective": {"name": "dsm", "sigmaa": 0.1}}, ["sigmaa", "sigma"]),
    ({"objective": {"name": "nope"}}, ["objective.name", "sde_dsm"]),
    ({"train": {"ema_decay": 1.5}}, ["train.ema_decay"]),
])
def test_bad_configs_are_refused_with_the_key(tmp_path, data_path, bad, words):
    cfg = tiny(data_path)
    for section, entries in bad.items():
        cfg[section] = {**cfg.get(section, {}), **entries} if section in cfg and "type" not in entries \
            else entries if section != "sde" else {**entries}
    with pytest.raises(ValueError) as e:
        train(cfg, tmp_path / "r", progress=False)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert not (tmp_path / "r").exists()


def test_overrides(data_path):
    cfg = load_config("toy", [f"data.path={data_path}", "train.steps=7", "train.lr=2e-4", "model.hidden=8"])
    assert cfg["data"]["path"] == str(data_path) and cfg["data"]["name"] is None
    assert cfg["train"]["steps"] == 7 and cfg["train"]["lr"] == 2e-4 and cfg["model"]["hidden"] == 8
    with pytest.raises(ValueError, match="train.stepz"):
        load_config("toy", ["train.stepz=3"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_config("toy", ["train.steps"])
    with pytest.raises(FileNotFoundError, match="toy"):
        load_config("no_such_config")


def test_nan_data_refused_run_dir_untouched(tmp_path, data_path):
    x = np.load(data_path)
    x[7, 1] = np.nan
    np.save(data_path, x)
    (tmp_path / "r").mkdir()  # an empty directory: training may write there, but not before checking the data
    before = snapshot(tmp_path / "r")
    with pytest.raises(ValueError, match="NaN"):
        train(tiny(data_path), tmp_path / "r", progress=False)
    assert snapshot(tmp_path / "r") == before


def test_existing_run_needs_resume_and_same_config(tmp_path, data_path):
    train(tiny(data_path, steps=4), tmp_path / "r", progress=False)
    before = snapshot(tmp_path / "r")
    with pytest.raises(ValueError, match="--resume"):
        train(tiny(data_path, steps=4), tmp_path / "r", progress=False)
    other = tiny(data_path, steps=8)
    other["model"]["hidden"] = 32
    with pytest.raises(ValueError, match="model.hidden"):
        train(other, tmp_path / "r", resume=True, progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        train(tiny(data_path), tmp_path / "nothing", resume=True, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no checkpoint"):
        train(tiny(data_path), tmp_path / "empty", resume=True, progress=False)
    assert snapshot(tmp_path / "r") == before


def test_load_missing_run_is_one_line(tmp_path):
    for target in (tmp_path / "absent", tmp_path):
        with pytest.raises(ValueError) as e:
            load(target)
        assert "\n" not in str(e.value) and "scorelab train" in str(e.value)


@pytest.mark.parametrize("name", available_configs())
def test_every_config_builds(name, tmp_path):
    """Every bundled config validates, and its process, objective and network build (no data, no training)."""
    cfg = load_config(name, ["data.path=whatever.npy", "train.steps=3"])
    assert cfg["train"]["steps"] == 3 and cfg["data"]["path"] == "whatever.npy"
    sde = build_sde(cfg["sde"])
    build_objective(cfg["objective"], cfg["data"])
    shape = (2,) if cfg["model"]["type"] != "unet" else ((1, 28, 28) if "fashion" in name else (1, 8, 8))
    model = build_model(cfg["model"], sde, shape)
    x = torch.zeros(2, *shape)
    assert model.score(x, torch.full((2,), 0.5)).shape == x.shape


def test_bundled_configs_cover_the_objectives():
    from scorelab.objectives import OBJECTIVES

    names = set(available_configs())
    assert {"toy", "npy", "digits", "fashion_mnist"} <= names
    assert set(OBJECTIVES) <= names
    assert (ROOT / "configs" / "toy.yaml").is_file()
    # the package's copy is the repository's configs/ (a link), so the two cannot drift apart
    pkg = ROOT / "src" / "scorelab" / "configs"
    assert sorted(p.name for p in pkg.glob("*.yaml")) == sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    for p in (ROOT / "configs").glob("*.yaml"):
        assert (pkg / p.name).read_bytes() == p.read_bytes()


def test_builtin_data_and_scaler(tmp_path):
    """Bundled data sets load through the config; image configs map pixels to [-1, 1] and the run keeps the map."""
    from scorelab.config import build_data

    x, scaler = build_data(load_config("toy", ["data.n=64"])["data"])
    assert x.shape == (64, 2) and x.dtype == torch.float32 and scaler is None
    cfg = load_config("digits", ["data.n=32", "train.steps=1", "train.batch_size=4", "model.base_channels=8",
                                 "model.embed_dim=8", "train.device=cpu", "train.tensorboard=false"])
    x, scaler = build_data(cfg["data"])
    assert x.shape == (32, 1, 8, 8) and x.min() == -1 and x.max() == 1
    train(cfg, tmp_path / "img", progress=False)
    run = load(tmp_path / "img")
    assert run.data_shape == (1, 8, 8)
    torch.testing.assert_close(run.scaler.state_dict(), scaler.state_dict())
    y = torch.tensor([-1.0, 1.0])
    assert run.scaler.inverse(y).tolist() == pytest.approx(scaler.inverse(y).tolist())


def test_esm_target_from_the_data_mixture(tmp_path):
    """ESM with target: data regresses on the toy's exact score: at the oracle itself the loss is zero."""
    from scorelab.config import bind_objective, build_data
    from scorelab.data import toy_mixture

    cfg = load_config("esm", ["objective.target=data", "data.n=16"])
    sde = build_sde(cfg["sde"])
    objective = bind_objective(build_objective(cfg["objective"], cfg["data"]), sde)
    x, _ = build_data(cfg["data"])

    class Oracle:
        def __init__(self):
            self.sde, self._s = sde, toy_mixture("two_modes").score_fn(sde)

        def score(self, x, t):
            return self._s(x.double(), t.double()).float()

    loss = objective(Oracle(), x, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (16,) and float(loss.abs().max()) < 1e-6
    with pytest.raises(ValueError, match="mixture toy"):
        load_config("esm", ["objective.target=data", "data.name=moons"])


def test_training_learns_the_true_score(tmp_path):
    """On Gaussian data, DSM at one noise level sigma = 0.5: the trained EMA score approaches the exact score of
    p_sigma (the oracle) and beats the untrained network by a wide margin."""
    from scorelab.oracle import GaussianMixture

    gmm = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.tensor([[1.0, -0.5]], dtype=torch.float64),
                          torch.full((1,), 0.25, dtype=torch.float64))
    p = tmp_path / "g.npy"
    np.save(p, gmm.sample(2000, generator=torch.Generator().manual_seed(0)).float().numpy())
    cfg = tiny(p, steps=300, batch_size=64, lr=3e-3, warmup=20, ema_decay=0.9, log_every=100, ckpt_every=300)
    cfg["model"]["hidden"] = 32
    cfg["objective"] = {"name": "dsm", "sigma": 0.5}
    train(cfg, tmp_path / "g", progress=False)
    run = load(tmp_path / "g")
    t = run.sde.t_from_std_ratio(torch.tensor(0.5)).expand(512)
    x = gmm.sample(512, generator=torch.Generator().manual_seed(1)).float()
    mean, std = run.sde.marginal_prob(x, t)
    xt = mean + std[:, None] * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    truth = gmm.score(xt.double(), t.double(), run.sde).float()
    err = lambda s: float(((s - truth) ** 2).sum(1).mean() / (truth**2).sum(1).mean())  # noqa: E731
    with torch.random.fork_rng():
        torch.manual_seed(cfg["train"]["seed"])
        init = build_model(load_config(cfg)["model"], run.sde, (2,))
    with torch.no_grad():
        before = err(init.score(xt, t))
    after = err(run.score(xt, t))
    assert after < 0.1 and after < before / 5, (before, after)


@settings(max_examples=40, deadline=None)
@given(key=st.sampled_from(["steps", "batch_size", "lr", "log_every", "ckpt_every", "adam_eps"]),
       value=st.one_of(st.integers(-10**6, 0), st.floats(max_value=0.0, allow_nan=False), st.just(float("nan")),
                       st.text(alphabet="abcxyz", min_size=1, max_size=4)))
def test_non_positive_or_non_numeric_train_values_name_the_key(key, value):
    with pytest.raises(ValueError) as e:
        load_config("toy", [f"train.{key}={value!r}" if isinstance(value, str) else f"train.{key}={value}"])
    assert f"train.{key}" in str(e.value) and "\n" not in str(e.value)


def test_switching_type_by_override_drops_foreign_keys():
    cfg = load_config("toy", ["sde.type=vp", "sde.beta_max=10"])
    assert cfg["sde"] == {"type": "vp", "beta_min": 0.1, "beta_max": 10.0, "N": 1000, "schedule": "linear"}
    cfg = load_config("toy", ["model.type=energy"])
    assert cfg["model"]["parameterization"] == "energy" and cfg["model"]["hidden"] == 128
    with pytest.raises(ValueError, match="model.hidden"):  # the YAML itself may not mix types
        load_config({"data": {"name": "ring"}, "model": {"type": "unet", "hidden": 3}})


@pytest.mark.parametrize("name", [n for n in available_configs() if n not in ("fashion_mnist", "npy")])
def test_every_config_trains_two_steps(name, tmp_path):
    """Each bundled config (on its own data, shrunk) runs two optimiser steps to a finite loss and a checkpoint."""
    from scorelab.data import FASHION_MNIST_ROOT

    if name.startswith("fashion_mnist") and not Path(FASHION_MNIST_ROOT, "train-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed: sudo apt-get install dataset-fashion-mnist")
    small = ["train.steps=2", "train.batch_size=4", "train.log_every=1", "train.device=cpu",
             "train.tensorboard=false", "data.n=32"]
    cfg = load_config(name, small)
    m = cfg["model"]
    small += (["model.base_channels=8", "model.embed_dim=8", "model.channel_mults=[1]"] if m["type"] == "unet"
              else ["model.hidden=8", "model.depth=1", "model.embed_dim=4"])
    r = train(load_config(name, small), tmp_path / name, progress=False)
    assert r.step == 2 and np.isfinite(r.last_loss)
    assert load(tmp_path / name).step == 2
