"""Where a short grid starts and x_T's law there: the data's fit read off the score (samplers/scale.py,
``sigma_max="auto"``)."""

from __future__ import annotations

import pytest
import torch

from scorelab.oracle import GaussianMixture
from scorelab.samplers import sample, scale
from scorelab.sde import VESDE, VPSDE

F64 = torch.float64


def mixture(width: float) -> GaussianMixture:
    """3-D, 4 components with means width * (+-1, 0, 0), (0, +-1, 0) and covariances width^2 diag(0.1, 0.2, 0.3):
    per-dimension rms std width * sqrt((0.5 + 0.5 + 0 + 0.6) / 3)."""
    means = width * torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=F64)
    covs = width**2 * torch.diag(torch.tensor([0.1, 0.2, 0.3], dtype=F64)).expand(4, 3, 3)
    return GaussianMixture(torch.ones(4, dtype=F64), means, covs)


@pytest.mark.parametrize("sde", [VESDE(0.002, 80.0), VPSDE(0.1, 20.0)], ids=["ve", "vp"])
@pytest.mark.parametrize("width", [0.3, 2.0, 8.0])
def test_the_fits_std_is_the_mixtures_spread(sde, width):
    g = mixture(width)
    true = width * ((1.0 + 0.6) / 3) ** 0.5
    fit = scale.data_fit(g.score_fn(sde), sde, (3,), torch.Generator().manual_seed(0), n=4000)
    assert abs(fit.std / true - 1) < 0.08, (fit.std, true)


def start(g: GaussianMixture, sde, seed: int = 0, n: int | None = None) -> float:
    return scale.choose_start(g.score_fn(sde), sde, (g.d,), torch.Generator().manual_seed(seed), n=n)[0]


def gaussian(std: float, d: int = 3) -> GaussianMixture:
    return GaussianMixture(torch.ones(1, dtype=F64), torch.full((1, d), 2.0, dtype=F64), torch.full((1,), std**2))


def test_the_start_on_gaussian_data_is_the_floor_or_a_multiple_of_the_std_and_stays_below_the_top():
    """Gaussian data are their own fit at every level (KL 0): the start is max(FLOOR, PER_STD std), at most
    sigma(T)."""
    ve = VESDE(0.002, 80.0)
    assert start(gaussian(0.5), ve) == scale.FLOOR
    assert start(gaussian(4.0), ve) == pytest.approx(scale.PER_STD * 4.0, rel=0.06)
    assert start(gaussian(60.0), ve) == pytest.approx(80.0)


def exact_kl(g: GaussianMixture, fit, sde, sigma: float, n: int = 40000) -> float:
    """KL(p_sigma || N(mean, (std^2 + sigma^2) I)) by Monte Carlo with the mixture's exact log-density (VE)."""
    from scorelab.samplers.grids import end_time

    t = torch.full((n,), end_time(sde, sigma), dtype=F64)
    x = g.sample(n, t[0], sde, generator=torch.Generator().manual_seed(3)).double()
    w = fit.std**2 + sigma**2
    lq = -0.5 * (x - fit.mean.double()).pow(2).sum(1) / w - 0.5 * g.d * torch.log(torch.tensor(2 * torch.pi * w))
    return float((g.log_prob(x, t, sde) - lq).mean())


@pytest.mark.parametrize("sde", [VESDE(0.002, 80.0), VPSDE(0.1, 20.0)], ids=["ve", "vp"])
def test_gaussian_level_is_where_the_noised_data_are_tau_from_their_fit(sde):
    """gaussian_level integrates de Bruijn's identity down the levels: on an anisotropic Gaussian (closed-form KL
    against the isotropic fit) and on a mixture of four modes (exact log-density, Monte Carlo), the level it returns
    is where KL(p_sigma || q_sigma) reaches TAU, to within the ladder's resolution and the estimate's error."""
    c = torch.tensor([0.25, 1.0, 4.0, 16.0], dtype=F64)
    aniso = GaussianMixture(torch.ones(1, dtype=F64), torch.zeros(1, 4, dtype=F64), torch.diag(c)[None])
    for g in (aniso, mixture(4.0)):
        sc = g.score_fn(sde)
        fit = scale.data_fit(sc, sde, (g.d,), torch.Generator().manual_seed(0), n=4000)
        level = scale.gaussian_level(sc, sde, fit, (g.d,), tau=scale.TAU, floor=1.0,
                                     generator=torch.Generator().manual_seed(1), n=4000)
        assert 1.0 < level < 40.0
        if g is aniso:
            w = fit.std**2 + level**2
            kl = float(0.5 * ((c + level**2) / w - 1 - torch.log((c + level**2) / w)).sum())
        else:
            kl = exact_kl(g, fit, VESDE(0.002, 80.0), level)
        assert 0.6 * scale.TAU < kl < 1.6 * scale.TAU, (level, kl)


