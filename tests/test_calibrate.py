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


def test_weights_and_their_ratios():
    sig = levels(20, 0.005)
    c = calibrate.gaussian_weights(sig)
    assert c[0] == 0.0 and len(c) == len(sig) - 1
    band = np.exp(np.linspace(math.log(calibrate.BAND_LO * 0.005), math.log(80 / calibrate.BAND_HI), 25)) ** 2
    assert np.abs(calibrate.variance_ratios(c, sig, band) - 1).max() < 0.035
    assert np.abs(calibrate.variance_ratios(np.full(19, 0.5), sig, band) - 1).max() > 0.05
    assert calibrate.gaussian_weights(sig[:2]) == [0.0]  # one step: nothing to calibrate


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
