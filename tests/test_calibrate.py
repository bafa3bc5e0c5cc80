"""The Gaussian-calibrated SDE 2M step (samplers/calibrate.py): the exact variance recursion against the sampler
itself, the calibration's claim (variance exact over the band) measured by sampling, and what it buys on a mixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scorelab.metrics import mixture_error
from scorelab.oracle import GaussianMixture
from scorelab.samplers import calibrate, sample
from scorelab.sde import VESDE, VPSDE

F64 = torch.float64
VE = VESDE(0.002, 80.0)


def gaussian(v: float) -> GaussianMixture:
    return GaussianMixture(torch.ones(1, dtype=F64), torch.zeros(1, 1, dtype=F64), torch.full((1,), v, dtype=F64))


def levels(nfe: int, sigma_min: float, denoise: bool = True) -> np.ndarray:
    """The noise levels of sde_dpm_solver's default grid (log-SNR, from 80) at this budget."""
    return np.exp(np.linspace(math.log(80.0), math.log(sigma_min), nfe - int(denoise) + 1))


def sampled_ratio(v: float, sde, **options) -> float:
    x = sample(gaussian(v).score_fn(sde), sde, (200_000, 1), "sde_dpm_solver", 20, dtype=F64,
               generator=torch.Generator().manual_seed(0), **options).x
    return float(x.var()) / v


@pytest.mark.parametrize("v", [0.01, 1.0])
def test_the_exact_recursion_is_the_sampler(v):
    """c = 1/2 is the uncalibrated midpoint step: its exact ratio (1.05 for wide data) is what sampling gives."""
    exact = float(calibrate.variance_ratios(np.full(19, 0.5), levels(20, 0.03), np.array([v]))[0])
    got = sampled_ratio(v, VE, sigma_min=0.03, denoise_to_zero=True)
    assert abs(got - exact) < 0.012, (got, exact)
    if v == 1.0:
        assert exact > 1.04  # the bias the calibration removes


@pytest.mark.parametrize("sde", [VE, VPSDE(0.1, 20.0)], ids=["ve", "vp"])
@pytest.mark.parametrize("v", [0.1**2, 1.0, 9.0])
def test_calibrated_step_is_exact_in_variance_over_the_band(sde, v):
    got = sampled_ratio(v, sde, sigma_min=0.03, denoise_to_zero=True, calibrate=True)
    assert abs(got - 1.0) < 0.02, got  # the fit ripples by ~1% near the band's bottom (std 0.1 here: 1.011)


@pytest.mark.parametrize("v", [0.01, 1.0])
def test_the_exact_recursion_with_the_corrector_is_the_sampler(v):
    """With the SA-Solver corrector (order 3, ``corrector_order``) the recursion's state holds the corrected y_i and
    the predicted ones the score saw; c = 1/2 there leaves wide data 2-4% too wide, as sampling shows."""
    exact = float(calibrate.variance_ratios(np.full(19, 0.5), levels(20, 0.03), np.array([v]), corrector_order=3)[0])
    got = sampled_ratio(v, VE, sigma_min=0.03, denoise_to_zero=True, corrector_order=3)
    assert abs(got - exact) < 0.008, (got, exact)
    if v == 1.0:
        assert exact > 1.02


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("v", [0.3**2, 1.0, 9.0])
def test_calibrated_step_with_the_corrector_is_exact_in_variance(order, v):
    """The weights fitted with the corrector in the recursion: exact to 1% by sampling (200000 draws: +- 0.3%; the
    fit ripples by 1.5% at std 0.1, near the band's bottom); the weights fitted without it, run with the corrector,
    come out 1.3-4% too wide."""
    got = sampled_ratio(v, VE, sigma_min=0.03, denoise_to_zero=True, calibrate=True, corrector_order=order)
    assert abs(got - 1.0) < 0.01, got
    sig = levels(20, 0.03)
    unaware = calibrate.variance_ratios(calibrate.gaussian_weights(sig), sig, np.array([v]), corrector_order=order)
    assert float(unaware[0]) > 1.012


def test_weights_and_their_ratios():
    sig = levels(20, 0.005)
    c = calibrate.gaussian_weights(sig)
    assert c[0] == 0.0 and len(c) == len(sig) - 1
    band = np.exp(np.linspace(math.log(calibrate.BAND_LO * 0.005), math.log(80 / calibrate.BAND_HI), 25)) ** 2
    assert np.abs(calibrate.variance_ratios(c, sig, band) - 1).max() < 0.035
    assert np.abs(calibrate.variance_ratios(np.full(19, 0.5), sig, band) - 1).max() > 0.05
    assert calibrate.gaussian_weights(sig[:2]) == [0.0]  # one step: nothing to calibrate


