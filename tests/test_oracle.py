"""The Gaussian-mixture oracle against autograd, Tweedie's formulas, brute force and its own samples."""

import math

import pytest
import torch

from scorelab import VESDE, VPSDE, SubVPSDE
from scorelab.oracle import GaussianMixture

F64 = torch.float64
SDES = [VESDE(sigma_min=0.01, sigma_max=10.0), VPSDE(), SubVPSDE()]
TIMES = [0.01, 0.1, 0.5, 0.9]


def random_mixture(d, K, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, d, d, generator=g, dtype=F64) / math.sqrt(d)
    covs = A @ A.transpose(1, 2) + 0.05 * torch.eye(d, dtype=F64)
    means = 3 * torch.randn(K, d, generator=g, dtype=F64)
    weights = torch.rand(K, generator=g, dtype=F64) + 0.2
    return GaussianMixture(weights, means, covs)


def points(gmm, n, seed):
    g = torch.Generator().manual_seed(seed)
    return gmm.sample(n, generator=g) + torch.randn(n, gmm.d, generator=g, dtype=F64)


@pytest.mark.parametrize("d", [1, 2, 16])
@pytest.mark.parametrize("sde", SDES, ids=["ve", "vp", "subvp"])
def test_score_is_the_gradient_of_log_prob(d, sde):
    gmm = random_mixture(d, 4, seed=d)
    for t in TIMES:
        x = points(gmm, 8, seed=1).requires_grad_(True)
        tt = torch.full((8,), t, dtype=F64)
        (grad,) = torch.autograd.grad(gmm.log_prob(x, tt, sde).sum(), x)
        assert torch.allclose(gmm.score(x.detach(), tt, sde), grad, atol=1e-8, rtol=1e-8)


def jacobian_of_score(gmm, x, t, sde):
    f = gmm.score_fn(sde)
    return torch.func.vmap(torch.func.jacrev(lambda xx, tt: f(xx[None], tt[None])[0]))(x, t)


@pytest.mark.parametrize("d", [1, 2, 16])
@pytest.mark.parametrize("sde", SDES, ids=["ve", "vp", "subvp"])
def test_posterior_moments_satisfy_tweedie(d, sde):
    gmm = random_mixture(d, 3, seed=10 + d)
    x = points(gmm, 6, seed=2)
    t = torch.tensor([0.02, 0.1, 0.3, 0.5, 0.7, 0.95], dtype=F64)
    m, s = sde.marginal_scale(t)[:, None], sde.marginal_std(t)[:, None]
    score = gmm.score(x, t, sde)
    # first order: E[x0 | x_t] = (x_t + s^2 score) / m
    assert torch.allclose(gmm.posterior_mean(x, t, sde), (x + s**2 * score) / m, atol=1e-9, rtol=1e-9)
    # second order: Cov[x0 | x_t] = s^2/m^2 (I + s^2 grad score)
    H = jacobian_of_score(gmm, x, t, sde)
    eye = torch.eye(d, dtype=F64)
    ref = (s**2 / m**2)[..., None] * (eye + (s**2)[..., None] * H)
    cov = gmm.posterior_cov(x, t, sde)
    assert torch.allclose(cov, ref, atol=1e-8 * float(ref.abs().max()), rtol=1e-7)
    assert torch.allclose(cov, cov.transpose(1, 2))
    assert bool((torch.linalg.eigvalsh(cov) > -1e-10).all())


def test_log_prob_matches_brute_force_mixture_density():
    gmm = random_mixture(3, 5, seed=3)
    sde = VPSDE()
    x = points(gmm, 10, seed=4)
    t = torch.full((10,), 0.3, dtype=F64)
    m, s = sde.marginal_scale(t[:1]), sde.marginal_std(t[:1])
    dens = torch.zeros(10, dtype=F64)
    for k in range(gmm.K):
        C = m**2 * gmm.covs[k] + s**2 * torch.eye(3, dtype=F64)
        mvn = torch.distributions.MultivariateNormal(m * gmm.means[k], C)
        dens += gmm.weights[k] * mvn.log_prob(x).exp()
    assert torch.allclose(gmm.log_prob(x, t, sde), dens.log(), atol=1e-10)
    # t = None is p_0 itself
    dens0 = sum(gmm.weights[k] * torch.distributions.MultivariateNormal(gmm.means[k], gmm.covs[k])
                .log_prob(x).exp() for k in range(gmm.K))
    assert torch.allclose(gmm.log_prob(x), dens0.log(), atol=1e-10)


