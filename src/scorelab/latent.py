"""Latent codes of the probability-flow ODE: encode, decode and interpolate.

The probability-flow ODE dx/dt = a(t) x - 1/2 g(t)^2 score(x, t) (Song et al. 2021, eq. 13; the field
``samplers.ode.ProbabilityFlow``) moves samples of p_t along a deterministic, invertible flow that keeps every marginal
p_t. Solving it from a small eps up to T maps data x to a latent z ("encode"); solving it back from T to eps maps z to
data ("decode"). With an exact score and an accurate solver, decode(encode(x)) = x, and z ~ p_T ~ the prior.

Solved by ``scorelab.solvers``: adaptive "dopri5" (the default, rtol = atol = 1e-5 as Song et al. 2021) or a
fixed-step tableau with ``steps=``. Shapes are [B, *dims]; nothing leaves the device during a solve.
"""

from __future__ import annotations

import torch

from ._checks import batch_view, check_batch, check_finite, check_sampling_args, check_sde
from .samplers._common import CountedScore, check_option
from .samplers.ode import ProbabilityFlow
from .sde import SDE, ScoreFn
from .solvers import ADAPTIVE, SOLVERS, solve


def check_solver_options(sde: SDE, solver: str, rtol: float, atol: float, steps: int | None, eps: float):
    """Validate the ODE options shared by encode/decode/log_likelihood (fixed: steps; adaptive: rtol/atol)."""
    check_sde(sde)
    for name, v in (("solver", solver), ("rtol", rtol), ("atol", atol), ("eps", eps)):  # eps: the data-side end
        check_option(name, v, sde, 1e-5)
    if solver in ADAPTIVE and steps is not None:
        raise ValueError(f"solver={solver!r} is adaptive and takes rtol/atol, not steps; "
                         f"for a fixed number of steps use one of {list(SOLVERS)}.")
    if solver not in ADAPTIVE and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"solver={solver!r} is a fixed-step method: pass steps= (a positive integer), "
                         f"got steps={steps!r}.")


def _flow(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, t0: float, t1: float, solver: str, rtol: float,
          atol: float, steps: int | None, eps: float, name: str) -> tuple[torch.Tensor, int]:
    check_sampling_args(score_fn, sde)
    check_batch(x, name)
    check_finite(x, name)
    check_solver_options(sde, solver, rtol, atol, steps, eps)
    counted = CountedScore(score_fn)
    with torch.no_grad():
        out = solve(ProbabilityFlow(counted, sde), x, t0, t1, solver, rtol, atol, steps)
    return out, counted.count


def encode(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, solver: str = "dopri5", rtol: float = 1e-5,
           atol: float = 1e-5, steps: int | None = None, eps: float = 1e-5, return_nfe: bool = False):
    """Latent z = x(T) of the probability-flow ODE started at x(eps) = x: [B, *dims] (and nfe if asked)."""
    z, nfe = _flow(score_fn, sde, x, float(eps), sde.T, solver, rtol, atol, steps, eps, "x")
    return (z, nfe) if return_nfe else z


def decode(score_fn: ScoreFn, sde: SDE, z: torch.Tensor, solver: str = "dopri5", rtol: float = 1e-5,
           atol: float = 1e-5, steps: int | None = None, eps: float = 1e-5, return_nfe: bool = False):
    """Data x = x(eps) of the probability-flow ODE solved backwards from x(T) = z: [B, *dims]."""
    x, nfe = _flow(score_fn, sde, z, sde.T, float(eps), solver, rtol, atol, steps, eps, "z")
    return (x, nfe) if return_nfe else x


def round_trip_error(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, **options) -> torch.Tensor:
    """Relative error |decode(encode(x)) - x| / |x| per example, [B]: how invertible the solved flow is."""
    x_back = decode(score_fn, sde, encode(score_fn, sde, x, **options), **options)
    return (x_back - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)


def slerp(z_a: torch.Tensor, z_b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation per example: [n, B, *dims] for z_a, z_b [B, *dims] and lam [n] in [0, 1].

    slerp = sin((1 - lam) theta) / sin(theta) z_a + sin(lam theta) / sin(theta) z_b, cos(theta) the cosine
    of the angle between z_a and z_b. Gaussian latents concentrate near a sphere, so this keeps intermediate
    codes at a typical norm, where a straight line would pass through the atypical centre (White 2016).
    Nearly parallel pairs fall back to linear interpolation, the limit as theta -> 0.
    """
    a, b = z_a.flatten(1), z_b.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(torch.finfo(a.dtype).tiny)
    theta = torch.acos(cos.clamp(-1.0, 1.0))  # [B]
    lam = lam.to(a.dtype)[:, None]  # [n, 1]
    sin = torch.sin(theta)
    small = sin < 1e-6
    safe = torch.where(small, torch.ones_like(sin), sin)
    wa = torch.where(small, 1 - lam, torch.sin((1 - lam) * theta) / safe)  # [n, B]
    wb = torch.where(small, lam.expand_as(wa), torch.sin(lam * theta) / safe)
    return batch_view(wa, z_a[None]) * z_a[None] + batch_view(wb, z_b[None]) * z_b[None]


def interpolate(score_fn: ScoreFn, sde: SDE, x_a: torch.Tensor, x_b: torch.Tensor, n: int = 8,
                **options) -> torch.Tensor:
    """Decoded slerp path between the latents of x_a and x_b [B, *dims]: [n, B, *dims], ends included;
    ``options`` are the solver options of ``encode``/``decode``."""
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n (the number of points on the path, ends included) must be an integer >= 2, got {n!r}.")
    check_batch(x_a, "x_a")
    check_batch(x_b, "x_b")
    if x_a.shape != x_b.shape:
        raise ValueError(f"x_a and x_b must have the same shape [B, *dims], got {tuple(x_a.shape)} and "
                         f"{tuple(x_b.shape)}.")
    z = encode(score_fn, sde, torch.cat([x_a, x_b]), **options)
    path = slerp(*z.chunk(2), torch.linspace(0, 1, n, dtype=z.dtype, device=z.device))  # [n, B, *dims]
    return decode(score_fn, sde, path.reshape(-1, *x_a.shape[1:]), **options).reshape(n, *x_a.shape)
