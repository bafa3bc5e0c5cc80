"""EDM's deterministic second-order sampler (Karras et al. 2022, Algorithm 1 with S_churn = 0).

In the scaled variable y = x / m(t) and noise level sigma = s(t) / m(t) the probability-flow ODE of every
linear process is dy/dsigma = (y - D(y, sigma)) / sigma, D = x0_hat = (x + s^2 score) / m. Heun steps on the
Karras grid (rho = 7) from sigma(T) to sigma_min, then one Euler step to sigma = 0 (which returns D):
N levels cost 2N - 1 evaluations, so N = (nfe + 1) // 2.
"""

from __future__ import annotations

import torch

from ._common import data_prediction, schedule, times_like
from .grids import end_time, karras


def edm_heun(score, sde, shape, nfe, generator, callback, dtype, device, sigma_min: float = 0.002,
             rho: float = 7.0):
    N = (nfe + 1) // 2
    times = karras(sde, N - 1, end_time(sde, sigma_min), rho=rho) if N > 1 else torch.tensor([float(sde.T)],
                                                                                               dtype=torch.float64)
    m, s = schedule(sde, times, torch.float64)
    sig = torch.cat([s / m, torch.zeros(1, dtype=torch.float64)])
    m, s, sig = (v.to(dtype=dtype, device=device) for v in (m, s, sig))
    t_d = times.to(dtype=dtype, device=device)
    y = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype) / m[0]

    def denoise(y, i):
        x = m[i] * y
        return data_prediction(score(x, times_like(t_d[i], x)), x, m[i], s[i])

    for i in range(N):
        d = (y - denoise(y, i)) / sig[i]
        y_next = y + (sig[i + 1] - sig[i]) * d
        if i < N - 1:
            d2 = (y_next - denoise(y_next, i + 1)) / sig[i + 1]
            y_next = y + (sig[i + 1] - sig[i]) * 0.5 * (d + d2)
        y = y_next
        if callback is not None:
            callback(i, t_d[i + 1] if i < N - 1 else t_d[i].new_zeros(()), y)
    return y
