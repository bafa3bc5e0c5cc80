"""The stochastic window read off the score (samplers/window.py, ``stochastic_below="auto"``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scorelab.metrics import mixture_error
from scorelab.oracle import GaussianMixture
from scorelab.samplers import sample, stop, window
from scorelab.samplers._common import sigma_of
from scorelab.sde import VESDE, VPSDE

VE = VESDE(sigma_min=0.002, sigma_max=80.0)
F64 = torch.float64
CAL = {"denoise_to_zero": True, "sigma_min": "auto", "calibrate": True}


def wide_random_mixture() -> GaussianMixture:
    """d = 3, 7 components: means 6 N(0, I), covariances 4 Q diag(l) Q^T with l log-uniform in [0.01, 1] (seed 61):
    modes that part at noise levels above 1."""
    rng = np.random.RandomState(61)
    d, K = 3, 7
    means = 3.0 * rng.randn(K, d)
    covs = []
    for _ in range(K):
        Q, R = np.linalg.qr(rng.randn(d, d))
        Q = Q * np.sign(np.diag(R))
        covs.append((Q * np.exp(rng.uniform(np.log(0.01), 0.0, d))) @ Q.T)
    w = rng.dirichlet(2.0 * np.ones(K))
    return GaussianMixture(torch.tensor(w), 2.0 * torch.tensor(means), 4.0 * torch.tensor(np.stack(covs)))


def ring(n=5, radius=2.0, std=0.3) -> GaussianMixture:
    angle = torch.arange(n, dtype=F64) * (2 * math.pi / n) + 0.7
    return GaussianMixture(torch.ones(n, dtype=F64), radius * torch.stack([angle.cos(), angle.sin()], 1),
                           torch.full((n,), std**2))


def test_variance_growth_is_zero_on_a_gaussian_and_two_at_constant_share():
    sig = [0.05 * 1.2**k for k in range(20)]
    v = 0.7
    kappa = window.variance_growth(sig, [s * s / (v + s * s) for s in sig])
    assert max(abs(k) for k in kappa) < 1e-9
    assert max(abs(k - 2) for k in window.variance_growth(sig, [0.4] * len(sig))) < 1e-9
    assert window.window_from_share(sig, [s * s / (v + s * s) for s in sig]) is None


def choose(g, seed=0, n=20000):
    return window.choose_stochastic_below(g.score_fn(VE), VE, (n, g.d), "sde_dpm_solver", 20, CAL,
                                          generator=torch.Generator().manual_seed(seed))


def test_the_window_follows_where_the_modes_part():
    """A ring of modes of std 0.3 spaced 2.35 apart parts at about 0.5; a wide random mixture above 1; a single
    Gaussian never; the floor holds."""
    assert 0.3 <= choose(ring()) <= 0.7
    assert choose(wide_random_mixture()) > 1.2
    one = GaussianMixture(torch.ones(1, dtype=F64), torch.zeros(1, 2, dtype=F64), torch.full((1,), 1.5**2))
    assert choose(one) is None
    sharp = ring(n=9, radius=2.0, std=0.06)
    assert choose(sharp) == window.S_MIN


def test_auto_is_the_chosen_level_draw_for_draw_and_leaves_the_stream():
    g = ring()
    sc = g.score_fn(VE)
    S = choose(g, seed=3, n=500)
    a = sample(sc, VE, (500, 2), "sde_dpm_solver", 20, generator=torch.Generator().manual_seed(3),
               **{**CAL, "stochastic_below": "auto"}).x
    b = sample(sc, VE, (500, 2), "sde_dpm_solver", 20, generator=torch.Generator().manual_seed(3),
               **{**CAL, "stochastic_below": S}).x
    assert torch.equal(a, b)


def test_no_pilot_where_no_step_is_stochastic():
    calls = []

    def score(x, t):
        calls.append(1)
        return -x

    assert window.choose_stochastic_below(score, VE, (10, 2), "dpm_solver", 20, {}) is None
    assert not calls


def test_a_floor_only_widens_the_window():
    """"auto:FLOOR" keeps the reading where it is above FLOOR (the wide mixture reads above 1.2) and FLOOR where the
    reading is lower or absent on the low side (the ring reads 0.3-0.7), the same sampler draw for draw."""
    wide, low = wide_random_mixture(), ring()
    kw = {"seed": 0, "n": 2000}
    assert window.window_floor("auto") == window.S_MIN and window.window_floor("auto:0.7") == 0.7
    assert window.window_floor(0.7) is False and window.window_floor(None) is False
    read = window.choose_stochastic_below(wide.score_fn(VE), VE, (2000, 3), "sde_dpm_solver", 20, CAL,
                                          generator=torch.Generator().manual_seed(0), floor=0.7)
    assert read == choose(wide, **kw) > 1.2
    assert choose(low, **kw) < 0.7
    assert window.choose_stochastic_below(low.score_fn(VE), VE, (2000, 2), "sde_dpm_solver", 20, CAL,
                                          generator=torch.Generator().manual_seed(0), floor=0.7) == 0.7
    sc = low.score_fn(VE)
    a, b = (sample(sc, VE, (500, 2), "sde_dpm_solver", 20, generator=torch.Generator().manual_seed(3),
                   **{**CAL, "stochastic_below": S}).x for S in ("auto:0.7", 0.7))
    assert torch.equal(a, b)


def test_one_pilot_serves_the_window_and_the_stop_level():
    """The stop level is chosen on the window's pilot: reading the window adds only its levels, read up to just above
    the first that qualifies, not a second pilot run (20 + 1 evaluations per draw) on top of its 27 levels."""
    g = ring()
    sc = g.score_fn(VE)
    rows = []

    def counted(x, t):
        rows.append(x.shape[0])
        return sc(x, t)

    def evals(S):
        rows.clear()
        sample(counted, VE, (256, 2), "sde_dpm_solver", 20, generator=torch.Generator().manual_seed(0),
               **{**CAL, "stochastic_below": S})
        return sum(rows) / 256

    assert evals("auto:0.7") - evals(0.7) < len(window.LADDER) - 3
    assert evals("auto") - evals(0.7) < len(window.LADDER)  # the window read (about 0.5) is not the pilot's


def network_like(g, sde, c=0.02):
    """The exact score plus an error that grows as the noise falls, c tanh(x) sigma^-1.5, as a network's does near
    the smallest noise it was trained on: its noise share turns up down the stop ladder."""
    sc = g.score_fn(sde)

    def score(x, t):
        s = sigma_of(sde, t).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return sc(x, t) + c * torch.tanh(x) * s**-1.5
    return score


def pilot(score, sde, seed=0):
    return stop.pilot_draws(score, sde, (256, 2), "sde_dpm_solver", 20, {**CAL, "stochastic_below": 0.7,
                            "sigma_min": stop.LADDER[-1]}, stop.LADDER[-1], torch.Generator().manual_seed(seed))


def test_the_share_keeps_falling_on_exact_scores_only():
    """An exact score's noise share falls at every level of the stop ladder (VE and VP, a ring and needles 0.02
    wide); with a network's kind of error it turns up; a VE process that stops at 0.01 cannot tell (False)."""
    vp = VPSDE(0.1, 20.0)
    for g in (ring(), ring(n=9, radius=2.0, std=0.02)):
        for sde in (VE, vp):
            assert stop.share_keeps_falling(g.score_fn(sde), sde, *pilot(g.score_fn(sde), sde))
            bad = network_like(g, sde)
            assert not stop.share_keeps_falling(bad, sde, *pilot(bad, sde))
    short = VESDE(0.01, 10.0)
    g = ring()
    assert not stop.share_keeps_falling(g.score_fn(short), short, *pilot(g.score_fn(VE), VE))


