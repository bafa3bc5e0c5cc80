"""Sampler properties over process parameters, dtypes and budgets (Hypothesis), option checks, the score checks,
and a throw-away step registered with one function and one table entry."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorelab.conditional import inpaint
from scorelab.samplers import METHODS, sample, samplers
from scorelab.samplers._common import value
from scorelab.samplers.pc import predictor_only
from scorelab.samplers.steps import PREDICTORS
from scorelab.sde import VESDE, VPSDE, SubVPSDE

F64 = torch.float64
ODE_METHODS = ("ode", "dpm_solver", "edm_heun", "lms", "ipndm", "unipc", "deis")


def unit_gaussian_score(sde):
    """Exact score of p_t for p_0 = N(0, I): -x / (m^2 + s^2), the factor computed in float64 and applied as
    r (r x) so that no intermediate leaves a low-precision dtype's range."""
    def score(x, t):
        t64 = t.to(F64)
        r = (sde.marginal_scale(t64) ** 2 + sde.marginal_std(t64) ** 2).rsqrt().to(x.dtype)
        r = r.reshape(r.shape + (1,) * (x.ndim - 1))
        return -(r * (r * x))
    return score


def energy(x, t):
    return 0.5 * x.flatten(1).pow(2).sum(1)


def make_sde(kind, a, b):
    if kind == "ve":
        return VESDE(a, b)
    return (VPSDE if kind == "vp" else SubVPSDE)(a, b)


# the processes item 5 of issue 15 found NaN on, plus random ones around them
EXTREME = [("ve", 1e-5, 1e4), ("vp", 0.1, 100.0), ("vp", 1e-4, 300.0)]
processes = st.one_of(
    st.sampled_from(EXTREME),
    st.tuples(st.just("ve"), st.floats(1e-5, 0.1), st.floats(1.0, 1e4)),
    st.tuples(st.sampled_from(["vp", "subvp"]), st.floats(1e-4, 1.0), st.floats(1.0, 100.0)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(proc=processes, dtype=st.sampled_from([torch.float16, torch.float32, torch.float64]),
       method=st.sampled_from(samplers()), nfe=st.integers(2, 40))
def test_finite_input_gives_finite_samples_or_one_clear_refusal(proc, dtype, method, nfe):
    """No NaN/inf is ever returned: either finite samples in the requested dtype, or one ValueError line where the
    dtype cannot hold the run (float16 with an unstable few-step Euler-Maruyama on sigma_max = 1e4). float64
    always samples. (VPSDE(1e-4, 1e3), m(T) ~ 1e-109, is refused at construction.)"""
    sde = make_sde(*proc)
    opts = {"energy_fn": energy} if method == "mala" else {}
    try:
        res = sample(unit_gaussian_score(sde), sde, (16, 2), method=method, nfe=nfe, dtype=dtype,
                     generator=torch.Generator().manual_seed(0), **opts)
    except ValueError as err:
        assert dtype != F64 and "non-finite" in str(err) and "\n" not in str(err), (proc, dtype, err)
        return
    assert res.x.dtype == dtype and bool(torch.isfinite(res.x).all()) and res.nfe <= nfe


accurate_processes = st.one_of(
    st.tuples(st.just("ve"), st.floats(1e-3, 0.05), st.floats(10.0, 1e3)),
    st.tuples(st.sampled_from(["vp", "subvp"]), st.floats(1e-3, 0.5), st.floats(5.0, 100.0)),
    st.sampled_from([("vp", 0.1, 100.0), ("ve", 1e-3, 1e3)]),
)


@settings(max_examples=15, deadline=None)
@given(proc=accurate_processes, dtype=st.sampled_from([torch.float32, torch.float64]),
       method=st.sampled_from(ODE_METHODS))
def test_every_ode_method_is_within_ten_percent_at_nfe_40(proc, dtype, method):
    """Sample std of N(0, I) data (exact score) within 10% of 1 at nfe 40 (edm_heun spends 39)."""
    sde = make_sde(*proc)
    x = sample(unit_gaussian_score(sde), sde, (2000, 2), method=method, nfe=40, dtype=dtype,
               generator=torch.Generator().manual_seed(1)).x
    assert abs(float(x.to(F64).std()) - 1) < 0.1, (proc, method, float(x.std()))


@pytest.mark.parametrize("proc", EXTREME[:2])
def test_float16_on_the_extreme_processes(proc):
    """float16 on VESDE(1e-5, 1e4) and VPSDE(beta_max=100): every method finite, the ODE methods accurate."""
    sde = make_sde(*proc)
    for method in samplers():
        opts = {"energy_fn": energy} if method == "mala" else {}
        x = sample(unit_gaussian_score(sde), sde, (1000, 2), method=method, nfe=40, dtype=torch.float16,
                   generator=torch.Generator().manual_seed(2), **opts).x
        assert x.dtype == torch.float16 and bool(torch.isfinite(x).all()), method
    x = sample(unit_gaussian_score(sde), sde, (2000, 2), method="edm_heun", nfe=40, dtype=torch.float16,
               generator=torch.Generator().manual_seed(2)).x
    assert abs(float(x.to(F64).std()) - 1) < 0.1


def test_edm_heun_on_the_default_vp():
    """It was 2.41 at nfe 10 and far off (2.9e6) on VPSDE(beta_max=100): now the same ODE as on VE."""
    for sde in (VPSDE(), VPSDE(beta_max=100.0), VESDE()):
        for nfe, tol in ((10, 1.0), (40, 0.05)):
            x = sample(unit_gaussian_score(sde), sde, (4000, 2), method="edm_heun", nfe=nfe,
                       generator=torch.Generator().manual_seed(0)).x
            assert abs(float(x.std()) - 1) < tol, (sde, nfe, float(x.std()))


# ---- options checked before anything runs -----------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,match", [
    ({"method": "pc", "eps": 2.0}, ValueError, "eps"),
    ({"method": "pc", "eps": float("nan")}, ValueError, "eps"),
    ({"method": "ode", "eps": -1e-3}, ValueError, "eps"),
    ({"method": "pc", "snr": -1}, ValueError, "snr"),
    ({"method": "langevin", "step_size": float("inf")}, ValueError, "step_size"),
    ({"method": "pc", "shape": (2.5, 2)}, ValueError, "integers"),
    ({"method": "pc", "generator": 42}, TypeError, "torch.Generator"),
    ({"method": "edm_heun", "rho": 0}, ValueError, "rho"),
    ({"method": ["pc"]}, TypeError, "method must be a string"),
    ({"method": "pc", "predictor": "heun"}, ValueError, "predictor"),
    ({"method": "ode", "solver": "verlet"}, ValueError, "solver"),
    ({"method": "dpm_solver", "multistep": "yes"}, TypeError, "True or False"),
    ({"method": "pc", "corrector_steps": 1.5}, ValueError, "corrector_steps"),
    ({"method": "dpm_solver", "sigma_min": 1e9}, ValueError, "sigma_min"),
    ({"method": "sde_dpm_solver", "sigma_max": 0.01}, ValueError, "sigma_max=0.01 must be above sigma_min"),
    ({"method": "unipc", "sigma_max": 0.03}, ValueError, "sigma_max=0.03 must be above sigma_min"),
    ({"method": "pc", "bogus": 1}, TypeError, "has no option 'bogus'; its options are predictor"),
    ({"method": "pc", "nfe": 1}, ValueError, "pass nfe >= 2"),
])
def test_bad_options_give_one_clear_line(kwargs, error, match):
    calls = []
    sde = VPSDE()
    score = unit_gaussian_score(sde)
    kw = {"shape": (4, 2), "nfe": 10, **kwargs}
    with pytest.raises(error, match=match) as info:
        sample(lambda x, t: calls.append(1) or score(x, t), sde, **kw)
    assert "\n" not in str(info.value) and not calls, "checked before any score evaluation"


