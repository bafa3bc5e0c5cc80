"""Input validation and the one broadcasting helper.

Every public entry point validates its inputs here, with errors that say what was wrong and what to do.
Inner loops (sampler steps, ODE right-hand sides) call the unchecked internals instead, so no check costs a
host round trip per step.
"""

from __future__ import annotations

import math
import operator

import torch


def batch_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-example tensor ``v`` [B] so it broadcasts against ``x`` [B, *dims]."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def axpy(x: torch.Tensor, v: torch.Tensor, a: float, inplace: bool = False) -> torch.Tensor:
    """x + a v for a Python float a: one fused kernel (``alpha=``) when a fits x's dtype, else applied as two
    square-root factors so that a low-precision dtype never holds a itself (float16 with a = s^2 = 1e8)."""
    if abs(a) <= torch.finfo(x.dtype).max:
        return x.add_(v, alpha=a) if inplace else torch.add(x, v, alpha=a)
    k = math.sqrt(abs(a))
    return x.add_(math.copysign(k, a) * (k * v)) if inplace else x + math.copysign(k, a) * (k * v)


def check_batch(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, *dims], got {type(x).__name__}.")
    if x.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension: shape [B, *dims], got a 0-d tensor.")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; convert with x.float().")
    return x


def check_shape(shape) -> tuple[int, ...]:
    """A batch shape (B, *dims) of positive integers, as a tuple."""
    try:
        shape = tuple(operator.index(v) for v in shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple of integers (B, *dims), got {shape!r}.") from None
    if len(shape) < 1 or any(v < 1 for v in shape):
        raise ValueError(f"shape must be (B, *dims) with positive sizes, got {shape}.")
    return shape


def check_finite(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name} contains {bad} non-finite value(s) (NaN or inf); clean or drop those entries first."
        )
    return x


def check_time(t, x: torch.Tensor, T: float = 1.0, name: str = "t") -> torch.Tensor:
    """Return ``t`` as a [B] tensor on x's device/dtype; a Python number or 0-d tensor is broadcast."""
    if not isinstance(t, torch.Tensor):
        if not isinstance(t, (int, float)):
            raise TypeError(f"{name} must be a float or a tensor of shape [B], got {type(t).__name__}.")
        t = torch.tensor(float(t))
    t = t.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
    B = x.shape[0]
    if t.ndim == 0:
        t = t.expand(B)
    elif t.shape != (B,):
        raise ValueError(
            f"{name} must be a scalar or have shape [B] = [{B}] to match x of shape {tuple(x.shape)}, "
            f"got shape {tuple(t.shape)}."
        )
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf; times must lie in [0, {T}].")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0.0 or hi > T * (1 + 1e-6):
        raise ValueError(f"{name} must lie in [0, {T}], got values in [{lo:.6g}, {hi:.6g}].")
    return t


def check_positive(value: float, name: str) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return float(value)


def check_sde(sde) -> None:
    from .sde import SDE

    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scorelab SDE (VESDE, VPSDE, SubVPSDE), got {type(sde).__name__}.")


def check_sampling_args(score_fn, sde, generator=None, nfe=1) -> None:
    """The arguments every sampling entry point shares: a score callable, a scorelab SDE, a torch.Generator or
    None, a budget of score evaluations."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe (the budget of score evaluations) must be an integer >= 1, got {nfe!r}.")
    if not callable(score_fn):
        raise TypeError("score_fn must be a callable score_fn(x, t) -> tensor shaped like x.")
    check_sde(sde)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}; "
                        "for a seed use torch.Generator().manual_seed(seed).")