def test_samples_of_p_t_follow_the_mixture():
    gmm = GaussianMixture([0.7, 0.3], [[-2.0, 0.0], [3.0, 1.0]], [[0.5, 0.2], [0.1, 1.0]])
    sde = VESDE(sigma_min=0.01, sigma_max=10.0)
    g = torch.Generator().manual_seed(5)
    n = 40000
    x = gmm.sample(n, t=torch.full((n,), 0.4, dtype=F64), sde=sde, generator=g)
    s = float(sde.marginal_std(torch.tensor(0.4, dtype=F64)))
    mean = 0.7 * torch.tensor([-2.0, 0.0]) + 0.3 * torch.tensor([3.0, 1.0])
    assert torch.allclose(x.mean(0), mean.to(F64), atol=0.05)
    # E[score] = 0 and E[|score|^2] = -E[tr grad score] (integration by parts) under p_t
    sc = gmm.score(x[:4000], torch.full((4000,), 0.4, dtype=F64), sde)
    assert float(sc.mean(0).abs().max()) < 0.1
    # variance of p_t along axis 0: mixture variance of p_0 plus s^2
    var0 = 0.7 * 0.5 + 0.3 * 0.1 + 0.7 * 0.3 * 25.0
    assert abs(float(x[:, 0].var()) - (var0 + s**2)) < 0.1


def test_sampling_is_reproducible_and_weights_are_respected():
    gmm = GaussianMixture([0.8, 0.2], [[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0])
    a = gmm.sample(20000, generator=torch.Generator().manual_seed(0))
    b = gmm.sample(20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    share = float((a[:, 0] > 0).double().mean())
    assert abs(share - 0.2) < 0.01
    r = gmm.responsibilities(a)
    assert torch.allclose(r.sum(1), torch.ones(20000, dtype=F64))


def test_stable_in_high_dimension_with_many_components():
    d, K = 256, 64
    gmm = random_mixture(d, K, seed=7)
    sde = VPSDE()
    x = 100 * points(gmm, 4, seed=8)  # far in the tails: naive densities underflow
    t = torch.full((4,), 1e-3, dtype=F64)
    lp, sc = gmm.log_prob(x, t, sde), gmm.score(x, t, sde)
    assert bool(torch.isfinite(lp).all()) and bool(torch.isfinite(sc).all())
    assert float(lp.max()) < -1e3


def test_float32_inputs_get_float32_outputs():
    gmm = random_mixture(2, 3, seed=0)
    x = torch.randn(5, 2)
    out = gmm.score(x, torch.full((5,), 0.5), VPSDE())
    assert out.dtype == torch.float32 and out.shape == x.shape


@pytest.mark.parametrize("args, match", [
    (([0.5, -0.5], [[0.0], [1.0]], [1.0, 1.0]), "non-negative"),
    (([0.5, 0.5], [[0.0], [1.0]], [[[1.0]], [[-1.0]]]), "positive definite"),
    (([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [[[1.0, 0.5], [0.0, 1.0]]] * 2), "symmetric"),
    (([1.0], [[0.0, 0.0]], [[1.0, 2.0, 3.0]]), "covs must have shape"),
    (([1.0, 1.0], [[0.0, 0.0]], [1.0]), "weights must have shape"),
    (([1.0], [[float("nan"), 0.0]], [1.0]), "NaN"),
])
def test_bad_mixtures_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(*args)


def test_bad_queries_are_refused():
    gmm = random_mixture(2, 2, seed=0)
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"shape \[B, 2\]"):
        gmm.score(torch.randn(4, 3), torch.full((4,), 0.5), sde)
    with pytest.raises(ValueError, match="non-finite"):
        gmm.log_prob(torch.tensor([[float("inf"), 0.0]]), torch.tensor([0.5]), sde)
    with pytest.raises(ValueError, match="forward process"):
        gmm.score(torch.randn(4, 2), torch.full((4,), 0.5))
    with pytest.raises(ValueError, match=r"\[0, 1"):
        gmm.score(torch.randn(4, 2), torch.full((4,), 2.0), sde)
