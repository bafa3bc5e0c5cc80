"""The finish chosen by the flow (samplers/finish.py, ``unipc(final_blend=...)``): the blend is the line between x0_hat
and the sample it was read at, DDPM's last level, and what the choice does on wide and on sharp data."""

from __future__ import annotations

import math

import pytest
import torch

from scorelab.data import ring_mixture
from scorelab.metrics import mixture_error
from scorelab.oracle import GaussianMixture
from scorelab.samplers import finish, sample
from scorelab.sde import VESDE, VPSDE

F64 = torch.float64


def ring(n: int, radius: float, std: float) -> GaussianMixture:
    """n isotropic components of one std on a circle, weights 1..n."""
    a = torch.arange(n, dtype=F64) * (2 * math.pi / n) + 0.2
    return GaussianMixture(torch.arange(1, n + 1, dtype=F64), radius * torch.stack([a.cos(), a.sin()], 1),
                           torch.full((n,), std**2, dtype=F64))


@pytest.mark.parametrize("sde", [VESDE(0.002, 80.0), VPSDE(0.1, 20.0)], ids=["ve", "vp"])
def test_the_blend_is_the_line_from_x0_hat_to_the_sample(sde):
    g = ring(5, 7.0, 0.9)
    score = g.score_fn(sde)
    run = lambda **o: sample(score, sde, (500, 2), "unipc", 10, generator=torch.Generator().manual_seed(3),
                             grid="ddpm", sigma_min=0.34, denoise_to_zero=True, **o).x
    x0, x1, xg = run(), run(final_blend=1.0), run(final_blend=0.3)
    assert torch.allclose(run(final_blend=0.0), x0)
    assert torch.allclose(xg, x0 + 0.3 * (x1 - x0), atol=1e-5)
    # g = 1: the sample at the last level, in data units: the same nine steps without the final evaluation
    nine = sample(score, sde, (500, 2), "unipc", 9, generator=torch.Generator().manual_seed(3), grid="ddpm",
                  sigma_min=0.34, lower_order_final=False).x
    assert torch.allclose(x1, nine, atol=1e-5)
    assert float((x1 - x0).abs().max()) > 0.05  # the two ends differ: the line is not a point


def test_a_blend_out_of_range_or_without_x0_hat_is_refused_in_one_line():
    g, sde = ring(5, 7.0, 0.9), VESDE(0.002, 80.0)
    for opts in ({"final_blend": 2.0, "denoise_to_zero": True}, {"final_blend": 0.3},
                 {"final_blend": 0.3, "denoise_to_zero": True, "final_order": 2}, {"final_blend": "auto"}):
        with pytest.raises(ValueError, match="final_blend") as e:
            sample(g.score_fn(sde), sde, (8, 2), "unipc", 10, **opts)
        assert "\n" not in str(e.value)


def test_ddpm_end_is_the_last_level_before_zero_of_ddpms_grid():
    # DDPM's discrete linear betas 1e-4..0.02 (Ho et al. 2020) at timestep 100 of 1000: sigma 0.342; the continuous
    # process at t = 0.1 is within a step of it
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    abar = float(torch.cumprod(1 - betas, 0)[100])
    assert finish.ddpm_end(10) == pytest.approx(math.sqrt((1 - abar) / abar), rel=0.01)
    assert finish.ddpm_end(8) > finish.ddpm_end(10) > finish.ddpm_end(12)


@pytest.mark.parametrize("sde", [VESDE(0.002, 80.0), VPSDE(0.1, 20.0)], ids=["ve", "vp"])
def test_wide_data_take_the_finish_and_it_brings_them_nearer_the_truth(sde, monkeypatch):
    """A ring of std 0.9 reads 0.1 at 10 evaluations: the default ends on DDPM's levels with a blend chosen by the
    flow, and its moment KL falls to 0.2x the plain run's (docs/samplers.md, "The finish chosen by the flow")."""
    g = ring(5, 7.0, 0.9)
    score = g.score_fn(sde)
    draw = lambda s: sample(score, sde, (4000, 2), None, 10, generator=torch.Generator().manual_seed(s))
    res = draw(0)
    assert res.method == "unipc" and res.options["denoise_to_zero"] and res.options["final_blend"] != 0
    assert res.options["sigma_min"] == pytest.approx(finish.ddpm_end(10))
    assert "blended" in res.describe(sde) and res.nfe == 10
    again = sample(score, sde, (4000, 2), res.method, 10, generator=torch.Generator().manual_seed(0), grid=res.times,
                   **res.options)
    assert torch.equal(again.x, res.x)  # the record reruns the draws
    new = sorted(mixture_error(draw(s).x, g).moment_kl for s in range(3))[1]
    monkeypatch.setattr("scorelab.samplers.FINISH_BUDGETS", range(0))
    plain = draw(0)
    assert "final_blend" not in plain.options
    old = sorted(mixture_error(draw(s).x, g).moment_kl for s in range(3))[1]
    assert new < 0.5 * old, (new, old)


def test_sharp_data_keep_the_plain_run():
    sde = VESDE(0.002, 80.0)
    res = sample(ring_mixture().score_fn(sde), sde, (1000, 2), None, 10, generator=torch.Generator().manual_seed(0))
    assert res.options["sigma_min"] < finish.FINISH_END and "final_blend" not in res.options


def test_flow_gap_is_the_mean_distance():
    x = torch.zeros(4, 2, 3)
    ref = torch.ones(4, 2, 3)
    ref[0] *= 2
    assert finish.flow_gap(x, ref) == pytest.approx((math.sqrt(24) + 3 * math.sqrt(6)) / 4)


def test_no_finish_where_the_score_is_not_trusted_at_the_bottom_nor_at_8_evaluations(monkeypatch):
    """The reference flow runs to the stop ladder's bottom: a score whose noise share does not keep falling there (every
    network scorelab trained) keeps the plain run, and so do 8 and 9 evaluations (``FINISH_BUDGETS``)."""
    sde, g = VESDE(0.002, 80.0), ring(5, 7.0, 0.9)
    draw = lambda nfe: sample(g.score_fn(sde), sde, (1000, 2), None, nfe, generator=torch.Generator().manual_seed(0))
    assert "final_blend" in draw(10).options and "final_blend" in draw(12).options
    assert "final_blend" not in draw(8).options and "final_blend" not in draw(9).options
    monkeypatch.setattr(finish, "share_keeps_falling", lambda *a: False)
    assert "final_blend" not in draw(10).options
