"""Score-matching objectives, checked on the analytic Gaussian-mixture oracle.

Every comparison uses common random numbers (the same generator seed for both sides), so differences are
measured with far less Monte-Carlo noise than either loss alone; tolerances are 4 standard errors estimated
from the same samples (a false alarm rate below 1e-4 per assertion).
"""

import math

import pytest
import torch

from scorelab.objectives import (
    OBJECTIVES,
    get_objective,
    make_objective,
    noise_ladder,
)
from scorelab.oracle import GaussianMixture
from scorelab.sde import VESDE, VPSDE, SubVPSDE

D64 = torch.float64


def ring(d_extra: int = 0):
    """The weighted ring: 8 Gaussians, std 0.15, radius 4, weights 1..8 (optionally padded with N(0, 1) dims)."""
    ang = torch.arange(8, dtype=D64) * (2 * math.pi / 8)
    means = torch.stack([4 * torch.cos(ang), 4 * torch.sin(ang)], 1)
    var = torch.full((8, 2), 0.15**2, dtype=D64)
    if d_extra:
        means = torch.cat([means, torch.zeros(8, d_extra, dtype=D64)], 1)
        var = torch.cat([var, torch.ones(8, d_extra, dtype=D64)], 1)
    return GaussianMixture(torch.arange(1, 9, dtype=D64), means, var)


class OracleScore:
    """The exact score of p_t, optionally distorted: a * score + shift. Has exactly what objectives need."""

    def __init__(self, gmm, sde, scale=1.0, shift=0.0):
        self.sde, self._f, self.scale, self.shift = sde, gmm.score_fn(sde), scale, shift

    def score(self, x, t):
        return self.scale * self._f(x, t) + self.shift


def data(n, seed=0, gmm=None):
    return (gmm or ring()).sample(n, generator=torch.Generator().manual_seed(seed))


def mean_loss(name, model, x, seed=1, **opts):
    return float(OBJECTIVES[name](model, x, torch.Generator().manual_seed(seed), **opts).detach().mean())


SDES = {"ve": lambda: VESDE(0.01, 10.0), "vp": VPSDE, "subvp": SubVPSDE}


def options(name, gmm, sde):
    return {"esm": {"target_score": gmm.score_fn(sde)}, "ssm": {"n_projections": 4},
            "ssm_vr": {"n_projections": 4}, "dsm": {"sigma": 0.3}}.get(name, {})


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_true_score_beats_perturbed_scores(name, sde_name):
    gmm, sde = ring(), SDES[sde_name]()
    # a perturbation changes the expected loss by a quadratic term and the batch average by a zero-mean linear
    # one too; the sizes (50% in scale, a unit shift) keep the quadratic term well above the batch noise
    x = data(4000)
    opts = options(name, gmm, sde)
    true = mean_loss(name, OracleScore(gmm, sde), x, **opts)
    shift = torch.tensor([0.8, -0.6], dtype=D64)
    for wrong in (OracleScore(gmm, sde, scale=0.5), OracleScore(gmm, sde, scale=1.5),
                  OracleScore(gmm, sde, shift=shift), OracleScore(gmm, sde, shift=-shift)):
        assert mean_loss(name, wrong, x, **opts) > true, name


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
@pytest.mark.parametrize("name", ["ssm", "ssm_vr"])
@torch.no_grad()
def test_sliced_expectation_equals_ism(name, kind):
    # full covariances, so the score Jacobian has off-diagonal entries (else Rademacher probes are exact)
    g = torch.Generator().manual_seed(11)
    A = torch.randn(3, 5, 5, generator=g, dtype=D64)
    gmm = GaussianMixture(torch.ones(3), torch.randn(3, 5, generator=g, dtype=D64),
                          A @ A.transpose(1, 2) / 5 + 0.1 * torch.eye(5, dtype=D64))
    sde = VESDE(0.01, 10.0)
    model = OracleScore(gmm, sde, scale=0.7, shift=0.2)  # not the true score: the identity holds for any s
    x = data(64, gmm=gmm)
    ism = OBJECTIVES["ism"](model, x, perturb=False, t=0.05)
    reps = torch.stack([OBJECTIVES[name](model, x, torch.Generator().manual_seed(s), perturb=False, t=0.05,
                                         n_projections=16, kind=kind) for s in range(30)])  # [R, B]
    # per point: the mean over R * 16 probes estimates ISM's value at that point
    err, se = reps.mean(0) - ism, reps.std(0) / math.sqrt(reps.shape[0])
    assert bool((err.abs() < 4.5 * se + 1e-9).all())
    # and on the batch average, with its own standard error
    batch = reps.mean(1)
    assert float(batch.std()) > 0
    assert abs(float(batch.mean() - ism.mean())) < 4 * float(batch.std()) / math.sqrt(len(batch))