def test_huge_step_size_and_nan_score_are_caught_at_the_end():
    sde = VPSDE()
    with pytest.raises(ValueError, match="non-finite"):
        sample(unit_gaussian_score(sde), sde, (4, 2), method="langevin", nfe=20, step_size=1e30)
    with pytest.raises(ValueError, match="non-finite"):
        sample(lambda x, t: torch.full_like(x, float("nan")), sde, (4, 2), method="dpm_solver", nfe=10)


def test_score_shape_checked_on_every_call_and_user_errors_pass_through():
    sde = VPSDE()
    calls = []

    def late_bad(x, t):
        calls.append(1)
        return x[:, :1] if len(calls) == 3 else -x

    with pytest.raises(ValueError, match="shaped like x"):
        sample(late_bad, sde, (4, 2), method="ancestral", nfe=10)

    def broken(x, t):
        raise TypeError("unexpected keyword argument inside my model")

    with pytest.raises(TypeError, match="inside my model"):  # never mistaken for an unknown option
        sample(broken, sde, (4, 2), method="ode", nfe=10)


def test_any_grid_for_any_method_and_x_init():
    sde = VPSDE()
    score = unit_gaussian_score(sde)
    grid = torch.linspace(1.0, 1e-3, 11, dtype=F64)
    for method in ("ancestral", "pc", "ode", "dpm_solver", "edm_heun", "euler_maruyama"):
        res = sample(score, sde, (500, 2), method=method, nfe=40, grid=grid, generator=torch.Generator())
        assert res.steps >= 10 and abs(float(res.x.std()) - 1) < 0.3, method  # ancestral: 0.71 at 10 steps
        for name in ("uniform", "log_snr", "karras"):
            assert torch.isfinite(sample(score, sde, (8, 2), method=method, nfe=20, grid=name).x).all()
    x_T = torch.randn(6, 3, generator=torch.Generator().manual_seed(5))
    a = sample(score, sde, None, method="ode", nfe=10, x_init=x_T).x
    b = sample(score, sde, (6, 3), method="ode", nfe=10, x_init=x_T, generator=torch.Generator().manual_seed(9)).x
    assert torch.equal(a, b), "a deterministic method from a given x_T ignores the generator"


