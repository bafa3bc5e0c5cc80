"""Optimised time grids (samplers/grid_search.py): a search that improves on the default grid, deterministic,
cached in memory and on disk, usable as sample(grid="optimized")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scorelab.data import ring_mixture
from scorelab.samplers import grid_search, optimized_grid, sample
from scorelab.sde import VESDE, VPSDE

FAST = dict(dims=(2,), probe=64, sweeps=2, reference_nfe=60)


class Score:
    """The exact ring score with a call counter (a fresh object: no memory cache is shared between tests)."""

    def __init__(self, sde):
        self.fn, self.calls = ring_mixture().score_fn(sde), 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


def _probe_distance(score, sde, method, nfe, grid, seed=0):
    """The search's own objective, recomputed outside it: E ||x_method - x_reference|| on the probe batch."""
    opt = optimized_grid(score, sde, nfe, method, seed=seed, **FAST)  # cached: only to reuse its x_T recipe
    g = torch.Generator().manual_seed(seed)
    x_T = sde.prior_std * torch.randn((FAST["probe"], 2), generator=g)
    ref_grid = grid_search.log_snr_uniform(sde, FAST["reference_nfe"], float(opt[-1]), float(opt[0]))
    ref = sample(score, sde, None, "dpm_solver", FAST["reference_nfe"], x_init=x_T, grid=ref_grid, order=3,
                 lower_order_final=False).x
    x = sample(score, sde, None, method, nfe, x_init=x_T, grid=grid).x
    return float((x - ref).norm(dim=1).mean())


@pytest.mark.parametrize("method,sde", [("dpm_solver", VESDE(0.002, 80.0)), ("unipc", VPSDE(0.1, 20.0))],
                         ids=["dpm_solver-ve", "unipc-vp"])
def test_search_beats_the_default_grid_and_keeps_its_ends(method, sde):
    score = Score(sde)
    grid = optimized_grid(score, sde, 5, method, **FAST)
    base = grid_search.log_snr_uniform(sde, 5, float(grid[-1]), float(grid[0]))
    assert grid.dtype == torch.float64 and grid.shape == base.shape
    assert bool((grid[1:] < grid[:-1]).all()) and torch.equal(grid[[0, -1]], base[[0, -1]])
    assert not torch.allclose(grid, base)
    # the default grid of both methods is log-SNR uniform between the same ends
    assert _probe_distance(score, sde, method, 5, grid) < 0.8 * _probe_distance(score, sde, method, 5, base)


def test_deterministic_cached_in_memory_and_through_sample():
    sde = VESDE(0.002, 80.0)
    score = Score(sde)
    a = optimized_grid(score, sde, 5, "ipndm", **FAST)
    calls = score.calls
    assert torch.equal(optimized_grid(score, sde, 5, "ipndm", **FAST), a) and score.calls == calls  # memory
    assert torch.equal(optimized_grid(Score(sde), sde, 5, "ipndm", **FAST), a)  # recomputed: same result
    # sample(grid="optimized") uses the defaults of the search; the same as passing its result
    s2 = Score(sde)
    x = sample(s2, sde, (16, 2), "ipndm", 5, generator=torch.Generator().manual_seed(0), grid="optimized").x
    g = optimized_grid(s2, sde, 5, "ipndm", dims=(2,))
    y = sample(s2, sde, (16, 2), "ipndm", 5, generator=torch.Generator().manual_seed(0), grid=g).x
    assert torch.equal(x, y)


def test_disk_cache_is_read_back_and_never_overwrites(tmp_path):
    sde = VESDE(0.002, 80.0)
    a = optimized_grid(Score(sde), sde, 5, "dpm_solver", cache_dir=tmp_path / "grids", **FAST)
    files = list((tmp_path / "grids").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"
    fresh = Score(sde)
    b = optimized_grid(fresh, sde, 5, "dpm_solver", cache_dir=tmp_path / "grids", **FAST)
    assert torch.equal(a, b) and fresh.calls == 0  # read from the file, no evaluation
    # a file under the same name that is not ours (another spec) is left alone and not trusted
    files[0].write_text(json.dumps({"spec": "someone else's", "times": [1.0, 0.5]}))
    c = optimized_grid(Score(sde), sde, 5, "dpm_solver", cache_dir=tmp_path / "grids", **FAST)
    assert torch.equal(a, c) and json.loads(files[0].read_text())["spec"] == "someone else's"


def test_disk_cache_key_holds_the_ends_the_search_starts_from(tmp_path, monkeypatch):
    """The same call after a method's default moved the grid's start (dpm_solver on VP searched from sigma(T) ~ 152
    before its grid started at sigma_max = 80) searches again rather than read back the grid of the old ends."""
    from scorelab.samplers import METHODS

    sde = VPSDE(0.1, 20.0)
    a = optimized_grid(Score(sde), sde, 5, "dpm_solver", cache_dir=tmp_path / "grids", **FAST)
    fn = METHODS["dpm_solver"]
    names = fn.__code__.co_varnames[:fn.__code__.co_argcount][-len(fn.__defaults__):]  # the options with defaults
    defaults = dict(zip(names, fn.__defaults__), sigma_max=1e6)  # the old start: sigma_max above sigma(T)
    monkeypatch.setattr(fn, "__defaults__", tuple(defaults.values()))
    b = optimized_grid(Score(sde), sde, 5, "dpm_solver", cache_dir=tmp_path / "grids", **FAST)
    assert len(list((tmp_path / "grids").iterdir())) == 2
    assert float(a[0]) < float(b[0]) == sde.T


@pytest.mark.parametrize("method,opts", [("ancestral", {}), ("dpm_solver", {"eta": 1.0}), ("edm_heun", {}),
                                         ("ode", {"solver": "dopri5"})])
def test_refuses_methods_it_cannot_optimise(method, opts):
    sde = VESDE(0.002, 80.0)
    with pytest.raises(ValueError, match="optimized grid"):
        optimized_grid(Score(sde), sde, 6, method, **FAST, **opts)


def test_cli_sample_with_an_optimized_grid_keeps_it_in_the_run(tmp_path):
    from helpers import TINY, invoke, one_line_error

    data = tmp_path / "pts.npy"
    np.save(data, np.random.default_rng(2).standard_normal((50, 2)).astype(np.float32))
    run = tmp_path / "run"
    assert invoke("train", "toy", "--set", f"data.path={data}", "--set", "train.steps=2", *TINY,
                  "--out", run).exit_code == 0
    args = ("sample", run, "--method", "unipc", "--nfe", "4", "-n", "8", "--quiet", "--opt", "grid=optimized")
    res = invoke(*args, "--out", tmp_path / "a.npy")
    assert res.exit_code == 0, res.output
    files = list((run / "grids").glob("grid-unipc-nfe4-*.json"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    assert invoke(*args, "--out", tmp_path / "b.npy").exit_code == 0  # read back, not rewritten
    assert files[0].stat().st_mtime_ns == stamp
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    one_line_error(invoke("sample", run, "--method", "ancestral", "--nfe", "4", "-n", "8", "--quiet", "--opt",
                          "grid=optimized", "--out", tmp_path / "c.npy"), "deterministic")