@torch.no_grad()
def test_ism_at_no_noise_is_hyvarinen_on_data():
    # at t = 0 (no perturbation) ISM of the true p_0 score equals -1/2 E|grad log p_0|^2 (integration by parts)
    gmm, sde = ring(), VESDE(0.01, 10.0)
    x = data(20000)
    loss = OBJECTIVES["ism"](OracleScore(gmm, sde), x, t=0.0)
    fisher = 0.5 * (gmm.score(x) ** 2).sum(1)
    diff = loss + fisher
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(len(x))
    ssm = OBJECTIVES["ssm"](OracleScore(gmm, sde), x, torch.Generator().manual_seed(3), t=0.0)
    assert bool(torch.isfinite(ssm).all())


@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp"])
def test_dsm_equals_esm_up_to_a_constant(sde_name):
    # DSM(s) = ESM(s) + C (Vincent 2011): the difference between two score functions is the same under both.
    gmm, sde = ring(), SDES[sde_name]()
    x = data(20000)
    s1 = OracleScore(gmm, sde, scale=1.3)
    s2 = OracleScore(gmm, sde, shift=torch.tensor([1.0, 1.0], dtype=D64))
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731 -- same x_t on both sides
    opts = dict(sigma=0.5)
    dsm = (OBJECTIVES["dsm"](s1, x, g(), weighting="none", **opts)
           - OBJECTIVES["dsm"](s2, x, g(), weighting="none", **opts))
    esm = (OBJECTIVES["esm"](s1, x, g(), target_score=gmm.score_fn(sde), **opts)
           - OBJECTIVES["esm"](s2, x, g(), target_score=gmm.score_fn(sde), **opts))
    gap = dsm - esm  # (s1 - s2) . (z / s + score_t(x_t)): zero mean, by Tweedie
    se = float(gap.std()) / math.sqrt(len(x))
    assert abs(float(gap.mean())) < 4 * se
    assert abs(float(esm.mean())) > 20 * se  # the compared quantity is far above the noise floor
    # the constant itself is not zero: DSM of the true score is E|z/s + score|^2 / 2 > 0 while ESM is 0
    true = OracleScore(gmm, sde)
    assert float(OBJECTIVES["dsm"](true, x, g(), weighting="none", **opts).mean()) > 0.1
    assert float(OBJECTIVES["esm"](true, x, g(), target_score=gmm.score_fn(sde), **opts).abs().max()) < 1e-9


@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp"])
def test_ddpm_is_twice_std2_dsm_on_the_same_draws(sde_name):
    gmm, sde = ring(), SDES[sde_name]()
    x = data(256)
    model = OracleScore(gmm, sde, scale=0.9, shift=0.1)
    ddpm = OBJECTIVES["ddpm"](model, x, torch.Generator().manual_seed(5), continuous=True, reduce="sum")
    dsm = OBJECTIVES["sde_dsm"](model, x, torch.Generator().manual_seed(5), weighting="std2")
    torch.testing.assert_close(ddpm, 2 * dsm, rtol=1e-10, atol=1e-12)


def test_likelihood_weighting_is_g2_over_s2_times_std2():
    gmm, sde = ring(), VPSDE()
    x = data(128)
    model = OracleScore(gmm, sde, scale=1.1)
    a = OBJECTIVES["sde_dsm"](model, x, torch.Generator().manual_seed(2), weighting="likelihood")
    b = OBJECTIVES["sde_dsm"](model, x, torch.Generator().manual_seed(2), weighting="std2")
    t = 1e-5 + (1 - 1e-5) * torch.rand(128, generator=torch.Generator().manual_seed(2), dtype=D64)
    torch.testing.assert_close(a, b * sde.diffusion(t) ** 2 / sde.marginal_std(t) ** 2, rtol=1e-9, atol=1e-12)


