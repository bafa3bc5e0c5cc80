"""Sample-vs-truth metrics: zero-ish on exact samples, large on wrong ones, KL against closed form."""

import math

import torch

from scorelab import VPSDE
from scorelab.metrics import fisher_divergence, gaussian_kl, mixture_error
from scorelab.oracle import GaussianMixture

F64 = torch.float64


def ring():
    angles = torch.arange(8, dtype=F64) * (2 * torch.pi / 8)
    means = 4 * torch.stack([angles.cos(), angles.sin()], 1)
    return GaussianMixture(torch.arange(1, 9, dtype=F64), means, torch.full((8,), 0.15**2, dtype=F64))


def test_gaussian_kl_closed_form():
    # 1-D: KL(N(a, s^2) || N(b, r^2)) = log(r/s) + (s^2 + (a-b)^2)/(2 r^2) - 1/2
    a, s, b, r = 0.3, 0.7, -0.2, 1.3
    kl = gaussian_kl(torch.tensor([a], dtype=F64), torch.tensor([[s * s]], dtype=F64),
                     torch.tensor([b], dtype=F64), torch.tensor([[r * r]], dtype=F64))
    ref = math.log(r / s) + (s * s + (a - b) ** 2) / (2 * r * r) - 0.5
    assert abs(float(kl) - ref) < 1e-12
    eye = torch.eye(3, dtype=F64)
    assert abs(float(gaussian_kl(torch.zeros(3, dtype=F64), eye, torch.zeros(3, dtype=F64), eye))) < 1e-12


def test_mixture_error_small_for_exact_samples_large_for_wrong_ones():
    gmm = ring()
    g = torch.Generator().manual_seed(0)
    exact = mixture_error(gmm.sample(4000, generator=g), gmm)
    assert exact.moment_kl < 0.05 and exact.mode_tv < 0.03
    # equal weights instead of 1..8: mode TV sees it
    flat = GaussianMixture(torch.ones(8), gmm.means, gmm.covs)
    wrong_w = mixture_error(flat.sample(4000, generator=g), gmm)
    assert wrong_w.mode_tv > 0.15
    # too wide components: moment KL sees it
    wide = GaussianMixture(gmm.weights, gmm.means, 4 * gmm.covs)
    assert mixture_error(wide.sample(4000, generator=g), gmm).moment_kl > 0.3
    # NaNs are counted, not silently dropped into a component
    x = gmm.sample(100, generator=g)
    x[:10] = float("nan")
    assert mixture_error(x, gmm).nonfinite == 10


def test_fisher_divergence_zero_for_the_true_score_positive_otherwise():
    gmm, sde = ring(), VPSDE()
    g = torch.Generator().manual_seed(1)
    true = gmm.score_fn(sde)
    assert fisher_divergence(true, gmm, sde, n=200, generator=g) < 1e-6
    off = fisher_divergence(lambda x, t: true(x, t) + 1.0, gmm, sde, n=200, generator=g)
    s2 = float((sde.marginal_std(torch.logspace(-3, 0, 10, dtype=F64)) ** 2).mean())
    assert abs(off - s2) < 1e-5  # a constant error of 1 per coordinate gives exactly E_t s(t)^2
