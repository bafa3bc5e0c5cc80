"""Exact conversions between the three things a network may predict for x_t = m(t) x_0 + s(t) z.

With score = grad_x log p_t(x), Tweedie's formula E[x_0 | x_t] = (x_t + s^2 score) / m and
E[z | x_t] = -s score give (m = m(t), s = s(t) of the forward SDE):

    eps   = -s score                 score = -eps / s
    x0    = (x + s^2 score) / m      score = (m x0 - x) / s^2

Each pair is a mutual inverse for s(t) > 0 (never evaluate at t = 0 where s = 0 for every process here).
All take x [B, *dims] (the noisy point), t [B] and the SDE, and return [B, *dims].
"""

from __future__ import annotations

import torch

from .._checks import batch_view
from ..tweedie import posterior_mean


def _m_s(x: torch.Tensor, t: torch.Tensor, sde):
    return batch_view(sde.marginal_scale(t), x), batch_view(sde.marginal_std(t), x)


def score_to_eps(score: torch.Tensor, x: torch.Tensor, t: torch.Tensor, sde) -> torch.Tensor:
    """eps_hat = -s(t) score: the predicted noise E[z | x_t = x]."""
    return -_m_s(x, t, sde)[1] * score


def eps_to_score(eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor, sde) -> torch.Tensor:
    """score = -eps_hat / s(t)."""
    return -eps / _m_s(x, t, sde)[1]


def score_to_x0(score: torch.Tensor, x: torch.Tensor, t: torch.Tensor, sde) -> torch.Tensor:
    """x0_hat = (x + s(t)^2 score) / m(t): Tweedie's posterior mean E[x_0 | x_t = x]."""
    return posterior_mean(x, score, *_m_s(x, t, sde))


def x0_to_score(x0: torch.Tensor, x: torch.Tensor, t: torch.Tensor, sde) -> torch.Tensor:
    """score = (m(t) x0_hat - x) / s(t)^2."""
    m, s = _m_s(x, t, sde)
    return (m * x0 - x) / (s * s)
