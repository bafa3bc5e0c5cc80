"""Sampling from a score: ``sample(score_fn, sde, shape, method=..., nfe=...)`` and ``samplers()``.

Every method is one function in the table ``METHODS`` (name -> function), each in the module named after its
mathematics: ``langevin`` (Langevin MCMC, annealed Langevin, MALA), ``reverse_sde`` (Euler-Maruyama, reverse
diffusion, ancestral), ``pc`` (predictor-corrector), ``ode`` (probability-flow ODE), ``exponential``
(DPM-Solver++), ``karras`` (EDM Heun); ``grids`` holds the time-step grids.
"""

from __future__ import annotations

import torch

from ..sde import SDE
from ._common import BudgetExceeded, CountedScore, SampleResult
from .exponential import dpm_solver
from .karras import edm_heun
from .langevin import annealed_langevin, langevin, mala
from .ode import ode
from .pc import pc
from .reverse_sde import ancestral, euler_maruyama, reverse_diffusion

METHODS = {
    "langevin": langevin,
    "annealed_langevin": annealed_langevin,
    "mala": mala,
    "ancestral": ancestral,
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "pc": pc,
    "ode": ode,
    "dpm_solver": dpm_solver,
    "edm_heun": edm_heun,
}

# Default for learned scores (trained runs): chosen on runs trained by benchmarks/training.py, see docs/objectives.md
DEFAULT_METHOD, DEFAULT_NFE = "euler_maruyama", 400

__all__ = ["sample", "samplers", "SampleResult", "METHODS"]


def samplers() -> list[str]:
    """Every method name accepted by ``sample``."""
    return list(METHODS)


def sample(score_fn, sde: SDE, shape, method: str = DEFAULT_METHOD, nfe: int = DEFAULT_NFE,
           generator: torch.Generator | None = None, callback=None, dtype: torch.dtype = torch.float32,
           device=None, **options) -> SampleResult:
    """Draw ``shape`` = (B, *dims) samples with ``method`` using at most ``nfe`` score evaluations.

    score_fn(x [B, *dims], t [B]) -> [B, *dims] is any score (trained or exact); ``callback(i, t, x)`` is
    called after every step with the step index, the (0-d) time reached and the current x. ``options`` go to
    the method (see its module). Returns SampleResult(x [B, *dims], nfe = evaluations used).
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; choose one of {samplers()}.")
    if not callable(score_fn):
        raise TypeError("score_fn must be a callable score_fn(x, t) -> tensor shaped like x.")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scorelab SDE (VESDE, VPSDE, SubVPSDE), got {type(sde).__name__}.")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe (the budget of score evaluations) must be an integer >= 1, got {nfe!r}.")
    try:
        shape = tuple(int(v) for v in shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple (B, *dims), got {shape!r}.") from None
    if len(shape) < 1 or any(v < 1 for v in shape):
        raise ValueError(f"shape must be (B, *dims) with positive sizes, got {shape}.")
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise TypeError(f"dtype must be a floating-point torch dtype, got {dtype}.")
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable(i, t, x) or None.")
    if generator is not None and device is None:
        device = generator.device
    counted = CountedScore(score_fn, nfe)
    try:
        with torch.no_grad():
            x = METHODS[method](counted, sde, shape, nfe, generator, callback, dtype, device, **options)
    except BudgetExceeded:
        raise ValueError(f"method {method!r} with options {options} needs more than nfe={nfe} score evaluations"
                         " (an adaptive solver: raise nfe or loosen rtol/atol).") from None
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise TypeError(f"{err}; see the docstring of scorelab.samplers.{METHODS[method].__module__}") from None
        raise
    return SampleResult(x=x, nfe=counted.count)