def test_callback_and_progress():
    sde = VESDE()
    seen = []
    res = sample(unit_gaussian_score(sde), sde, (4, 2), method="edm_heun", nfe=9, progress=True,
                 callback=lambda i, t, x: seen.append((i, float(t), x.clone())))
    assert [i for i, _, _ in seen] == list(range(5)) and seen[-1][1] == 0.0
    assert torch.equal(seen[-1][2], res.x), "the callback sees x itself (not x / m)"


# ---- a throw-away step: one function + one table entry ------------------------------------------------------

def probability_flow_euler(score, x, i, S, generator, last):
    """Euler on the probability-flow ODE: x <- x - a dt x + 1/2 g^2 dt score (deterministic)."""
    gn = S.gn[i]
    return x + S.em[i] * x + 0.5 * gn * (gn * score(x, S.tb(i, x)))


def test_a_new_step_works_in_pc_as_a_method_and_in_inpainting(monkeypatch):
    monkeypatch.setitem(PREDICTORS, "pf_euler", probability_flow_euler)  # the one table entry
    sde = VPSDE()
    score = unit_gaussian_score(sde)
    g = torch.Generator().manual_seed(0)
    # in PC, with and without a corrector
    for corrector in ("none", "langevin"):
        x = sample(score, sde, (4000, 2), method="pc", predictor="pf_euler", corrector=corrector, nfe=400,
                   generator=g).x
        assert abs(float(x.std()) - 1) < 0.05, corrector
    # as a method of its own (predictor_only is how euler_maruyama and reverse_diffusion are made)
    monkeypatch.setitem(METHODS, "pf_euler", predictor_only("pf_euler"))
    res = sample(score, sde, (4000, 2), method="pf_euler", nfe=200, generator=g)
    assert res.nfe == 200 and abs(float(res.x.std()) - 1) < 0.05
    # in inpainting: N(0, I) has independent coordinates, so the unknown one keeps std 1
    data = torch.randn(4000, 2, generator=g)
    mask = torch.tensor([1.0, 0.0]).expand(4000, 2)
    for kw in ({"method": "pf_euler"}, {"method": "pc", "predictor": "pf_euler", "resample": 2}):
        out = inpaint(score, sde, data, mask, nfe=200, generator=g, **kw).x
        assert torch.equal(out[:, 0], data[:, 0]) and abs(float(out[:, 1].std()) - 1) < 0.06, kw
    # the original is left alone
    assert "pf_euler" not in samplers() or METHODS["pf_euler"].__name__ == "pf_euler"


def test_declared_deterministic_methods_draw_no_noise_after_x_T():
    """The declaration inpainting relies on (one z for the known entries): true of exactly ODE_METHODS."""
    sde, x_T = VPSDE(), torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    for name in samplers():
        if name in ("langevin", "mala"):
            continue
        runs = [sample(unit_gaussian_score(sde), sde, None, method=name, nfe=20, x_init=x_T,
                       generator=torch.Generator().manual_seed(seed)).x for seed in (1, 2)]
        declared = bool(value(METHODS[name].deterministic, {}))
        assert torch.equal(*runs) == (name in ODE_METHODS) == declared, name
    assert not value(METHODS["dpm_solver"].deterministic, {"eta": 1.0})


def test_dpm_solver_on_a_grid_ending_at_zero():
    """The step to sigma = 0 is x = m D (a plan's ``to_zero``): multistep orders 2-3 divided by h = inf there
    (ZeroDivisionError from 15 steps on, or with lower_order_final=False)."""
    sde, grid = VPSDE(), torch.linspace(1.0, 0.0, 21, dtype=F64)
    for kw in ({"order": 2}, {"order": 3, "lower_order_final": False}, {"order": 2, "multistep": False}):
        res = sample(unit_gaussian_score(sde), sde, (4000, 2), method="dpm_solver", nfe=40, grid=grid,
                     generator=torch.Generator().manual_seed(0), **kw)
        assert res.steps == 20 and abs(float(res.x.std()) - 1) < 0.05, kw


def test_log_likelihood_checks_the_score_shape_and_finiteness():
    from scorelab.likelihood import log_likelihood
    sde = VPSDE()
    x = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="shaped like x"):  # was a finite NLL
        log_likelihood(lambda y, t: y[:, :1], sde, x, solver="euler", steps=10)
    with pytest.raises(ValueError, match="NaN"):
        log_likelihood(lambda y, t: torch.full_like(y, float("nan")), sde, x, solver="euler", steps=10)


def test_samplers_subpackage_and_listing_coexist():
    import scorelab as sl
    import scorelab.samplers.grids
    import scorelab.samplers.ode
    assert sl.samplers() == samplers() and callable(sl.samplers.grids.karras)
    assert hasattr(scorelab.samplers.ode, "SigmaFlow"), "the module, not the method of the same name"
