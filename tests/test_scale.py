"""Where a short grid starts: the data's scale read off the score (samplers/scale.py, ``sigma_max="auto"``)."""

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
def test_data_std_is_the_mixtures_spread(sde, width):
    g = mixture(width)
    true = width * ((1.0 + 0.6) / 3) ** 0.5
    est = scale.data_std(g.score_fn(sde), sde, (3,), torch.Generator().manual_seed(0), n=4000)
    assert abs(est / true - 1) < 0.08, (est, true)


def test_the_start_keeps_the_floor_on_unit_data_and_grows_with_wide_data():
    ve = VESDE(0.002, 80.0)
    assert scale.choose_sigma_max(mixture(1.0).score_fn(ve), ve, (3,), torch.Generator().manual_seed(0)) == \
        scale.FLOOR
    wide = scale.choose_sigma_max(mixture(8.0).score_fn(ve), ve, (3,), torch.Generator().manual_seed(0))
    assert 0.9 * scale.PER_STD * 5.84 < wide < 1.1 * scale.PER_STD * 5.84
    assert scale.choose_sigma_max(mixture(60.0).score_fn(ve), ve, (3,), torch.Generator().manual_seed(0)) == \
        pytest.approx(80.0)


def test_auto_is_the_chosen_start_draw_for_draw_and_leaves_the_stream():
    ve = VESDE(0.002, 80.0)
    g = mixture(8.0)
    sc = g.score_fn(ve)
    start = scale.choose_sigma_max(sc, ve, (3,), torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    a = sample(sc, ve, (300, 3), nfe=5, generator=gen, sigma_max="auto").x
    b = sample(sc, ve, (300, 3), nfe=5, generator=torch.Generator().manual_seed(4), sigma_max=start).x
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="sigma_max must be a number > 0 or 'auto'"):
        sample(sc, ve, (10, 3), "ipndm", 5, sigma_max="high")


def test_an_optimized_grid_takes_the_default_start():
    """optimized_grid with no method (the default below 8 evaluations, sigma_max="auto") reads the start on its
    probe: the grid begins at the level chosen there, above 10 on data of std about 5.8."""
    from scorelab.samplers import optimized_grid
    from scorelab.samplers._common import sigma_of

    ve = VESDE(0.002, 80.0)
    sc = mixture(8.0).score_fn(ve)
    grid = optimized_grid(sc, ve, 5, dims=(3,), probe=64, sweeps=1, reference_nfe=40)
    start = scale.choose_sigma_max(sc, ve, (3,), torch.Generator().manual_seed(0), n=64)  # the probe's draws
    assert start > scale.FLOOR
    assert float(sigma_of(ve, grid[0])) == pytest.approx(start, rel=1e-6)