def test_the_start_rises_above_the_floor_where_the_modes_part():
    """Two modes at -+6 along one axis of 16 dimensions: the rms std (1.5) is small, their noised law is far from
    Gaussian at max(FLOOR, PER_STD std); the start is higher, where it is within TAU of its fit."""
    ve = VESDE(0.002, 80.0)
    means = torch.zeros(2, 16, dtype=F64)
    means[:, 0] = torch.tensor([-6.0, 6.0], dtype=F64)
    g = GaussianMixture(torch.ones(2, dtype=F64), means, torch.full((2,), 0.1, dtype=F64))
    fit = scale.data_fit(g.score_fn(ve), ve, (16,), torch.Generator().manual_seed(0))
    level = start(g, ve)
    assert level > 1.05 * max(scale.FLOOR, scale.PER_STD * fit.std)
    assert exact_kl(g, fit, ve, level) < 1.6 * scale.TAU


@pytest.mark.parametrize("sde", [VESDE(0.002, 80.0), VPSDE(0.1, 20.0)], ids=["ve", "vp"])
def test_the_mean_x_T_is_drawn_around_is_read_again_at_the_start(sde):
    """A score wrong only at the top of the process (there it is the score of the data moved to the origin, as a
    network never trained that high may be) gives the fit a mean of 0 at t = T; the mean read again at the start,
    where the score is right, is the data's."""
    shift = torch.tensor([3.0, -2.0, 1.0], dtype=F64)
    centred = mixture(1.0)
    data = GaussianMixture(centred.weights, centred.means + shift, centred.covs)
    right, wrong = data.score_fn(sde), centred.score_fn(sde)

    def score(x, t):
        return torch.where((t >= sde.T)[:, None], wrong(x, t), right(x, t))

    g = torch.Generator().manual_seed(0)
    assert float(scale.data_fit(score, sde, (3,), g, n=4000).mean.norm()) < 0.2
    level, fit = scale.choose_start(score, sde, (3,), g, n=4000)
    assert level < float(sde.marginal_std(torch.tensor(sde.T)) / sde.marginal_scale(torch.tensor(sde.T)))
    assert torch.allclose(fit.mean, shift, atol=0.2), fit.mean


def test_auto_is_the_chosen_start_with_x_T_from_the_fit_draw_for_draw_and_leaves_the_stream():
    from scorelab.samplers.grids import end_time

    ve = VESDE(0.002, 80.0)
    sc = mixture(8.0).score_fn(ve)
    level, fit = scale.choose_start(sc, ve, (3,), torch.Generator().manual_seed(4))
    opts = dict(order=2, sigma_min=0.01)
    gen = torch.Generator().manual_seed(4)
    a = sample(sc, ve, (300, 3), "ipndm", 5, generator=gen, sigma_max="auto", **opts).x
    x_T = fit.draw(ve, end_time(ve, level), (300, 3), torch.Generator().manual_seed(4))
    b = sample(sc, ve, None, "ipndm", 5, x_init=x_T, sigma_max=level, **opts).x
    assert torch.equal(a, b)
    after = torch.Generator().manual_seed(4)
    torch.randn((300, 3), generator=after)
    assert torch.equal(gen.get_state(), after.get_state())  # the reading drew from a copy; x_T from the stream
    with pytest.raises(ValueError, match="sigma_max must be a number > 0 or 'auto'"):
        sample(sc, ve, (10, 3), "ipndm", 5, sigma_max="high")


@pytest.mark.parametrize("sde", [VESDE(0.002, 80.0), VPSDE(0.1, 20.0)], ids=["ve", "vp"])
def test_x_T_is_the_fit_noised_to_the_start(sde):
    """The fit's mean is the data's mean (a mixture shifted off the origin) and x_T drawn from it at a level sigma
    has mean m mu and per-dimension variance m^2 (std^2 + sigma^2) at that time."""
    from scorelab.samplers.grids import end_time

    g = mixture(2.0)
    shift = torch.tensor([3.0, -2.0, 1.0], dtype=F64)
    g = GaussianMixture(g.weights, g.means + shift, g.covs)
    fit = scale.data_fit(g.score_fn(sde), sde, (3,), torch.Generator().manual_seed(0), n=4000)
    assert torch.allclose(fit.mean, shift, atol=0.1), fit.mean
    t0 = end_time(sde, 12.0)
    m = float(sde.marginal_scale(torch.tensor(t0, dtype=F64)))
    x = fit.draw(sde, t0, (200_000, 3), torch.Generator().manual_seed(1), F64)
    assert torch.allclose(x.mean(0), m * fit.mean, atol=4 * m * 12 / 200_000**0.5)
    assert float(x.var(0).mean()) == pytest.approx(m * m * (fit.std**2 + 144.0), rel=0.01)


def test_an_optimized_grid_takes_the_default_start():
    """optimized_grid with no method (the default below 8 evaluations, sigma_max="auto") reads the start on its
    probe: the grid begins at the level chosen there, above the floor on data of std about 5.8."""
    from scorelab.samplers import optimized_grid
    from scorelab.samplers._common import sigma_of

    ve = VESDE(0.002, 80.0)
    sc = mixture(8.0).score_fn(ve)
    grid = optimized_grid(sc, ve, 5, dims=(3,), probe=64, sweeps=1, reference_nfe=40)
    level = start(mixture(8.0), ve, n=64)  # the probe's draws
    assert level > scale.FLOOR
    assert float(sigma_of(ve, grid[0])) == pytest.approx(level, rel=1e-6)
