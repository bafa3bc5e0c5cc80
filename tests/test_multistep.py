"""The multistep solvers (samplers/multistep.py: lms, ipndm, unipc, deis) against closed forms and the oracle."""

from __future__ import annotations

import pytest
import torch

from scorelab.metrics import mixture_error
from scorelab.samplers import sample
from scorelab.samplers.grids import end_time
from scorelab.sde import VESDE, VPSDE, SubVPSDE
from test_sampler_properties import unit_gaussian_score
from test_samplers import _exact_flow, _gaussian_problem, _slope, as_returned, gaussian_score, gen, small_mixture

F64 = torch.float64
NEW = ("lms", "ipndm", "unipc", "deis")

# declared global order: Adams-Bashforth with a first-order warm start is capped at 2 (lms, ipndm, deis; the
# warm-up steps of lms order 4 sit where the flow is nearly linear in sigma: measured 3.3-3.6, declared 3);
# UniPC-p with its corrector is order p + 1 (Zhao et al. 2023, Thm 3.3), capped at 3 by the warm start
ORDERS = [
    ("lms", {"order": 1}, 1), ("lms", {"order": 2}, 2), ("lms", {"order": 4}, 3),
    ("ipndm", {"order": 1}, 1), ("ipndm", {"order": 2}, 2), ("ipndm", {"order": 3}, 2), ("ipndm", {"order": 4}, 2),
    ("unipc", {"order": 1}, 2), ("unipc", {"order": 2}, 3), ("unipc", {"order": 3}, 3),
    ("unipc", {"order": 2, "variant": "bh2"}, 3), ("unipc", {"order": 2, "use_corrector": False}, 2),
    ("unipc", {"order": 3, "variant": "bh1"}, 3),
    ("deis", {"order": 1}, 1), ("deis", {"order": 2}, 2), ("deis", {"order": 3}, 2),
]


