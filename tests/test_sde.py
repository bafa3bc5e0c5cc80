"""Forward processes against closed forms, Monte-Carlo simulation and the DDPM/SMLD kernels."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scorelab import VESDE, VPSDE, SubVPSDE

F64 = torch.float64
SDES = {
    "ve": lambda: VESDE(sigma_min=0.01, sigma_max=5.0),
    "vp": lambda: VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": lambda: SubVPSDE(beta_min=0.1, beta_max=20.0),
    "vp_cosine": lambda: VPSDE(schedule="cosine"),
}


@pytest.fixture(params=list(SDES))
def sde(request):
    return SDES[request.param]()


def test_marginal_prob_matches_euler_maruyama_simulation(sde):
    # Fine Euler-Maruyama of dx = f dt + g dw from x0, compared with N(m x0, s^2) in mean and variance.
    g = torch.Generator().manual_seed(0)
    n, steps, t_end = 20000, 2000, 0.6
    x0 = torch.tensor([[1.5, -0.5]], dtype=F64)
    x = x0.expand(n, 2).clone()
    dt = t_end / steps
    for i in range(steps):
        t = torch.full((n,), i * dt, dtype=F64)
        drift, diff = sde._sde(x, t)
        x = x + drift * dt + diff[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=g, dtype=F64)
    mean, std = sde.marginal_prob(x0, torch.tensor([t_end], dtype=F64))
    se = float(std[0]) / math.sqrt(n)
    assert torch.allclose(x.mean(0), mean[0], atol=5 * se + 2e-3 * float(mean.abs().max()))
    rel_var = x.var(0) / std[0] ** 2
    assert torch.allclose(rel_var, torch.ones(2, dtype=F64), atol=0.04)


def test_marginal_std_solves_the_variance_ode(sde):
    # d Var/dt = 2 a(t) Var + g(t)^2 for the linear SDE, with Var(0) = 0 (starting from a point).
    t = torch.linspace(0.05, 0.95, 19, dtype=F64, requires_grad=True)
    var = sde.marginal_std(t) ** 2
    (dvar,) = torch.autograd.grad(var.sum(), t)
    t = t.detach()
    rhs = 2 * sde.drift_coeff(t) * var.detach() + sde.diffusion(t) ** 2
    assert torch.allclose(dvar, rhs, rtol=1e-8, atol=1e-10)
    # and the mean: d m/dt = a(t) m
    t.requires_grad_(True)
    m = sde.marginal_scale(t) + 0 * t  # VE: constant 1, keep it in the graph
    (dm,) = torch.autograd.grad(m.sum(), t)
    assert torch.allclose(dm, sde.drift_coeff(t.detach()) * m.detach(), rtol=1e-8, atol=1e-12)


def test_log_snr_inverse_and_monotone(sde):
    t = torch.linspace(0.01, 1.0, 50, dtype=F64)
    lam = sde.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all())
    assert torch.allclose(lam, 2 * torch.log(sde.marginal_scale(t) / sde.marginal_std(t)), rtol=1e-9, atol=1e-9)
    assert torch.allclose(sde.t_from_log_snr(lam), t, atol=1e-9)
    sigma = sde.marginal_std(t) / sde.marginal_scale(t)
    assert torch.allclose(sde.t_from_std_ratio(sigma), t, atol=1e-9)


def test_subvp_variance_below_vp_everywhere():
    vp, sub = VPSDE(), SubVPSDE()
    t = torch.linspace(1e-4, 1.0, 1000, dtype=F64)
    assert bool((sub.marginal_std(t) < vp.marginal_std(t)).all())
    assert torch.allclose(sub.marginal_scale(t), vp.marginal_scale(t))


def test_prior_logp_is_a_normalised_density(sde):
    # 1-D: quadrature of exp(prior_logp) over a wide grid is 1.
    c = sde.prior_std
    z = torch.linspace(-12 * c, 12 * c, 20001, dtype=F64)[:, None]
    mass = torch.trapezoid(sde.prior_logp(z).exp(), z[:, 0])
    assert abs(float(mass) - 1) < 1e-8
    # d = 3: the average log-density of prior samples equals minus the Gaussian entropy.
    g = torch.Generator().manual_seed(1)
    zs = sde.prior_sampling((40000, 3), generator=g, dtype=F64)
    entropy = 1.5 * (1 + math.log(2 * math.pi * c**2))
    assert abs(float(sde.prior_logp(zs).mean()) + entropy) < 0.03
    assert abs(float(zs.std()) / c - 1) < 0.01


def test_prior_logp_image_shape():
    sde = VPSDE()
    z = torch.randn(4, 1, 3, 3, dtype=F64)
    ref = -0.5 * z.flatten(1).pow(2).sum(1) - 4.5 * math.log(2 * math.pi)
    assert torch.allclose(sde.prior_logp(z), ref)


def test_ve_discretize_is_the_smld_kernel():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, N=10)
    x = torch.randn(3, 2, dtype=F64)
    for i in range(1, 11):
        t = torch.full((3,), i / 10, dtype=F64)
        f, G = sde.discretize(x, t)
        s_i, s_prev = sde.sigma(t), sde.sigma(t - 0.1)
        assert torch.equal(f, torch.zeros_like(x))
        assert torch.allclose(G**2, s_i**2 - s_prev**2, rtol=1e-10)


def test_vp_discretize_is_the_ddpm_kernel_and_composes_to_the_marginal():
    sde = VPSDE(N=1000)
    betas = sde.discrete_betas()
    x0 = torch.randn(2, 3, dtype=F64)
    # mean and variance of the chain after k steps, propagated through (f, G) exactly
    scale, var = torch.ones(2, dtype=F64), torch.zeros(2, dtype=F64)
    for i in (1, 2, 500, 1000):
        t = torch.full((2,), i / 1000, dtype=F64)
        f, G = sde.discretize(x0, t)
        assert torch.allclose(f, (torch.sqrt(1 - betas[i - 1]) - 1) * x0, rtol=1e-10, atol=1e-14)
        assert torch.allclose(G**2, betas[i - 1].expand(2), rtol=1e-10)
    for i in range(1, 1001):
        b = betas[i - 1]
        scale, var = scale * torch.sqrt(1 - b), (1 - b) * var + b
    t1 = torch.ones(2, dtype=F64)
    assert torch.allclose(scale, sde.marginal_scale(t1), rtol=1e-9)
    assert torch.allclose(var.sqrt(), sde.marginal_std(t1), rtol=1e-9)
    # Ho et al.'s linear betas 1e-4..0.02 are this SDE's chain up to O(1/N): log alpha_bar agrees to 0.1
    # everywhere (it reaches -10 at t = 1); the cosine schedule is far from it.
    ho = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    log_ab = torch.cumsum(torch.log1p(-betas), 0)
    assert float((torch.cumsum(torch.log1p(-ho), 0) - log_ab).abs().max()) < 0.1
    cosine = VPSDE(schedule="cosine").discrete_betas()
    assert float((torch.cumsum(torch.log1p(-cosine), 0) - log_ab).abs().max()) > 1.0


def test_subvp_discretize_is_the_exact_kernel_and_euler_maruyama_to_first_order():
    x = torch.randn(4, 2, dtype=F64)
    t = torch.full((4,), 0.3, dtype=F64)
    drift, g = SubVPSDE().sde(x, t)
    for N in (100, 1000):
        sde = SubVPSDE(N=N)
        f, G = sde.discretize(x, t)
        r, std = sde.transition(t - 1 / N, t)
        assert torch.allclose(f, (r - 1)[:, None] * x) and torch.allclose(G, std)
        # the kernel's mean and variance agree with Euler-Maruyama's up to O(dt^2)
        assert torch.allclose(f, drift / N, rtol=5 / N) and torch.allclose(G**2, g**2 / N, rtol=20 / N)


def test_reverse_probability_flow_of_a_gaussian(sde):
    # For p_0 = N(0, v0 I): p_t = N(0, V(t) I), V = m^2 v0 + s^2, and the probability-flow velocity is
    # x V'(t) / (2 V(t)).
    v0 = 0.7
    score = lambda x, t: -x / (sde.marginal_scale(t) ** 2 * v0 + sde.marginal_std(t) ** 2)[:, None]
    rev = sde.reverse(score, probability_flow=True)
    t = torch.tensor([0.2, 0.5, 0.8], dtype=F64, requires_grad=True)
    V = sde.marginal_scale(t) ** 2 * v0 + sde.marginal_std(t) ** 2
    (dV,) = torch.autograd.grad(V.sum(), t)
    x = torch.randn(3, 2, dtype=F64)
    drift, diff = rev.sde(x, t.detach())
    assert torch.allclose(drift, x * (dV / (2 * V.detach()))[:, None], rtol=1e-8)
    assert torch.equal(diff, torch.zeros(3, dtype=F64))
    # the reverse SDE has drift f - g^2 score and the same diffusion
    rsde = sde.reverse(score)
    d2, g2 = rsde.sde(x, t.detach())
    f, g = sde.sde(x, t.detach())
    assert torch.allclose(d2, f - (g**2)[:, None] * score(x, t.detach()))
    assert torch.equal(g2, g)


@settings(max_examples=25, deadline=None)
@given(dims=st.lists(st.integers(1, 4), min_size=1, max_size=3), batch=st.integers(1, 5),
       name=st.sampled_from(sorted(SDES)), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_shapes_and_dtypes_for_any_dims(dims, batch, name, dtype):
    sde = SDES[name]()
    x = torch.randn(batch, *dims, dtype=dtype)
    t = torch.rand(batch, dtype=dtype) * 0.9 + 0.05
    mean, std = sde.marginal_prob(x, t)
    drift, g = sde.sde(x, t)
    f, G = sde.discretize(x, t)
    assert mean.shape == drift.shape == f.shape == x.shape
    assert std.shape == g.shape == G.shape == (batch,)
    assert mean.dtype == std.dtype == drift.dtype == dtype
    z = sde.prior_sampling((batch, *dims), generator=torch.Generator().manual_seed(0), dtype=dtype)
    assert z.shape == x.shape and sde.prior_logp(z).shape == (batch,)


def test_prior_sampling_is_reproducible():
    sde = VESDE()
    a = sde.prior_sampling((5, 3), generator=torch.Generator().manual_seed(7))
    b = sde.prior_sampling((5, 3), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("make, match", [
    (lambda: VESDE(sigma_min=1.0, sigma_max=1.0), "sigma_min < sigma_max"),
    (lambda: VESDE(sigma_min=2.0, sigma_max=1.0), "sigma_min < sigma_max"),
    (lambda: VESDE(sigma_min=-1.0), "positive"),
    (lambda: VPSDE(beta_min=5.0, beta_max=1.0), "beta_min"),
    (lambda: VPSDE(beta_min=1e-4, beta_max=1e3), "no sampler resolves it"),
    (lambda: VPSDE(schedule="quadratic"), "linear"),
    (lambda: VPSDE(N=0), "N"),
])
def test_impossible_settings_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_time_and_data_are_refused():
    sde = VPSDE()
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        sde.marginal_prob(x, torch.rand(3))
    with pytest.raises(ValueError, match=r"\[0, 1"):
        sde.marginal_prob(x, torch.full((4,), 1.5))
    with pytest.raises(ValueError, match=r"\[0, 1"):
        sde.sde(x, torch.full((4,), -0.1))
    with pytest.raises(ValueError, match="non-finite"):
        sde.marginal_prob(torch.tensor([[0.0, float("nan")]]), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        sde.sde(x, torch.full((4,), float("nan")))
    with pytest.raises(TypeError, match="floating"):
        sde.sde(torch.ones(4, 2, dtype=torch.long), 0.5)
