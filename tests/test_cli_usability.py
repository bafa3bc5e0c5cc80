"""The command line as a new user meets it: fast --help, -h, --version, the samplers list, method options,
batches, devices, figures --only, progress bars, and the TensorBoard warning."""

from __future__ import annotations

import inspect
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

import scorelab as sl
from helpers import TINY, invoke, one_line_error
from scorelab import cli
from scorelab.samplers import METHODS


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    np.save(d / "pts.npy", np.random.default_rng(2).standard_normal((64, 2)).astype(np.float32))
    res = invoke("train", "toy", "--set", f"data.path={d / 'pts.npy'}", "--set", "train.steps=3", *TINY,
                 "--out", d / "run")
    assert res.exit_code == 0, res.output
    return d / "run"


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys, time; t = time.perf_counter(); from scorelab.cli import main\n"
            "try:\n    main(['--help'], prog_name='scorelab')\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'LIGHT', time.perf_counter() - t, file=sys.stderr)")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    kind, _ = res.stderr.split()
    assert kind == "LIGHT"  # the reason --help is fast: torch is loaded by the commands, not at start-up
    assert wall < 3.0, wall  # ~0.1 s measured; generous for a loaded 2-core machine
    for name in ("train", "demo", "sample", "samplers", "likelihood", "denoise", "figures"):
        assert f"  {name} " in res.stdout, res.stdout
    commands = res.stdout.split("Commands:")[1]
    assert "..." not in commands  # no truncated descriptions


def test_version_and_short_help():
    res = invoke("--version")
    assert res.exit_code == 0 and sl.__version__ in res.output
    for args in (["-h"], ["sample", "-h"], ["samplers", "-h"]):
        res = invoke(*args)
        assert res.exit_code == 0 and "Usage:" in res.output, res.output


def test_samplers_lists_every_method_with_its_signature_defaults():
    res = invoke("samplers")
    assert res.exit_code == 0, res.output
    lines = {ln.split()[0]: ln for ln in res.output.splitlines() if ln.strip()}
    assert set(lines) == set(METHODS)
    for name, fn in METHODS.items():
        for p in inspect.signature(fn).parameters.values():
            if p.default is not p.empty and p.name not in ("generator", "callback", "dtype", "device"):
                assert f"{p.name}=" in lines[name], (name, p.name, lines[name])
    assert cli.method_options("dpm_solver")["order"] == inspect.signature(METHODS["dpm_solver"]).parameters[
        "order"].default


def test_sample_opt_matches_the_library_call(run_dir, tmp_path):
    out = tmp_path / "s.npy"
    res = invoke("sample", run_dir, "--method", "dpm_solver", "--nfe", 6, "-n", 10, "--opt", "order=3",
                 "--opt", "grid=karras", "--device", "cpu", "--seed", 4, "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    run = sl.load(run_dir)
    ref = sl.sample(run.score, run.sde, (10, 2), method="dpm_solver", nfe=6, order=3, grid="karras",
                    generator=torch.Generator().manual_seed(4))
    want = run.scaler.inverse(ref.x) if run.scaler is not None else ref.x
    np.testing.assert_allclose(np.load(out), want.numpy(), rtol=1e-6, atol=1e-6)
    # the options really reach the method: order 2 gives other samples
    invoke("sample", run_dir, "--method", "dpm_solver", "--nfe", 6, "-n", 10, "--opt", "order=2",
           "--opt", "grid=karras", "--device", "cpu", "--seed", 4, "--out", tmp_path / "o2.npy", "--quiet")
    assert not np.allclose(np.load(tmp_path / "o2.npy"), np.load(out))


def test_sample_without_a_method_is_the_library_default(run_dir, tmp_path, monkeypatch):
    """``scorelab sample`` with no --method and no --opt draws what ``sample(nfe=N)`` draws, including the default's
    choice on wide data from 4 to 7 evaluations (forced here by a zero threshold: UniPC, not the iPNDM row)."""
    import scorelab.samplers as samplers

    monkeypatch.setattr(samplers, "WIDE_END", 0.0)
    run = sl.load(run_dir)
    g = lambda: torch.Generator().manual_seed(4)
    ref = sl.sample(run.score, run.sde, (10, 2), nfe=5, generator=g()).x
    name, row = samplers.default_sampler(5)
    assert not torch.equal(ref, sl.sample(run.score, run.sde, (10, 2), name, 5, generator=g(), **row).x)
    res = invoke("sample", run_dir, "--nfe", 5, "-n", 10, "--device", "cpu", "--seed", 4, "--out",
                 tmp_path / "d.npy", "--quiet")
    assert res.exit_code == 0, res.output
    want = run.scaler.inverse(ref) if run.scaler is not None else ref
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"), want.numpy(), rtol=1e-6, atol=1e-6)
    assert "score evaluations; unipc, " in res.output  # it says what ran: the wide branch's method


def test_sample_in_batches(run_dir, tmp_path):
    res = invoke("sample", run_dir, "--method", "ode", "--nfe", 4, "-n", 7, "--batch-size", 3, "--device", "cpu",
                 "--out", tmp_path / "b.npy", "--quiet")
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "b.npy").shape == (7, 2)
    assert "(12 score evaluations; ode, 2 steps, sigma " in res.output  # 3 batches x 4 (Heun: 2 evaluations a step)
    one_line_error(invoke("sample", run_dir, "-n", 4, "--batch-size", 0, "--out", tmp_path / "x.npy"), "--batch-size")