@pytest.mark.parametrize("method,opts,order", ORDERS, ids=[f"{m}{o}" for m, o, _ in ORDERS])
@pytest.mark.parametrize("sde", [VESDE(0.01, 10.0), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_order_of_convergence(sde, method, opts, order):
    """Error against the exact probability-flow map x_T -> x(sigma = 0.002) of a Gaussian, from x_T at T."""
    mu, Q, lam, gmm = _gaussian_problem()
    x_T = sde.prior_sampling((64, 2), generator=gen(3), dtype=F64)
    t_end = end_time(sde, 0.002)
    exact = as_returned(sde, method, opts, _exact_flow(sde, mu, Q, lam, x_T, t_end), t_end)
    if method in ("unipc", "deis"):
        opts = {**opts, "lower_order_final": False}
    nfes, errs = (40, 80, 160), []
    for nfe in nfes:
        x = sample(gmm.score_fn(sde), sde, None, method=method, nfe=nfe, x_init=x_T, dtype=F64, sigma_max=1e8,
                   sigma_min=0.002, **opts).x
        errs.append(float((x - exact).abs().max()))
    slope = _slope(nfes, errs)
    assert order - 0.3 < slope < order + 1.6, (slope, errs)


def test_unipc_corrector_adds_an_order_for_free():
    sde, (mu, Q, lam, gmm) = VPSDE(), _gaussian_problem()
    x_T = sde.prior_sampling((64, 2), generator=gen(3), dtype=F64)
    exact = _exact_flow(sde, mu, Q, lam, x_T, end_time(sde, 0.002))
    err = {}
    for flag in (True, False):
        res = sample(gmm.score_fn(sde), sde, None, method="unipc", nfe=40, x_init=x_T, dtype=F64, sigma_max=1e8,
                     sigma_min=0.002, order=2, variant="bh1", use_corrector=flag)
        assert res.nfe == 40
        err[flag] = float((res.x - exact).abs().max())
    assert err[True] < 0.3 * err[False], err


@pytest.mark.parametrize("method", NEW)
@pytest.mark.parametrize("sde", [VESDE(0.01, 20.0), VPSDE()], ids=["ve", "vp"])
def test_mixture_at_low_budget(sde, method):
    """10 evaluations already near the floor on a 3-component mixture; 30 closer still; budget never exceeded."""
    gmm = small_mixture()
    floor = mixture_error(gmm.sample(1000, generator=gen(2)), gmm).moment_kl
    err = {}
    for nfe in (5, 10, 30):
        res = sample(gmm.score_fn(sde), sde, (1000, 2), method=method, nfe=nfe, generator=gen(1), dtype=F64)
        assert res.nfe == nfe and res.steps == nfe
        err[nfe] = mixture_error(res.x, gmm).moment_kl
    assert err[30] < floor + 0.03 and err[10] < floor + 0.1, (err, floor)


@pytest.mark.parametrize("method", NEW)
@pytest.mark.parametrize("grid", ["uniform", "log_snr", "karras", "tensor", "to_zero"])
@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_any_grid_any_budget(sde, method, grid):
    if grid == "tensor":
        grid = torch.linspace(1.0, 0.01, 8, dtype=F64) ** 2
    elif grid == "to_zero":  # a user grid ending at t = 0 (sigma = 0): the last step returns m D
        grid = torch.linspace(1.0, 0.0, 8, dtype=F64)
    for nfe in (1, 2, 7) if isinstance(grid, str) else (7,):  # a tensor grid fixes the steps
        res = sample(gaussian_score(sde), sde, (50, 3), method=method, nfe=nfe, generator=gen(), grid=grid)
        assert res.nfe <= nfe and torch.isfinite(res.x).all()
    if isinstance(grid, torch.Tensor):
        assert res.nfe == 7 and res.steps == 7
        if float(grid[-1]) == 0.0:  # p_0 = N(0.5, 0.3 I): the mean lands near 0.5
            assert abs(float(res.x.mean()) - 0.5) < 0.15


@pytest.mark.parametrize("method", NEW)
def test_project_hook_holds_after_every_step(method):
    """Inpainting's ``project`` keeps the known coordinate; UniPC re-projects after its corrector."""
    sde = VPSDE()
    seen = []

    def project(x, t):
        x = x.clone()
        x[:, 0] = 0.25
        return x

    sample(gaussian_score(sde), sde, (20, 2), method=method, nfe=10, generator=gen(), project=project,
           callback=lambda i, t, x: seen.append(bool((x[:, 0] == 0.25).all())))
    assert len(seen) == 10 and all(seen)


def test_bad_options_are_one_line_errors():
    sde = VESDE()
    with pytest.raises(ValueError, match="order"):
        sample(gaussian_score(sde), sde, (4, 2), method="unipc", nfe=10, order=4)
    with pytest.raises(ValueError, match="variant"):
        sample(gaussian_score(sde), sde, (4, 2), method="unipc", nfe=10, variant="bh3")
    with pytest.raises(ValueError, match="order"):
        sample(gaussian_score(sde), sde, (4, 2), method="lms", nfe=10, order=5)
    with pytest.raises(TypeError, match="use_corrector"):
        sample(gaussian_score(sde), sde, (4, 2), method="unipc", nfe=10, use_corrector=1)


@pytest.mark.parametrize("sde", [VESDE(1e-5, 1e4), VPSDE(0.1, 100.0)], ids=["ve-1e4", "vp-100"])
def test_float16_on_extreme_processes(sde):
    """m(T) ~ 1e-11 (VP) or x_T ~ 1e4 (VE): float64 weights on float16 tensors stay finite and accurate."""
    score = unit_gaussian_score(sde)  # its factor in float64: the test's score is not the weak point
    for method in NEW:
        x = sample(score, sde, (2000, 2), method=method, nfe=40, dtype=torch.float16, generator=gen(2)).x
        assert x.dtype == torch.float16 and abs(float(x.to(F64).std()) - 1) < 0.05, method


@pytest.mark.parametrize("sde", [VESDE(0.01, 10.0), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_the_step_to_zero_has_its_order(sde):
    """``denoise_to_zero``'s final step alone (``_common.to_zero``), from the exact flow of a Gaussian at sigma_N
    (and at 2 sigma_N, the evaluation before): the error of x0_hat falls as sigma_N^2, that of ``final_order=2`` as
    sigma_N^4 (eps is odd in sigma on Gaussian data; sigma_N^3 in general)."""
    from scorelab.samplers._common import CountedScore, Schedule, to_zero

    mu, Q, lam, gmm = _gaussian_problem()
    x0 = mu + torch.randn(64, 2, generator=gen(4), dtype=F64)  # where the flows end: any points will do
    levels, errs = (0.04, 0.02, 0.01, 0.005), {1: [], 2: []}
    for h in levels:
        times = torch.tensor([end_time(sde, 2 * h), end_time(sde, h)], dtype=F64)
        S = Schedule(sde, times, x0)
        # x_i on the exact flow through x0: m_i mu + Q sqrt(lam + sigma_i^2) / sqrt(lam) Q^T (x0 - mu)
        on_flow = [S.m[i] * (mu + ((x0 - mu) @ Q * ((lam + (S.s[i] / S.m[i]) ** 2) / lam).sqrt()) @ Q.T)
                   for i in (0, 1)]
        for order in (1, 2):
            score = CountedScore(gmm.score_fn(sde))
            score(on_flow[0], S.tb(0, x0))
            errs[order].append(float((to_zero(score, on_flow[1], S, order) - x0).abs().max()))
            assert score.count == 2
    slopes = {o: _slope([1 / h for h in levels], e) for o, e in errs.items()}
    assert 1.8 < slopes[1] < 2.3 and 3.6 < slopes[2] < 4.4, (slopes, errs)
    assert errs[2][-1] < 0.01 * errs[1][-1], errs


def test_final_order_2_through_sample():
    """unipc and dpm_solver to sigma_N = 0.1 with ``denoise_to_zero``, 80 evaluations: on the Gaussian (stds 0.22
    and 0.71) the second-order final step, on the same evaluations, is closer to the exact flow's end than x0_hat
    (measured 0.136-0.143x); misuse is one error line."""
    mu, Q, lam, gmm = _gaussian_problem()
    for sde in (VPSDE(), VESDE(0.01, 10.0)):
        x_T = sde.prior_sampling((64, 2), generator=gen(5), dtype=F64)
        exact = _exact_flow(sde, mu, Q, lam, x_T, 1e-9)
        for method in ("unipc", "dpm_solver"):
            err = {fo: float((sample(gmm.score_fn(sde), sde, None, method, 80, x_init=x_T, dtype=F64, sigma_min=0.1,
                                     denoise_to_zero=True, final_order=fo).x - exact).abs().max()) for fo in (1, 2)}
            assert err[2] < 0.25 * err[1], (method, err)
    # the stop level's pilot runs without the final step, so final_order goes with it
    x = sample(gmm.score_fn(sde), sde, (64, 2), "unipc", 10, generator=gen(6), denoise_to_zero=True, final_order=2,
               sigma_min="auto:0.03").x
    assert bool(torch.isfinite(x).all())
    for bad in ({"final_order": 2}, {"final_order": 3, "denoise_to_zero": True},
                {"final_order": 2, "denoise_to_zero": True, "eta": 1.0},
                {"final_order": 2, "denoise_to_zero": True, "multistep": False}):
        with pytest.raises(ValueError, match="final_order"):
            sample(gmm.score_fn(sde), sde, (4, 2), "dpm_solver", 10, **bad)
