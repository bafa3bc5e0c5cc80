"""Exact log-likelihoods through the probability-flow ODE, and bits per dimension.

Instantaneous change of variables (Chen et al. 2018, Theorem 1; Song et al. 2021, Appendix D.2): along the
probability-flow ODE dx/dt = f~(x, t) = a(t) x - 1/2 g(t)^2 score(x, t), the density of the flowed point obeys

    d/dt log p_t(x(t)) = -div f~(x(t), t).

Integrating the joint ODE  d/dt [x, delta] = [f~(x, t), div f~(x, t)]  from x(eps) = x, delta(eps) = 0 up to T:

    log p_eps(x) = log p_T(x(T)) + delta(T) = prior_logp(z) + int_eps^T div f~(x(t), t) dt.

The divergence is computed exactly (D batched vector-Jacobian products; fine for small D) or by the
Hutchinson-Skilling trace estimator (Skilling 1989; Hutchinson 1990; Grathwohl et al. 2018) with probes drawn
once and kept fixed for the whole solve, so the integrand is a smooth function of t that an adaptive solver
can step through. With fixed probes the estimate of log p is unbiased in the divergence (not in p).

The only approximation besides the solver (and a learned score) is log p_T ~ the prior: see ``prior=``.

Bits per dimension of discrete data (the derivation is in docs/likelihood.md): for x in {0, ..., L-1}^D,
L = 2^bits, dequantised u = (x + U) / L with U ~ Uniform[0, 1)^D, and model input y = a u + b,

    bpd = ( E_U[-log p_y(y)] - sum_i log|a_i| + D log L ) / (D log 2)   >=   -log2 P_model(x) / D.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._checks import check_batch, check_finite
from .divergence import PROBES, divergence_exact, divergence_hutchinson, sample_probes
from .latent import check_solver_options
from .samplers._common import CountedScore
from .samplers.ode import ProbabilityFlow
from .sde import SDE
from .solvers import solve

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DIVERGENCES = ("exact", "hutchinson")


@dataclass
class LikelihoodResult:
    """Output of ``log_likelihood``; all per-example tensors are [B]."""

    nll: torch.Tensor         # -log p_eps(x) in nats
    nfe: int                  # score evaluations (batched calls) used by the solve
    z: torch.Tensor           # the latent x(T), [B, *dims]
    prior_logp: torch.Tensor  # log p_T(z) as given by the prior
    delta_logp: torch.Tensor  # int_eps^T div f~ dt

    @property
    def logp(self) -> torch.Tensor:
        return -self.nll


def log_likelihood(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, generator: torch.Generator | None = None,
                   divergence: str = "exact", n_probes: int = 1, probe: str = "rademacher",
                   solver: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None,
                   eps: float = 1e-5, dtype: torch.dtype | None = None,
                   prior: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   callback: Callable[[float], None] | None = None) -> LikelihoodResult:
    """-log p_eps(x) [B] by the probability-flow ODE and the instantaneous change of variables.

    x [B, *dims]; ``divergence`` "exact" (D vector-Jacobian products per evaluation) or "hutchinson"
    (``n_probes`` fixed ``probe`` vectors per example, drawn from ``generator``); ``solver`` an adaptive
    method ("dopri5", default, rtol = atol = 1e-5 and eps = 1e-5 as in Song et al. 2021) or a fixed-step one
    ("euler", "heun", "midpoint", "rk4") with ``steps``. ``dtype`` (e.g. torch.float64) is the precision of
    the solve, default x's. ``prior`` replaces ``sde.prior_logp`` as log p_T (e.g. an exact marginal).

    Checked: x non-empty and finite, the solve in float32 or float64 (half precision cannot hold the solver's
    tolerances), every score evaluation shaped like x, and the result finite (a NaN/inf score, or x far outside
    the data the score was trained on, is a ValueError rather than a NaN or inf likelihood).

    ``callback(t)``, if given, is called with the time (a float) of every evaluation of the joint field, e.g.
    to advance a progress bar over [eps, T] (one host read of t per evaluation, only then).
    """
    if not callable(score_fn):
        raise TypeError("score_fn must be a callable score_fn(x, t) -> tensor shaped like x.")
    check_batch(x)
    if x.ndim < 2:
        raise ValueError(f"x must have shape [B, *dims] with at least one data dimension, got {tuple(x.shape)}; "
                         "for scalar data use x[:, None].")
    if x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)}); give at least one example [B >= 1, *dims].")
    check_finite(x)
    solve_dtype = x.dtype if dtype is None else dtype
    if solve_dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the likelihood ODE needs float32 or float64 (got {solve_dtype}): half precision cannot "
                        "meet the solver's tolerances; pass dtype=torch.float32 (or convert x).")
    if divergence not in DIVERGENCES:
        raise ValueError(f"Unknown divergence {divergence!r}; choose one of {DIVERGENCES}.")
    if probe not in PROBES:
        raise ValueError(f"Unknown probe {probe!r}; choose one of {PROBES}.")
    if not isinstance(n_probes, int) or isinstance(n_probes, bool) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer (probes per example), got {n_probes!r}.")
    check_solver_options(sde, solver, rtol, atol, steps, eps)
    if prior is not None and not callable(prior):
        raise TypeError("prior must be a callable z -> log p_T(z) of shape [B], or None for sde.prior_logp.")
    if dtype is not None:
        x = x.to(dtype)
    prior = sde.prior_logp if prior is None else prior

    counted = CountedScore(score_fn)  # checks the score's output shape on every call
    B = x.shape[0]
    probes = (sample_probes(x, n_probes, probe, generator) if divergence == "hutchinson" else None)
    field = _JointFlow(ProbabilityFlow(counted, sde), probes, callback)
    with torch.no_grad():
        try:
            z, delta = solve(field, (x, x.new_zeros(B)), float(eps), sde.T, solver, rtol, atol, steps)
        except AssertionError as err:  # torchdiffeq asserts on a step-size underflow or a non-finite state
            raise ValueError(f"the probability-flow ODE could not be solved ({' '.join(str(err).split())[:120]}): the "
                             "score is NaN/inf somewhere on the path, or x lies far outside the data the score "
                             "describes; check the score and the data's units.") from None
        prior_logp = prior(z)
    logp = prior_logp + delta
    if not bool(torch.isfinite(logp).all()):
        bad = int((~torch.isfinite(logp)).sum())
        raise ValueError(f"the log-likelihood of {bad} of {B} example(s) is not finite: the score returned NaN/inf "
                         "on the path, or x lies far outside the data the score describes (check the data's units "
                         "and scaling).")
    return LikelihoodResult(nll=-logp, nfe=counted.count, z=z, prior_logp=prior_logp, delta_logp=delta)


class _JointFlow:
    """d/dt [x, delta] = [f~(x, t), div f~(x, t)] for the solvers of ``scorelab.solvers`` (fixed-step and adaptive)."""

    def __init__(self, flow: ProbabilityFlow, probes, callback=None):
        self.flow, self.probes, self.callback = flow, probes, callback

    def prepare(self, stage_times, times):
        self.flow.prepare(stage_times, times)

    def _joint(self, drift, y):
        if self.probes is None:
            div, f = divergence_exact(drift, y)
        else:
            div, f = divergence_hutchinson(drift, y, probes=self.probes)
        # the graph built for the divergence is not needed past this evaluation
        return f.detach(), div.detach()

    def __call__(self, i, j, state):
        if self.callback is not None:
            self.callback(self.flow.t[i][j])  # prepare() stored the stage times as Python floats
        return self._joint(lambda v: self.flow(i, j, (v,))[0], state[0])

    def at(self, t, state):
        if self.callback is not None:
            self.callback(float(t))
        return self._joint(lambda v: self.flow.at(t, v), state[0])


# ---------------------------------------------------------------------------------------------------------
# bits per dimension
# ---------------------------------------------------------------------------------------------------------

def _affine_of(scaler, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with y = a u + b broadcastable against [B, *dims], from (scale, shift) or an object with forward."""
    if isinstance(scaler, tuple) and len(scaler) == 2:
        a, b = (torch.as_tensor(v, dtype=like.dtype, device=like.device) for v in scaler)
    elif hasattr(scaler, "forward") and callable(scaler.forward):
        # An affine map is fixed by its values at 0 and 1; check a third point so a non-affine map is caught.
        zero, one = torch.zeros_like(like[:1]), torch.ones_like(like[:1])
        b = scaler.forward(zero).to(like.dtype)
        a = scaler.forward(one).to(like.dtype) - b
        half = scaler.forward(0.5 * one).to(like.dtype)
        if not torch.allclose(half, b + 0.5 * a, rtol=1e-5, atol=1e-6):
            raise ValueError("scaler.forward is not affine; bits/dim needs y = a u + b (e.g. an AffineScaler).")
    else:
        raise TypeError("scaler must be a (scale, shift) pair, y = scale * u + shift for u in [0, 1), "
                        f"or an object with an affine forward(u); got {type(scaler).__name__}.")
    if not bool(torch.isfinite(a).all() & (a != 0).all() & torch.isfinite(b).all()):
        raise ValueError("the scaler's scale must be finite and non-zero (the map u -> y must be invertible).")
    return a, b