def test_sample_refuses_unknown_options_and_methods(run_dir, tmp_path):
    res = invoke("sample", run_dir, "--method", "pc", "--opt", "order=3", "--out", tmp_path / "x.npy")
    one_line_error(res, "order", "snr", "scorelab samplers")
    one_line_error(invoke("sample", run_dir, "--opt", "order", "--out", tmp_path / "x.npy"), "key=value")
    one_line_error(invoke("sample", run_dir, "--method", "nope", "--out", tmp_path / "x.npy"), "nope", "dpm_solver")
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_device_cuda_without_cuda_is_one_line(run_dir, tmp_path):
    for verb in (["sample", run_dir, "--out", tmp_path / "x.npy"],
                 ["likelihood", run_dir, "--data", tmp_path / "x.npy"],
                 ["denoise", run_dir, "--data", tmp_path / "x.npy", "--sigma", 0.1, "--out", tmp_path / "y.npy"]):
        one_line_error(invoke(*verb, "--device", "cuda"), "--device", "cuda")


def test_likelihood_in_batches_matches_one_batch(run_dir, tmp_path):
    x = np.random.default_rng(0).standard_normal((6, 2)).astype(np.float32)
    np.save(tmp_path / "d.npy", x)
    outs = []
    for bs in (6, 2):
        res = invoke("likelihood", run_dir, "--data", tmp_path / "d.npy", "--batch-size", bs, "--device", "cpu",
                     "--tol", 1e-5, "--quiet")
        assert res.exit_code == 0, res.output
        outs.append(float(res.output.split()[1]))
    # adaptive steps differ per batch: measured 2e-4 apart at tol 1e-5 (3e-2 at 1e-4)
    assert abs(outs[0] - outs[1]) < 2e-2, outs


def test_eval_progress_counts_every_score_evaluation():
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    gmm = sl.data.toy_mixture("ring")
    sde = sl.VPSDE()
    bar = Bar()
    res = sl.sample(cli._EvalProgress(gmm.score_fn(sde), bar), sde, (5, 2), method="pc", nfe=10,
                    generator=torch.Generator().manual_seed(0))
    assert bar.n == res.nfe > 0


def test_figures_only_unknown_name_lists_the_valid_ones(tmp_path):
    one_line_error(invoke("figures", "--only", "nope", "--out", tmp_path), "nope", "tweedie")


def test_tensorboard_asked_for_but_missing_warns(tmp_path, monkeypatch):
    from scorelab.train import train

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    np.save(tmp_path / "p.npy", np.random.default_rng(1).standard_normal((16, 2)).astype(np.float32))
    over = ["train.steps=1", "model.hidden=8", "model.depth=1", "model.embed_dim=4", "train.batch_size=4",
            "train.device=cpu", f"data.path={tmp_path / 'p.npy'}"]
    with pytest.warns(UserWarning, match=r"scorelab\[tensorboard\]"):
        train("toy", tmp_path / "r1", overrides=[*over, "train.tensorboard=true"], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default (false) says nothing
        train("toy", tmp_path / "r2", overrides=over, progress=False)


def test_figures_only_runs_just_that_figure(tmp_path):
    res = invoke("figures", "--quick", "--only", "sigma_ladder", "--out", tmp_path, "--quiet")
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].startswith("sigma_ladder: ") and lines[-1].startswith("report: ") and len(lines) == 2
    pngs = [p.name for p in tmp_path.glob("*.png")]
    assert len(pngs) == 1 and "sigma_ladder" in pngs[0], pngs


def test_a_missing_extra_is_one_line(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the [plots] extra were not installed
    monkeypatch.delitem(sys.modules, "scorelab.plots", raising=False)
    monkeypatch.delattr(sl, "plots", raising=False)  # re-import scorelab.plots, which now lacks matplotlib
    res = invoke("sample", run_dir, "-n", 4, "--nfe", 2, "--device", "cpu", "--out", tmp_path / "s.png", "--quiet")
    one_line_error(res, "pip install 'scorelab[plots]'")
