"""Pieces every sampler shares: the result type, the counted score, the denoiser x0_hat and time tensors.

A sampler receives a ``CountedScore``: it counts evaluations in a Python int (no host round trip), refuses to
go past the budget and checks the score's output shape once, on the first call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SampleResult:
    x: torch.Tensor  # [B, *dims] final samples
    nfe: int  # score evaluations actually used (never above the budget)


class BudgetExceeded(RuntimeError):
    """Raised by CountedScore when a sampler asks for more evaluations than its budget."""


class CountedScore:
    """score_fn(x, t) with a call counter, a hard budget and a one-time output-shape check."""

    def __init__(self, score_fn, budget: int):
        self.fn, self.budget, self.count = score_fn, budget, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.count >= self.budget:
            raise BudgetExceeded(f"the sampler needs more than nfe={self.budget} score evaluations")
        out = self.fn(x, t)
        if self.count == 0 and (not isinstance(out, torch.Tensor) or out.shape != x.shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"score_fn(x, t) must return a tensor shaped like x {tuple(x.shape)}, got {got}.")
        self.count += 1
        return out


def times_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 0-d time ``t`` as the [B] tensor a score function expects (a view, no copy, no host sync)."""
    return t.expand(x.shape[0])


def schedule(sde, times: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """m(t) and s(t) on a time grid, computed in float64 and cast once to the sampling dtype."""
    t64 = times.to(torch.float64)
    return sde.marginal_scale(t64).to(dtype), sde.marginal_std(t64).to(dtype)


def data_prediction(score: torch.Tensor, x: torch.Tensor, m, s) -> torch.Tensor:
    """Tweedie's x0_hat = (x + s(t)^2 score(x, t)) / m(t) = E[x_0 | x_t = x]; m, s 0-d or broadcastable."""
    return (x + s * s * score) / m


def gaussian(shape, generator, dtype, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)