@pytest.mark.parametrize("order", [0, 3])
def test_ratios_of_several_coefficient_sets_at_once(order):
    """c as [P, N]: each row's ratios are those of that row alone (the batched Jacobian of the fit relies on it)."""
    sig, v = levels(20, 0.03), np.array([1e-3, 0.1, 1.0, 30.0])
    cs = np.random.default_rng(0).uniform(-0.5, 1.5, (3, 19))
    eta = np.linspace(0.0, 1.0, 19)
    batched = calibrate.variance_ratios(cs, sig, v, eta, denoise=False, corrector_order=order)
    assert batched.shape == (3, 4)
    for row, c in zip(batched, cs):
        assert np.array_equal(row, calibrate.variance_ratios(c, sig, v, eta, denoise=False, corrector_order=order))


def test_weights_are_fitted_once_per_grid():
    """A second call on the same grid (every batch of a run) reuses the fit; a copy, so the caller may change it."""
    sig = levels(30, 0.02)
    calibrate._fitted.cache_clear()
    first = calibrate.gaussian_weights(sig, 1.0, True)
    first[1] = 99.0
    again = calibrate.gaussian_weights(sig.copy(), np.ones(len(sig) - 1), True)  # the same eta, given per step
    info = calibrate._fitted.cache_info()
    assert (info.misses, info.hits) == (1, 1) and again[1] != 99.0
    assert calibrate.gaussian_weights(sig, 1.0, False) != again  # the denoising step is part of the key


def test_calibrated_step_on_wide_and_narrow_components():
    """three components of std 0.03, 0.3 and 1: the uncalibrated step leaves the wide ones 5-10% too wide."""
    g = GaussianMixture(torch.tensor([0.3, 0.3, 0.4], dtype=F64), torch.tensor([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.0]],
                        dtype=F64), torch.tensor([0.03, 0.3, 1.0], dtype=F64) ** 2)
    err = {}
    for cal in (False, True):
        err[cal] = sum(mixture_error(sample(g.score_fn(VE), VE, (4000, 2), "sde_dpm_solver", 20, sigma_min="auto",
                                            denoise_to_zero=True, calibrate=cal,
                                            generator=torch.Generator().manual_seed(s)).x, g).moment_kl
                       for s in (0, 1))
    assert err[True] < 0.5 * err[False], err


def test_calibrate_refuses_what_it_cannot_calibrate():
    g = gaussian(1.0)
    for method, options in [("dpm_solver", {"calibrate": True}), ("sde_dpm_solver", {"calibrate": True, "order": 3})]:
        with pytest.raises(ValueError, match="calibrate"):
            sample(g.score_fn(VE), VE, (4, 1), method, 10, **options)
    with pytest.raises(ValueError, match="ends above 0"):
        calibrate.gaussian_weights(np.array([80.0, 1.0, 0.0]))


def hybrid_reference(score, times, etas, c, generator, shape):
    """The 2M step with eta per step (the ODE where eta = 0), written out on VE at the score's times t_i (levels
    s_i): y_{i+1} = (s'/s) e^{-eta h} y + (1 - e^{-(1 + eta) h}) [D_i + c_i (h / h_prev) (D_i - D_{i-1})]
    + s' sqrt(1 - e^{-2 eta h}) z, then D at the last level."""
    sig = [float(VE.marginal_std(torch.tensor(t, dtype=F64))) for t in times]
    x = sig[0] * torch.randn(shape, generator=generator, dtype=F64)
    prev = h_prev = None
    for i, (s, t) in enumerate(zip(sig, times)):
        D = x + s * s * score(x, torch.full((shape[0],), t, dtype=F64))
        if i == len(sig) - 1:
            return D
        n = sig[i + 1]
        h = math.log(s / n)
        De = D if prev is None else D + c[i] * (h / h_prev) * (D - prev)
        x = (n / s) * math.exp(-etas[i] * h) * x + -math.expm1(-(1 + etas[i]) * h) * De
        if etas[i] > 0:
            x = x + n * math.sqrt(-math.expm1(-2 * etas[i] * h)) * torch.randn(shape, generator=generator, dtype=F64)
        prev, h_prev = D, h


def _recorded_runs():
    """A two-component mixture, and ``run(**options)``: sde_dpm_solver at 12 evaluations on it (seed 3), the times
    it evaluated the score at left in ``times``."""
    g = GaussianMixture(torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([[1.5, 0.0], [-1.0, 0.5]], dtype=F64),
                        torch.tensor([0.2, 0.05], dtype=F64) ** 2)
    times = []

    def score(x, t):
        times.append(float(t[0]))
        return g.score_fn(VE)(x, t)

    def run(**options):
        times.clear()
        return sample(score, VE, (500, 2), "sde_dpm_solver", 12, dtype=F64, sigma_min=0.03, denoise_to_zero=True,
                      generator=torch.Generator().manual_seed(3), **options).x

    return g, times, run


