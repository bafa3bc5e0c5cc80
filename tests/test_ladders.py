"""Noise ladders: geometric sigmas, the rules of Song & Ermon 2020, DDPM betas and their ties to the SDEs."""

import math

import pytest
import torch

from scorelab.ladders import (
    clipped_cosine_betas,
    geometric_sigmas,
    ladder_of,
    ladder_ratio,
    ladder_times,
    langevin_step_size,
    linear_betas,
    ncsn_ladder,
    noise_ratio,
    num_noise_levels,
    sigma_max_from_data,
    vesde_for_ladder,
    vpsde_for_betas,
)
from scorelab.sde import VESDE, VPSDE


def overlap(gamma, D):
    """Technique 2's left-hand side, written with torch's normal CDF (independent of the module's erf)."""
    c = math.sqrt(2 * D) * (gamma - 1)
    g = torch.tensor(gamma, dtype=torch.float64)
    return float(torch.special.ndtr(c + 3 * g) - torch.special.ndtr(c - 3 * g))


def technique4(eps, sigmas, T):
    """Proposition 3 of Song & Ermon 2020 exactly as printed (no simplification)."""
    sL2 = float(sigmas[-1]) ** 2
    gamma = float(sigmas[0] / sigmas[1])
    q = 2 * eps / (sL2 - sL2 * (1 - eps / sL2) ** 2)
    return (1 - eps / sL2) ** (2 * T) * (gamma**2 - q) + q


def test_geometric_sigmas_constant_ratio_and_end_points():
    s = geometric_sigmas(50.0, 0.01, 232)
    assert s.dtype == torch.float64 and s.shape == (232,)
    assert float(s[0]) == 50.0 and float(s[-1]) == 0.01
    r = s[:-1] / s[1:]
    assert torch.allclose(r, torch.full_like(r, (50 / 0.01) ** (1 / 231)), rtol=1e-12, atol=0)
    assert ladder_ratio(s) == pytest.approx((50 / 0.01) ** (1 / 231), rel=1e-12)


@pytest.mark.parametrize("args", [(0.01, 50.0, 10), (1.0, 1.0, 10), (10.0, 1.0, 1), (10.0, -1.0, 5),
                                  (10.0, 1.0, 2.5), (float("nan"), 1.0, 5)])
def test_geometric_sigmas_rejects_bad_input(args):
    with pytest.raises(ValueError):
        geometric_sigmas(*args)


def test_ladder_ratio_refuses_non_geometric():
    with pytest.raises(ValueError, match="geometric"):
        ladder_ratio(torch.tensor([4.0, 2.0, 1.5]))
    with pytest.raises(ValueError, match="decreasing"):
        ladder_ratio(torch.tensor([1.0, 2.0, 4.0]))


def test_sigma_max_from_data_is_the_brute_force_maximum_distance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(61, 3, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 5.0]) + 100.0
    flat = x.reshape(61, -1)
    brute = max(float((flat[i] - flat[j]).norm()) for i in range(61) for j in range(61))
    assert sigma_max_from_data(x, chunk=7) == pytest.approx(brute, rel=1e-10)
    assert sigma_max_from_data(x) == pytest.approx(brute, rel=1e-10)
    sub = sigma_max_from_data(x, max_points=20, generator=torch.Generator().manual_seed(1))
    assert sub <= brute * (1 + 1e-12)
    with pytest.raises(ValueError):
        sigma_max_from_data(x[:1])


@pytest.mark.parametrize("D", [5, 64, 784, 3072])
def test_technique2_gamma_solves_the_half_overlap_equation(D):
    gamma = noise_ratio(D)
    assert gamma > 1
    assert overlap(gamma, D) == pytest.approx(0.5, abs=1e-9)
    # the first crossing: every smaller ratio keeps more than half the mass in the next level's shell
    assert all(overlap(1 + f * (gamma - 1), D) > 0.5 for f in (0.1, 0.5, 0.9, 0.99))


def test_technique2_number_of_levels_is_the_smallest_with_ratio_at_most_gamma():
    D, smax, smin = 3072, 50.0, 0.01
    gamma, L = noise_ratio(D), num_noise_levels(smax, smin, D)
    # L = ceil(log(smax/smin) / log gamma) + 1: L - 1 gaps of ratio <= gamma, one gap fewer would exceed it
    assert (smax / smin) ** (1 / (L - 1)) <= gamma < (smax / smin) ** (1 / (L - 2))


def test_technique2_refuses_low_dimensional_data():
    with pytest.raises(ValueError, match="D = 2"):
        noise_ratio(2)


def test_ncsn_ladder_combines_techniques_1_and_2():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(200, 16, generator=g)
    s = ncsn_ladder(x, sigma_min=0.01)
    assert float(s[0]) == pytest.approx(sigma_max_from_data(x), rel=1e-12)
    assert float(s[-1]) == pytest.approx(0.01)
    assert s.numel() == num_noise_levels(float(s[0]), 0.01, 16)
    assert ladder_ratio(s) <= noise_ratio(16)


