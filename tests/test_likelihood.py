"""log_likelihood and bits/dim against exact densities of Gaussian mixtures (float64)."""

import math

import pytest
import torch

from scorelab.likelihood import bits_per_dim, dequantize, log_likelihood, nll_to_bpd
from scorelab.oracle import GaussianMixture
from scorelab.sde import VESDE, VPSDE, SubVPSDE

EPS = 1e-5
SDES = {"ve": lambda: VESDE(0.01, 50.0), "vp": lambda: VPSDE(), "subvp": lambda: SubVPSDE()}


def mixture(d, seed, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    K = 3
    means = spread * torch.randn(K, d, generator=g, dtype=torch.float64)
    A = torch.randn(K, d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    covs = 0.3 * A @ A.transpose(1, 2) + 0.05 * torch.eye(d, dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.2, 0.3, 0.5]), means, covs)


@pytest.mark.parametrize("d", [2, 16])
@pytest.mark.parametrize("name", list(SDES))
def test_matches_exact_log_density(name, d):
    sde = SDES[name]()
    gmm = mixture(d, seed=d)
    x = gmm.sample(6, generator=torch.Generator().manual_seed(1))
    exact = gmm.log_prob(x, EPS, sde)
    # with the exact log p_T as prior the only error left is the solver's
    res = log_likelihood(gmm.score_fn(sde), sde, x, eps=EPS, prior=lambda z: gmm.log_prob(z, 1.0, sde))
    err = (-res.nll - exact).abs().mean() / d
    assert err < 1e-3, err
    assert res.nll.shape == (6,) and res.z.shape == x.shape and res.nfe > 10
    torch.testing.assert_close(res.nll, -(res.prior_logp + res.delta_logp))


@pytest.mark.parametrize("d", [2, 16])
@pytest.mark.parametrize("name", list(SDES))
def test_default_prior_within_a_hundredth_nat_per_dim(name, d):
    # The SDE prior N(0, prior_std^2) differs from the true p_T by O(m(T) |mu| |z| / prior_std^2) pointwise:
    # a mixture near the origin keeps that below the 0.01 nats/dim asked for. Same solve, same score.
    sde = SDES[name]()
    gmm = mixture(d, seed=10 + d, spread=0.5)
    x = gmm.sample(6, generator=torch.Generator().manual_seed(2))
    res = log_likelihood(gmm.score_fn(sde), sde, x, eps=EPS)
    err = (-res.nll - gmm.log_prob(x, EPS, sde)).abs().mean() / d
    assert err < 0.01, err
    # and the gap to the exact-prior answer is exactly the prior mismatch at the same latent
    mismatch = sde.prior_logp(res.z) - gmm.log_prob(res.z, 1.0, sde)
    torch.testing.assert_close(-res.nll - gmm.log_prob(x, EPS, sde), mismatch, atol=2e-3 * d, rtol=0)


def test_hutchinson_is_unbiased_with_fixed_probes():
    sde = VPSDE()
    gmm = mixture(8, seed=3)
    x = gmm.sample(1, generator=torch.Generator().manual_seed(3)).expand(48, 8).contiguous()
    kw = dict(eps=EPS, prior=lambda z: gmm.log_prob(z, 1.0, sde), rtol=1e-4, atol=1e-4)
    exact = log_likelihood(gmm.score_fn(sde), sde, x[:1], **kw).nll
    est = log_likelihood(gmm.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(0),
                         divergence="hutchinson", n_probes=2, **kw).nll
    se = est.std() / math.sqrt(len(est))
    assert est.std() > 0  # the probes differ between examples
    assert (est.mean() - exact).abs() < 4 * se + 1e-3
    # same seed, same numbers
    again = log_likelihood(gmm.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(0),
                           divergence="hutchinson", n_probes=2, **kw).nll
    torch.testing.assert_close(est, again)
    gauss = log_likelihood(gmm.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(0),
                           divergence="hutchinson", probe="gaussian", n_probes=2, **kw).nll
    assert (gauss.mean() - exact).abs() < 4 * gauss.std() / math.sqrt(len(gauss)) + 1e-3