def dequantize(x: torch.Tensor, bits: int = 8, scaler=(2.0, -1.0), generator: torch.Generator | None = None,
               levels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform dequantisation of integer data: y = a (x + U) / L + b with U ~ Uniform[0, 1), L = 2^bits.

    x [B, *dims] holds integers in {0, ..., L-1} (any dtype). Returns y [B, *dims] and the log-Jacobian
    log|dy/dv| = sum_i log|a_i| - D log L [B] of the map from v = x + U to y. The default scaler maps to
    [-1, 1): scale 2, shift -1. ``levels`` (e.g. 17 for the 0..16 digits) replaces L = 2^bits when given.
    """
    if levels is not None:
        if not isinstance(levels, int) or isinstance(levels, bool) or levels < 2:
            raise ValueError(f"levels must be an integer >= 2 (the number of quantisation levels), got {levels!r}.")
    elif not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be an integer bit depth in [1, 32] (levels = 2^bits), got {bits!r}.")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of integers [B, *dims], got {type(x).__name__}.")
    if x.ndim < 2:
        raise ValueError(f"x must have shape [B, *dims], got {tuple(x.shape)}.")
    L = 2**bits if levels is None else levels
    xf = x.to(torch.float64) if not x.is_floating_point() else x
    if not bool(torch.isfinite(xf).all()):
        raise ValueError("x contains NaN or inf; bits/dim needs integer data in {0, ..., 2^bits - 1}.")
    if bool((xf != torch.round(xf)).any()):
        raise ValueError(f"x must hold integers in {{0, ..., {L - 1}}} (raw {L}-level data, before any scaling); "
                         "got non-integer values. Pass the quantised data, not data already scaled to [0, 1].")
    lo, hi = float(xf.min()), float(xf.max())
    if lo < 0 or hi > L - 1:
        raise ValueError(f"x must lie in {{0, ..., {L - 1}}} ({L} levels), got values in [{lo:g}, {hi:g}].")
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    xf = xf.to(dtype)
    noise = torch.rand(xf.shape, generator=generator, dtype=dtype, device=xf.device)
    u = (xf + noise) / L
    a, b = _affine_of(scaler, u)
    y = a * u + b
    D = x[0].numel()
    log_abs_a = torch.log(torch.abs(a)).expand_as(u[:1]).sum()
    log_jac = (log_abs_a - D * math.log(L)) * torch.ones(x.shape[0], dtype=dtype, device=xf.device)
    return y, log_jac


def nll_to_bpd(nll_y: torch.Tensor, log_jac: torch.Tensor, D: int) -> torch.Tensor:
    """bits/dim = (nll_y - log|dy/dv|) / (D log 2): the density of v = x + U is p_y(y) |dy/dv|."""
    return (nll_y - log_jac) / (D * math.log(2))


@dataclass
class BitsPerDimResult:
    bpd: torch.Tensor   # [B], averaged over the dequantisation draws
    nll: torch.Tensor   # [B] -log p_eps(y) in nats in model space, averaged over draws
    nfe: int            # score evaluations over all draws


def bits_per_dim(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, bits: int = 8, scaler=(2.0, -1.0),
                 generator: torch.Generator | None = None, n_dequant: int = 1, levels: int | None = None,
                 **options) -> BitsPerDimResult:
    """Bits per dimension of integer data x [B, *dims] in {0, ..., 2^bits - 1} under the model.

    Each draw dequantises x (``dequantize``), maps it to model space with ``scaler`` (a (scale, shift) pair
    or an object whose affine ``forward`` maps u in [0, 1) to model inputs, default [-1, 1)), computes
    -log p_eps(y) with ``log_likelihood(**options)`` and converts with the Jacobian:

        bpd = (-log p_y(y) - sum_i log|a_i| + D log 2^bits) / (D log 2).

    Averaging over ``n_dequant`` draws estimates the variational bound E_U[...] >= -log2 P(x) / D.
    ``levels`` replaces 2^bits for data with another number of levels (17 for the 0..16 digits).
    """
    if not isinstance(n_dequant, int) or isinstance(n_dequant, bool) or n_dequant < 1:
        raise ValueError(f"n_dequant must be a positive integer, got {n_dequant!r}.")
    D = x[0].numel() if isinstance(x, torch.Tensor) and x.ndim >= 2 else 0
    bpd = nll = 0.0
    nfe = 0
    for _ in range(n_dequant):
        y, log_jac = dequantize(x, bits, scaler, generator, levels=levels)
        res = log_likelihood(score_fn, sde, y, generator=generator, **options)
        bpd = bpd + nll_to_bpd(res.nll, log_jac.to(res.nll.dtype), D)
        nll = nll + res.nll
        nfe += res.nfe
    return BitsPerDimResult(bpd=bpd / n_dequant, nll=nll / n_dequant, nfe=nfe)


__all__ = ["LikelihoodResult", "BitsPerDimResult", "log_likelihood", "bits_per_dim", "dequantize", "nll_to_bpd"]
