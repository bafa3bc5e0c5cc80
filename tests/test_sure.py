"""SURE against the true MSE with clean data known, and its optimum against DSM and the posterior mean."""

import math

import pytest
import torch

from scorelab.oracle import GaussianMixture
from scorelab.sde import VPSDE
from scorelab.sure import sure, sure_loss
from scorelab.tweedie import denoise


def mixture():
    g = torch.Generator().manual_seed(0)
    means = 1.5 * torch.randn(3, 2, generator=g, dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.3, 0.3, 0.4]), means, torch.full((3,), 0.2, dtype=torch.float64))


@pytest.mark.parametrize("divergence", ["exact", "hutchinson", "finite_difference"])
def test_sure_is_unbiased_for_the_mse(divergence):
    # a fixed nonlinear denoiser: the posterior mean of the mixture at sigma
    sigma, copies = 0.5, 3000
    gmm, sde = mixture(), VPSDE()
    g = torch.Generator().manual_seed(1)
    x = gmm.sample(2, generator=g).repeat_interleave(copies, 0)  # many noise draws per clean point
    y = x + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
    D = lambda v: denoise(gmm.score_fn(sde), sde, v, sigma)  # noqa: E731
    est = sure(D, y, sigma, generator=g, divergence=divergence, n_probes=2).detach()
    mse = (D(y) - x).pow(2).sum(1)
    diff = (est - mse).reshape(2, copies)
    se = diff.std(1) / math.sqrt(copies)
    assert bool((diff.mean(1).abs() < 4 * se).all()), (diff.mean(1), se)
    # and SURE is not trivially the MSE: without the divergence term it is biased
    naive = ((D(y) - y).pow(2).sum(1) - 2 * sigma**2).reshape(2, copies)
    assert bool(((naive - mse.reshape(2, copies)).mean(1).abs() > 10 * se).all())


def test_sure_training_lands_on_the_dsm_and_bayes_optimum():
    # x ~ N(mu, tau^2 I); denoisers D_c(y) = mu + c (y - mu); Bayes optimum c* = tau^2 / (tau^2 + sigma^2).
    # DSM trains the matching score s_c(y) = -(1 - c)(y - mu) / sigma^2 (D_c = y + sigma^2 s_c) with clean data;
    # SURE trains c from the noisy y alone.
    d, tau, sigma, n = 4, 0.7, 0.5, 20000
    g = torch.Generator().manual_seed(2)
    mu = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
    x = mu + tau * torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x + sigma * torch.randn(n, d, generator=g, dtype=torch.float64)

    def fit(loss_fn):
        c = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([c], lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            loss_fn(c).backward()
            opt.step()
        return float(c.detach())

    c_sure = fit(lambda c: sure_loss(lambda v: mu + c * (v - mu), y, sigma, generator=g))
    c_dsm = fit(lambda c: (-(1 - c) * (y - mu) / sigma**2 + (y - x) / sigma**2).pow(2).sum(1).mean())
    c_star = tau**2 / (tau**2 + sigma**2)
    assert abs(c_sure - c_star) < 0.01, (c_sure, c_star)
    assert abs(c_dsm - c_star) < 0.01, (c_dsm, c_star)
    assert abs(c_sure - c_dsm) < 0.01


def test_sure_loss_has_gradients_and_per_example_sigma():
    g = torch.Generator().manual_seed(3)
    y = torch.randn(5, 1, 3, 3, generator=g, dtype=torch.float64)  # image-shaped
    w = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    loss = sure_loss(lambda v: w * torch.tanh(v), y, torch.linspace(0.1, 0.5, 5, dtype=torch.float64), generator=g)
    loss.backward()
    assert w.grad is not None and torch.isfinite(w.grad)
    # exact divergence on the image-shaped tensor agrees with many Hutchinson probes
    D = lambda v: torch.tanh(v) * v  # noqa: E731
    ex = sure(D, y, 0.3, divergence="exact")
    hu = sure(D, y, 0.3, divergence="hutchinson", n_probes=4000, generator=g)
    torch.testing.assert_close(hu, ex, atol=0.05, rtol=0.02)


def test_bad_input():
    y = torch.zeros(3, 2, dtype=torch.float64)
    D = lambda v: 0.5 * v  # noqa: E731
    with pytest.raises(ValueError, match="n_probes"):
        sure(D, y, 0.1, n_probes=0)
    with pytest.raises(ValueError, match="sigma"):
        sure(D, y, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        sure(D, y, torch.ones(4))
    with pytest.raises(ValueError, match="divergence"):
        sure(D, y, 0.1, divergence="bootstrap")
    with pytest.raises(ValueError, match="non-finite"):
        sure(D, torch.full((2, 2), float("nan")), 0.1)
    with pytest.raises(TypeError, match="denoiser"):
        sure(None, y, 0.1)