def test_stochastic_below_is_the_ode_above_and_the_sde_below():
    g, times, run = _recorded_runs()
    for cal in (False, True):
        got = run(calibrate=cal, stochastic_below=0.5)
        sig = np.array([float(VE.marginal_std(torch.tensor(t, dtype=F64))) for t in times])
        etas = np.where(sig[:-1] <= 0.5, 1.0, 0.0)  # the last time is the final denoising step's
        assert 0 < etas.sum() < len(etas)
        c = calibrate.gaussian_weights(sig, etas) if cal else [0.0] + [0.5] * (len(etas) - 1)
        want = hybrid_reference(g.score_fn(VE), list(times), etas, c, torch.Generator().manual_seed(3), (500, 2))
        assert torch.allclose(got, want, atol=1e-5, rtol=0), float((got - want).abs().max())  # rounding only
    # a window that covers the whole grid is the SDE step on every step, draw for draw
    assert torch.equal(run(), run(stochastic_below=80.0))


def test_stochastic_above_makes_a_band():
    """stochastic_above with stochastic_below: the SDE step (here at eta = 0.5) only on the steps that start inside
    [above, below], the ODE outside it, step for step the reference; a band that covers the grid is the SDE on every
    step, draw for draw; an empty one is refused."""
    g, times, recorded = _recorded_runs()

    def run(**options):
        return recorded(eta=0.5, **options)

    got = run(stochastic_above=0.1, stochastic_below=2.0)
    sig = np.array([float(VE.marginal_std(torch.tensor(t, dtype=F64))) for t in times])
    etas = np.where((sig[:-1] >= 0.1) & (sig[:-1] <= 2.0), 0.5, 0.0)
    assert etas[0] == 0 and etas[-1] == 0 and etas.sum() > 0  # ODE at both ends, SDE between
    want = hybrid_reference(g.score_fn(VE), list(times), etas, [0.0] + [0.5] * (len(etas) - 1),
                            torch.Generator().manual_seed(3), (500, 2))
    assert torch.allclose(got, want, atol=1e-5, rtol=0), float((got - want).abs().max())
    assert torch.equal(run(), run(stochastic_above=0.01, stochastic_below=80.0))
    with pytest.raises(ValueError, match="stochastic_above must be below stochastic_below"):
        run(stochastic_above=2.0, stochastic_below=0.5)
    with pytest.raises(ValueError, match="pass a number for stochastic_below"):
        run(stochastic_above=0.1, stochastic_below="auto")


@pytest.mark.parametrize("v", [0.1**2, 1.0, 9.0])
def test_calibrated_hybrid_is_exact_in_variance(v):
    got = sampled_ratio(v, VE, sigma_min=0.03, denoise_to_zero=True, calibrate=True, stochastic_below=0.5)
    assert abs(got - 1.0) < 0.02, got


def test_stochastic_below_on_a_ring():
    """5 components of std 0.3 on a circle of radius 2, n = 20000, seeds 0 and 1: summed moment KL 0.0062 with the SDE
    on every step, 0.0015 with the ODE above 0.5 (stochastic_below), which is the floor of as many exact draws."""
    angle = torch.arange(5, dtype=F64) * (2 * math.pi / 5) + 0.7
    g = GaussianMixture(torch.tensor([1.0, 3.0, 2.0, 5.0, 4.0], dtype=F64),
                        2.0 * torch.stack([angle.cos(), angle.sin()], 1), torch.full((5,), 0.3**2, dtype=F64))
    err = {sb: sum(mixture_error(sample(g.score_fn(VE), VE, (20_000, 2), "sde_dpm_solver", 20, sigma_min=0.03,
                                        denoise_to_zero=True, calibrate=True, stochastic_below=sb,
                                        generator=torch.Generator().manual_seed(s)).x, g).moment_kl for s in (0, 1))
           for sb in (None, 0.5)}
    assert err[0.5] < 0.6 * err[None], err


def test_the_default_at_20_with_the_calibrated_corrector():
    """The budget default at 20 evaluations (the calibrated 2M step with its window and the order-3 corrector) on a
    1-D mixture of the benchmark with stds 0.1, 0.02, 0.3 and 0.06 (line-1d-c), n = 20000, seeds 0 and 1: moment KL
    1.1x the floor, where the same default without the corrector is 3.2x (docs/samplers.md, "The calibrated
    corrector")."""
    from scorelab.samplers import default_sampler

    g = GaussianMixture(torch.tensor([1.0, 2.0, 3.0, 2.0], dtype=F64), torch.tensor([[-3.0], [-1.0], [1.5], [3.5]],
                        dtype=F64), torch.tensor([0.1, 0.02, 0.3, 0.06], dtype=F64)[:, None, None] ** 2)
    assert default_sampler(20)[1]["corrector_order"] == 3

    def err(**options):
        return sum(mixture_error(sample(g.score_fn(VE), VE, (20_000, 1), nfe=20, generator=torch.Generator()
                                        .manual_seed(s), **options).x, g).moment_kl for s in (0, 1))

    floor = sum(mixture_error(g.sample(20_000, generator=torch.Generator().manual_seed(1000 + s)), g).moment_kl
                for s in (0, 1))
    with_it, without = err(), err(corrector_order=0)
    assert with_it < 0.5 * without and with_it < 1.6 * floor, (with_it, without, floor)