def test_ddpm_discrete_times_are_on_the_grid():
    # a fake score that records the times it is asked about
    sde, seen = VPSDE(N=50), []

    class Rec:
        def __init__(self):
            self.sde = sde

        def score(self, x, t):
            seen.append(t)
            return torch.zeros_like(x)

    OBJECTIVES["ddpm"](Rec(), torch.zeros(500, 2, dtype=D64), torch.Generator().manual_seed(0))
    i = seen[0] * 50
    torch.testing.assert_close(i, i.round())
    assert float(i.min()) >= 1 and float(i.max()) <= 50


def test_noise_ladder_is_geometric_and_ncsn_uses_it():
    sde = VESDE(0.01, 50.0)
    lad = noise_ladder(sde, L=10)
    ratios = lad[1:] / lad[:-1]
    torch.testing.assert_close(ratios, ratios[:1].expand(9))
    assert abs(float(lad[-1]) - 0.01) < 1e-12 and abs(float(lad[0]) - 50.0) < 1e-3
    # the rung times of a VE process reproduce the ladder: s(t_i) = sigma_i
    torch.testing.assert_close(sde.marginal_std(sde.t_from_std_ratio(lad)), lad)


def test_dsm_level_by_time_or_by_sigma():
    gmm, sde = ring(), VPSDE()
    x, model = data(64), OracleScore(gmm, sde, scale=0.8)
    t = 0.3
    sigma = float(sde.marginal_std(torch.tensor(t, dtype=D64)) / sde.marginal_scale(torch.tensor(t, dtype=D64)))
    a = OBJECTIVES["dsm"](model, x, torch.Generator().manual_seed(0), t=t)
    b = OBJECTIVES["dsm"](model, x, torch.Generator().manual_seed(0), sigma=sigma)
    torch.testing.assert_close(a, b)
    c = OBJECTIVES["dsm"](model, x, torch.Generator().manual_seed(0), t=0.6)
    assert not torch.allclose(a, c)


def test_reduce_mean_is_sum_over_dims():
    gmm, sde = ring(d_extra=2), VESDE(0.01, 10.0)
    x = data(32, gmm=gmm)
    model = OracleScore(gmm, sde, scale=0.9)
    for name in OBJECTIVES:
        opts = options(name, gmm, sde)
        a = OBJECTIVES[name](model, x, torch.Generator().manual_seed(0), reduce="sum", **opts)
        b = OBJECTIVES[name](model, x, torch.Generator().manual_seed(0), reduce="mean", **opts)
        torch.testing.assert_close(a / 4, b, msg=name)
        assert a.shape == (32,)


def test_objectives_are_deterministic_given_a_generator():
    gmm, sde = ring(), VESDE(0.01, 10.0)
    x, model = data(16), OracleScore(gmm, sde, scale=0.5)
    for name in OBJECTIVES:
        opts = options(name, gmm, sde)
        a = OBJECTIVES[name](model, x, torch.Generator().manual_seed(4), **opts)
        b = OBJECTIVES[name](model, x, torch.Generator().manual_seed(4), **opts)
        assert torch.equal(a, b), name


def test_bad_input():
    gmm, sde = ring(), VESDE()
    x, model = data(8), OracleScore(gmm, sde)
    with pytest.raises(ValueError, match="choose one of.*ddpm"):
        get_objective("sm")
    with pytest.raises(ValueError, match="valid options"):
        make_objective("ssm", n_probes=3)
    fn = make_objective("ssm", n_projections=2, kind="gaussian")
    assert fn(model, x, torch.Generator().manual_seed(0)).shape == (8,)
    with pytest.raises(ValueError, match="reduce"):
        OBJECTIVES["sde_dsm"](model, x, reduce="avg")
    with pytest.raises(ValueError, match="weighting"):
        OBJECTIVES["sde_dsm"](model, x, weighting="snr")
    with pytest.raises(ValueError, match="probe kind"):
        OBJECTIVES["ssm"](model, x, kind="uniform")
    with pytest.raises(TypeError, match=r"\.score"):
        OBJECTIVES["dsm"](gmm.score_fn(sde), x)
    with pytest.raises(TypeError, match="target_score"):
        OBJECTIVES["esm"](model, x, target_score=None)
    with pytest.raises(ValueError, match="sigma"):
        OBJECTIVES["dsm"](model, x, sigma=-1.0)
    with pytest.raises(ValueError, match="not both"):
        OBJECTIVES["dsm"](model, x, sigma=0.1, t=0.2)
    with pytest.raises(ValueError, match="eps"):
        OBJECTIVES["sde_dsm"](model, x, eps=0.0)
