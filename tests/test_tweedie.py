"""Tweedie's first- and second-order formulas against the mixture oracle's exact posterior moments."""

import math

import pytest
import torch

from helpers import noisy_points, three_component_mixture
from scorelab.oracle import GaussianMixture
from scorelab.sde import VESDE, VPSDE, SubVPSDE
from scorelab.tweedie import (
    denoise,
    tweedie_cov,
    tweedie_cov_diag,
    tweedie_cov_lowrank,
    tweedie_cov_trace,
    tweedie_mean,
)

SDES = [VESDE(0.01, 50.0), VPSDE(), SubVPSDE()]
IDS = ["ve", "vp", "subvp"]


def mixture(d=3, seed=0):
    return three_component_mixture(d, seed, jitter=0.05)


def noisy(gmm, sde, n=12, seed=1):
    return noisy_points(gmm, sde, n, seed, t_range=(0.05, 0.65))


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_mean_and_cov_match_the_oracle(sde):
    gmm = mixture()
    x, t = noisy(gmm, sde)
    s = gmm.score_fn(sde)
    torch.testing.assert_close(tweedie_mean(s, sde, x, t), gmm.posterior_mean(x, t, sde), atol=1e-10, rtol=1e-9)
    cov = tweedie_cov(s, sde, x, t)
    torch.testing.assert_close(cov, gmm.posterior_cov(x, t, sde), atol=1e-9, rtol=1e-8)
    torch.testing.assert_close(tweedie_cov_trace(s, sde, x, t), cov.diagonal(dim1=1, dim2=2).sum(1))
    torch.testing.assert_close(tweedie_cov_diag(s, sde, x, t, exact=True), cov.diagonal(dim1=1, dim2=2))


def test_diagonal_estimate_converges():
    sde = VPSDE()
    gmm = mixture(d=6, seed=2)
    x, t = noisy(gmm, sde, n=8)
    s = gmm.score_fn(sde)
    cov = gmm.posterior_cov(x, t, sde)
    exact = cov.diagonal(dim1=1, dim2=2)
    # Rademacher: Var[v_i (v^T C)_i] = sum_{j != i} C_ij^2, so the RMS error is sqrt(that / n_probes)
    off = (cov.pow(2).sum(2) - exact.pow(2)).mean().sqrt()
    errs = []
    for n_probes in (16, 1024):
        est = tweedie_cov_diag(s, sde, x, t, n_probes=n_probes, generator=torch.Generator().manual_seed(3))
        errs.append(float((est - exact).pow(2).mean().sqrt()))
    # Monte-Carlo error ~ 1/sqrt(n): 64x more probes, ~8x smaller (allow slack)
    assert errs[1] < errs[0] / 4, errs
    assert errs[1] < 1.5 * float(off) / math.sqrt(1024)
    tr = tweedie_cov_trace(s, sde, x, t, n_probes=512, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(tr, exact.sum(1), rtol=0.05, atol=0)


def test_shape_agnostic_on_image_tensors():
    sde = VESDE(0.01, 50.0)
    gmm = mixture(d=4, seed=5)
    x, t = noisy(gmm, sde, n=5)
    img = x.reshape(5, 1, 2, 2)
    s = gmm.score_fn(sde)
    torch.testing.assert_close(tweedie_mean(s, sde, img, t).reshape(5, 4), gmm.posterior_mean(x, t, sde))
    d_img = tweedie_cov_diag(s, sde, img, t, exact=True)
    assert d_img.shape == img.shape
    torch.testing.assert_close(d_img.reshape(5, 4), gmm.posterior_cov(x, t, sde).diagonal(dim1=1, dim2=2))


def test_lowrank_recovers_leading_eigenpairs():
    sde = VPSDE()
    gmm = mixture(d=6, seed=6)
    x, t = noisy(gmm, sde, n=4)
    s = gmm.score_fn(sde)
    cov = gmm.posterior_cov(x, t, sde)
    ev = torch.linalg.eigvalsh(cov).flip(-1)
    lam, U = tweedie_cov_lowrank(s, sde, x, t, rank=6, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(lam, ev, atol=1e-9, rtol=1e-7)  # full rank: exact
    torch.testing.assert_close(torch.einsum("bk,bki,bkj->bij", lam, U, U), cov, atol=1e-9, rtol=1e-7)
    lam2, U2 = tweedie_cov_lowrank(s, sde, x, t, rank=2, oversample=2, n_iter=30,
                                   generator=torch.Generator().manual_seed(8))
    assert U2.shape == (4, 2, 6)
    torch.testing.assert_close(lam2, ev[:, :2], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_denoise_gaussian_closed_form(sde):
    # x_0 ~ N(mu, tau^2 I), y = x_0 + sigma n: E[x_0 | y] = mu + tau^2 / (tau^2 + sigma^2) (y - mu)
    tau, sigma = 0.8, 0.3
    mu = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64)
    gmm = GaussianMixture([1.0], mu[None], torch.tensor([tau**2], dtype=torch.float64))
    g = torch.Generator().manual_seed(9)
    x0 = gmm.sample(10, generator=g)
    y = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_hat, var = denoise(gmm.score_fn(sde), sde, y, sigma, return_cov_diag=True, exact=True)
    shrink = tau**2 / (tau**2 + sigma**2)
    torch.testing.assert_close(x_hat, mu + shrink * (y - mu), atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(var, torch.full_like(y, shrink * sigma**2), atol=1e-8, rtol=1e-8)
    # per-example noise levels
    sig = torch.linspace(0.1, 0.5, 10, dtype=torch.float64)
    shrink = (tau**2 / (tau**2 + sig**2))[:, None]
    torch.testing.assert_close(denoise(gmm.score_fn(sde), sde, y, sig), mu + shrink * (y - mu), atol=1e-8, rtol=1e-8)


def test_bad_input():
    sde = VPSDE()
    gmm = mixture()
    s = gmm.score_fn(sde)
    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="t must be > 0"):
        tweedie_mean(s, sde, x, 0.0)
    with pytest.raises(ValueError, match="exceeds"):
        denoise(s, sde, x, 1e3)
    with pytest.raises(ValueError, match="sigma"):
        denoise(s, sde, x, -0.1)
    with pytest.raises(ValueError, match="non-finite"):
        denoise(s, sde, torch.full((2, 3), float("nan")), 0.1)
    with pytest.raises(ValueError, match="n_probes"):
        tweedie_cov_diag(s, sde, x, 0.5, n_probes=0)
    with pytest.raises(ValueError, match="rank"):
        tweedie_cov_lowrank(s, sde, x, 0.5, rank=4)