def test_fixed_step_solvers_converge_and_count():
    sde = VPSDE()
    gmm = mixture(2, seed=4)
    x = gmm.sample(4, generator=torch.Generator().manual_seed(4))
    exact = gmm.log_prob(x, 1e-3, sde)
    kw = dict(eps=1e-3, prior=lambda z: gmm.log_prob(z, 1.0, sde))
    errs = {}
    for steps in (20, 80):
        r = log_likelihood(gmm.score_fn(sde), sde, x, solver="euler", steps=steps, **kw)
        assert r.nfe == steps  # one score call per Euler step
        errs[steps] = float((-r.nll - exact).abs().mean())
    assert errs[80] < errs[20] / 2.5  # first order: about 4x smaller
    r = log_likelihood(gmm.score_fn(sde), sde, x, solver="rk4", steps=40, **kw)
    assert r.nfe == 160
    assert float((-r.nll - exact).abs().mean()) < 1e-3
    r = log_likelihood(gmm.score_fn(sde), sde, x, solver="heun", steps=40, **kw)
    assert r.nfe == 80


def test_float32_input_and_float64_option():
    sde = VPSDE()
    gmm = mixture(2, seed=5)
    x = gmm.sample(3, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    r = log_likelihood(gmm.score_fn(sde), sde, x, dtype=torch.float64, rtol=1e-4, atol=1e-4)
    assert r.nll.dtype == torch.float64
    r32 = log_likelihood(gmm.score_fn(sde), sde, x, rtol=1e-4, atol=1e-4)
    assert r32.nll.dtype == torch.float32
    torch.testing.assert_close(r32.nll.double(), r.nll, atol=1e-3, rtol=0)


def test_bad_input():
    sde = VPSDE()
    gmm = mixture(2, seed=6)
    s = gmm.score_fn(sde)
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="shape"):
        log_likelihood(s, sde, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-finite"):
        log_likelihood(s, sde, torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="n_probes"):
        log_likelihood(s, sde, x, divergence="hutchinson", n_probes=0)
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(s, sde, x, divergence="approx")
    with pytest.raises(ValueError, match="solver"):
        log_likelihood(s, sde, x, solver="leapfrog")
    with pytest.raises(ValueError, match="steps"):
        log_likelihood(s, sde, x, solver="euler")
    with pytest.raises(ValueError, match="probe"):
        log_likelihood(s, sde, x, divergence="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match="eps"):
        log_likelihood(s, sde, x, eps=0.0)
    with pytest.raises(TypeError):
        log_likelihood(s, sde, torch.zeros(3, 2, dtype=torch.long))


# ---- bits per dimension ----------------------------------------------------------------------------------

def discretised_gaussian_bits(x, bits, a, b, mu, std):
    """-log2 P(x) / D for the Gaussian N(mu, std^2) in model space, integrated over each cell exactly."""
    L = 2**bits
    lo, hi = a * x / L + b, a * (x + 1) / L + b
    if a < 0:
        lo, hi = hi, lo
    normal = torch.distributions.Normal(torch.as_tensor(mu, dtype=torch.float64), std)
    p = normal.cdf(hi) - normal.cdf(lo)
    return -torch.log2(p).mean(1)


class Affine:  # stands in for scorelab.data.AffineScaler: any object with an affine forward
    def __init__(self, scale, shift):
        self.scale, self.shift = scale, shift

    def forward(self, u):
        return self.scale * u + self.shift

    def inverse(self, y):
        return (y - self.shift) / self.scale


def dequantised_gaussian_bound(x, bits, a, b, mu, std):
    """E_U[-log p_y(a (x + U) / L + b)] in closed form for p_y = N(mu, std^2 I), converted to bits/dim:
    over a cell of width h = |a| / L centred at c, E[(y - mu)^2] = (c - mu)^2 + h^2 / 12."""
    L, D = 2**bits, x.shape[1]
    c, h = a * (x + 0.5) / L + b, abs(a) / L
    nll = (((c - mu) ** 2 + h * h / 12) / (2 * std**2) + math.log(std) + 0.5 * math.log(2 * math.pi)).sum(1)
    return (nll - D * math.log(abs(a)) + D * math.log(L)) / (D * math.log(2))


@pytest.mark.parametrize("bits,scaler", [(8, (2.0, -1.0)), (8, Affine(1.0, 0.0)), (5, Affine(-3.0, 1.0))])
def test_bits_per_dim_matches_discretised_gaussian(bits, scaler):
    a, b = (scaler if isinstance(scaler, tuple) else (scaler.scale, scaler.shift))
    D, copies = 4, 24
    mu = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64) * abs(a) / 2 + b + a / 2
    std = 0.3 * abs(a) / 2
    gmm = GaussianMixture([1.0], mu[None], torch.full((1, D), std**2, dtype=torch.float64))
    sde = VPSDE()
    g = torch.Generator().manual_seed(7)
    L = 2**bits
    y0 = gmm.sample(3, generator=g)
    x = torch.clamp(torch.floor((y0 - b) / a * L), 0, L - 1)  # quantised draws of the model itself
    xs = x.repeat_interleave(copies, 0)  # many dequantisation draws per point: the bound is an average
    res = bits_per_dim(gmm.score_fn(sde), sde, xs, bits=bits, scaler=scaler, generator=g, rtol=1e-4, atol=1e-4,
                       prior=lambda z: gmm.log_prob(z, 1.0, sde))
    per_point = res.bpd.reshape(3, copies)
    se = per_point.std(1) / math.sqrt(copies)
    bound = dequantised_gaussian_bound(x, bits, a, b, mu, std)
    assert bool(((per_point.mean(1) - bound).abs() < 4 * se + 1e-4).all()), (per_point.mean(1), bound, se)
    # and the bound sits just above the exact -log2 P(x) / D: the Jensen gap is O(h^2) for cells of width h
    exact = discretised_gaussian_bits(x, bits, a, b, mu, std)
    assert bool((bound >= exact).all()) and float((bound - exact).max()) < 5e-3 * 2 ** (8 - bits)
    assert res.bpd.shape == (3 * copies,) and res.nfe > 0


def test_uniform_data_has_bits_bits_per_dim():
    # A model whose density is uniform on [-1, 1)^D gives P(x) = L^-D for every x: bpd = bits exactly,
    # whatever the model-space log-density is (log 2^-D), through the Jacobian alone.
    D, bits = 3, 5
    x = torch.randint(0, 2**bits, (4, D), generator=torch.Generator().manual_seed(0)).double()
    y, log_jac = dequantize(x, bits, (2.0, -1.0), torch.Generator().manual_seed(1))
    nll_uniform = torch.full((4,), D * math.log(2.0), dtype=torch.float64)
    torch.testing.assert_close(nll_to_bpd(nll_uniform, log_jac, D), torch.full((4,), float(bits),
                                                                                dtype=torch.float64))
    assert bool((y >= -1).all() & (y < 1).all())


def test_reference_offset():
    # score_sde adds 7 - inverse_scaler(-1) bits: 7 for data centred to [-1, 1], 8 for [0, 1]. Both are
    # -log2 of the Jacobian of v = x + U -> y, i.e. log2(256) - log2(a).
    x = torch.zeros(2, 3, dtype=torch.float64)
    for a, b, offset in ((2.0, -1.0, 7.0), (1.0, 0.0, 8.0)):
        _, log_jac = dequantize(x, 8, (a, b))
        torch.testing.assert_close(-log_jac / (3 * math.log(2)), torch.full((2,), offset, dtype=torch.float64))


def test_bits_per_dim_bad_input():
    sde = VPSDE()
    s = lambda x, t: -x  # noqa: E731
    with pytest.raises(ValueError, match="lie in"):
        bits_per_dim(s, sde, torch.tensor([[0.0, 256.0]]), bits=8)
    with pytest.raises(ValueError, match="lie in"):
        bits_per_dim(s, sde, torch.tensor([[-1.0, 3.0]]), bits=8)
    with pytest.raises(ValueError, match="integers"):
        bits_per_dim(s, sde, torch.tensor([[0.5, 0.25]]), bits=8)
    with pytest.raises(ValueError, match="non-finite|NaN"):
        bits_per_dim(s, sde, torch.tensor([[float("nan"), 1.0]]), bits=8)
    with pytest.raises(ValueError, match="bits"):
        bits_per_dim(s, sde, torch.tensor([[0.0, 1.0]]), bits=0)
    with pytest.raises(ValueError, match="shape"):
        bits_per_dim(s, sde, torch.tensor([0.0, 1.0]), bits=8)
    with pytest.raises(TypeError, match="scaler"):
        bits_per_dim(s, sde, torch.tensor([[0.0, 1.0]]), bits=8, scaler="minus-one-to-one")
    with pytest.raises(ValueError, match="affine"):
        square = type("Square", (), {"forward": lambda self, u: u * u})()
        bits_per_dim(s, sde, torch.tensor([[0.0, 1.0]]), bits=8, scaler=square)