def test_guarded_is_the_reading_on_an_exact_score_and_the_floor_on_a_network_s():
    """"auto:guarded" (the default from 20 to 31 evaluations) is "auto" draw for draw where the share keeps falling
    and "auto:0.7" where it turns up or cannot be seen (a VE process stopping at 0.01); the ring reads below 0.7, so
    the two differ there."""
    assert window.window_floor("auto:guarded") == window.GUARDED and window.GUARD == 0.7
    g = ring()

    def run(score, sde, S):
        return sample(score, sde, (500, 2), "sde_dpm_solver", 20, generator=torch.Generator().manual_seed(3),
                      **{**CAL, "stochastic_below": S}).x

    for sde in (VE, VPSDE(0.1, 20.0)):
        exact, bad = g.score_fn(sde), network_like(g, sde)
        guarded, auto, floor = (run(exact, sde, S) for S in ("auto:guarded", "auto", "auto:0.7"))
        assert torch.equal(guarded, auto) and not torch.equal(guarded, floor)
        assert torch.equal(run(bad, sde, "auto:guarded"), run(bad, sde, "auto:0.7"))
    short = VESDE(0.01, 10.0)
    assert torch.equal(run(g.score_fn(short), short, "auto:guarded"), run(g.score_fn(short), short, "auto:0.7"))


def test_refusals():
    g = ring()
    for bad in ("high", "auto:", "auto:0", "auto:-1", "auto:x", "autox:0.7", "auto:guard", "guarded"):
        with pytest.raises(ValueError, match="stochastic_below must be"):
            sample(g.score_fn(VE), VE, (10, 2), "sde_dpm_solver", 20, stochastic_below=bad)
    with pytest.raises(ValueError, match="needs a method with a stochastic window"):
        window.choose_stochastic_below(g.score_fn(VE), VE, (10, 2), "unipc", 10, {})


@pytest.mark.parametrize("g, fixed", [(wide_random_mixture(), 0.7), (ring(), 1.0)])
def test_auto_beats_a_fixed_window_where_that_window_is_wrong(g, fixed):
    """Moment KL at n = 20000, 20 evaluations: the window read off the score against a fixed one on data it does
    not suit (0.7 on modes that part above 1: measured 1.0 vs 2.7x of the best of 12 windows; 1 on a ring that
    parts at 0.5: 1.0 vs 2.1x)."""
    sc = g.score_fn(VE)

    def err(S, seed):
        x = sample(sc, VE, (20000, g.d), "sde_dpm_solver", 20, generator=torch.Generator().manual_seed(seed),
                   **{**CAL, "stochastic_below": S}).x
        return mixture_error(x, g).moment_kl

    auto = sum(err("auto", s) for s in (0, 1))
    worse = sum(err(fixed, s) for s in (0, 1))
    assert auto < 0.8 * worse, (auto, worse)
