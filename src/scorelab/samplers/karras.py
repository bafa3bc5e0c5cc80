"""EDM's deterministic second-order sampler (Karras et al. 2022, Algorithm 1 with S_churn = 0).

Heun steps of the probability-flow ODE in EDM's variables (``ode.flow_in_sigma``: dy/dsigma = -s(t) score(x, t) for
y = x / m and sigma = s / m, one ODE for VE, VP and sub-VP) on the Karras grid (rho = 7) from min(sigma_max, sigma(T))
down to sigma_min, with EDM's sigma_max = 80 and sigma_min = 0.002 for every process (Karras et al. 2022, Table 1: a
steep VP schedule reaches sigma(T) ~ 1e11, and rho-spacing from there leaves the last steps far too long), then one
Euler step to sigma = 0, which returns Tweedie's x0_hat: N Heun steps cost 2N + 1 evaluations.
"""

from __future__ import annotations

import torch

from ._common import method
from .ode import flow_in_sigma


@method(cost=2, reserve=1, grid="karras", end="sigma_min", begin="sigma_max", deterministic=True)
def edm_heun(score, sde, x, times, generator, callback, sigma_min: float = 0.002, sigma_max: float = 80.0,
             rho: float = 7.0):
    x = flow_in_sigma(score, sde, x, times, "heun", callback)
    end = torch.stack([times[-1].to(torch.float64), torch.zeros((), dtype=torch.float64)])
    return flow_in_sigma(score, sde, x, end, "euler", callback, first=len(times) - 1)