@pytest.mark.parametrize("L,T", [(232, 5), (10, 1), (50, 100), (2, 3)])
def test_technique4_step_size_brings_the_variance_ratio_closest_to_one(L, T):
    sig = geometric_sigmas(50.0, 0.01, L)
    eps = langevin_step_size(sig, T)
    sL2 = float(sig[-1]) ** 2
    assert 0 < eps < sL2
    best = abs(technique4(eps, sig, T) - 1)
    grid = torch.logspace(-9, -1e-6, 4001, dtype=torch.float64) * sL2  # independent brute-force search
    brute = min(abs(technique4(float(e), sig, T) - 1) for e in grid)
    assert best <= brute + 1e-12
    for f in (0.98, 1.02):  # a local minimum of |ratio - 1| (or a root, where |.| is 0)
        assert best <= abs(technique4(f * eps, sig, T) - 1)
    if brute < 1e-3:  # the ratio crosses 1: the step size is the root
        assert best < 1e-8


@pytest.mark.parametrize("smax,L,eps_paper", [(50.0, 232, 6.2e-6), (90.0, 500, 3.3e-6)])
def test_technique4_reproduces_the_papers_step_sizes(smax, L, eps_paper):
    # Song & Ermon 2020, Table of hyper-parameters: CIFAR-10 (sigma_1 = 50, L = 232) and CelebA 64
    # (sigma_1 = 90, L = 500), sigma_L = 0.01, T = 5.
    eps = langevin_step_size(geometric_sigmas(smax, 0.01, L), 5)
    assert eps == pytest.approx(eps_paper, abs=0.5e-7)  # the paper prints two significant digits


def test_linear_betas_match_ddpm():
    b = linear_betas()
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert float(b[0]) == pytest.approx(1e-4) and float(b[-1]) == pytest.approx(0.02)
    assert torch.allclose(torch.diff(b), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))


def test_linear_betas_converge_to_the_vp_sde_chain_at_first_order():
    # DDPM's betas are beta(t) / N sampled at t = (i - 1)/(N - 1); the chain that reproduces the VP SDE's
    # marginals has beta_i = 1 - exp(-int_{(i-1)/N}^{i/N} beta) (midpoint, and 1 - e^-x instead of x). The two
    # agree only to O(1/N) (about 9% relative at beta_1 for N = 1000), so measure the order, not a tolerance.
    sde = VPSDE(0.1, 20.0)

    def err(N, beta_max=20.0):
        return float((N * linear_betas(N, 0.1 / N, beta_max / N) - N * sde.discrete_betas(N)).abs().max())

    e1, e4 = err(1000), err(4000)
    assert e1 < 0.25
    assert 3.6 < e1 / e4 < 4.4
    assert err(4000, beta_max=21.0) > 0.5  # another schedule does not converge to this SDE
    mapped = vpsde_for_betas(linear_betas())
    assert mapped.beta_min == pytest.approx(0.1) and mapped.beta_max == pytest.approx(20.0) and mapped.N == 1000


def test_cosine_betas_are_the_cosine_vp_sde_chain_up_to_its_time_truncation():
    # VPSDE(schedule="cosine") uses alpha_bar(t) = f(t_max t) / f(0) with t_max = 0.9946, so the discrete chain
    # of Nichol & Dhariwal (alpha_bar_i = f(i/N) / f(0)) is the SDE's marginal at t = i / (N t_max), for every
    # i <= N t_max. Beyond that (the last 5 steps) the discrete betas run to 1 and are clipped at 0.999.
    N, t_max = 1000, 0.9946
    b = clipped_cosine_betas(N)
    sde = VPSDE(schedule="cosine")
    abar = torch.cumprod(1 - b, 0)
    i = torch.arange(1, N + 1, dtype=torch.float64)
    t = i / (N * t_max)
    keep = t <= 1
    assert int(keep.sum()) == 994
    assert torch.allclose(abar[keep], sde.alpha_bar(t[keep]), rtol=1e-10, atol=0)
    assert float(b[-1]) == 0.999 and bool((b[:-1] < 0.999).all())
    # without the time rescaling they do not agree (so the check above has teeth)
    assert not torch.allclose(abar[:994], sde.alpha_bar(i[:994] / N), rtol=1e-3)


def test_beta_schedules_reject_bad_input():
    for call in (lambda: linear_betas(0), lambda: linear_betas(10, 0.1, 0.01), lambda: clipped_cosine_betas(10, s=-1),
                 lambda: clipped_cosine_betas(10, max_beta=0.0), lambda: vpsde_for_betas(clipped_cosine_betas(100))):
        with pytest.raises(ValueError):
            call()


@pytest.mark.parametrize("L", [2, 10, 232])
def test_vesde_for_ladder_reproduces_the_ladder(L):
    s = geometric_sigmas(50.0, 0.01, L)
    sde = vesde_for_ladder(s)
    assert isinstance(sde, VESDE) and sde.N == L
    assert torch.allclose(sde.sigma(ladder_times(L)), s, rtol=1e-12, atol=0)
    assert torch.allclose(ladder_of(VESDE(0.01, 50.0), L), s, rtol=1e-12, atol=0)
    assert torch.allclose(ladder_of(sde, L), s, rtol=1e-12, atol=0)


def test_vesde_for_ladder_refuses_non_geometric_ladders():
    with pytest.raises(ValueError, match="geometric"):
        vesde_for_ladder(torch.tensor([10.0, 3.0, 1.0]))
