"""EDM's deterministic second-order sampler (Karras et al. 2022, Algorithm 1 with S_churn = 0).

In the scaled variable y = x / m(t) and noise level sigma = s(t) / m(t) the probability-flow ODE of every
linear process (VE, VP, sub-VP alike) is dy/dsigma = (y - D) / sigma = eps_hat = -s(t) score(x, t), with
D = x0_hat. Heun steps on the Karras grid in sigma (rho = 7) from min(sigma_max, the process's sigma(T)) down
to sigma_min, with EDM's sigma_max = 80 and sigma_min = 0.002 for every process (Karras et al. 2022, Table 1:
a steep VP schedule reaches sigma(T) ~ 1e11, and rho-spacing from there leaves the last steps far too long),
then one Euler step to sigma = 0, which returns Tweedie's x0_hat: N Heun steps cost
2N + 1 evaluations. The state is kept as x = m y, so a step is
x' = (m'/m) x + m' (sigma' - sigma) eps_hat with float64 coefficients: nothing of size 1/m(T) is ever formed
(y itself overflows float16 on VPSDE(beta_max=100), where sigma(T) ~ 1e11).
"""

from __future__ import annotations

import torch

from ._common import Schedule, method


@method(cost=2, reserve=1, grid="karras", end="sigma_min", begin="sigma_max")
def edm_heun(score, sde, x, times, generator, callback, sigma_min: float = 0.002, sigma_max: float = 80.0,
             rho: float = 7.0):
    S = Schedule(sde, torch.cat([times.to(torch.float64), times.new_zeros(1, dtype=torch.float64)]), x)
    N, m, s = len(S), S.m, S.s
    sig = (S.s64 / S.m64).tolist()
    for i in range(N):
        cx, ce = m[i + 1] / m[i], m[i + 1] * (sig[i + 1] - sig[i])
        d = -(s[i] * score(x, S.tb(i, x)))
        x_next = cx * x + ce * d
        if i < N - 1:  # Heun's correction; the last step, to sigma = 0, is Euler
            x_next = cx * x + (0.5 * ce) * (d - s[i + 1] * score(x_next, S.tb(i + 1, x_next)))
        x = callback(i, S.t_d[i + 1], x_next)
    return x
