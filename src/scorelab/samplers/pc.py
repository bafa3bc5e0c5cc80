"""Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3).

At each time of a uniform grid from T to eps: ``corrector_steps`` corrector moves at that time, then one
predictor step to the next time. Predictors: "reverse_diffusion" (default), "euler_maruyama". Correctors:

- "langevin": x <- x + e score + sqrt(2 e) z with the signal-to-noise step rule
  e = 2 alpha (snr |z| / |score|)^2, alpha = (m(t) / m(t - dt))^2 (1 for VE, 1 - beta_i for VP);
  snr = 0.16 is the paper's default (Song et al. 2021, CIFAR-10 configs).
- "ald": annealed-Langevin steps x <- x + e score + sqrt(2 e) z with e = step_size * s(t)^2 / s(eps)^2.

nfe counts predictor and corrector evaluations: steps = nfe // (1 + corrector_steps).
"""

from __future__ import annotations

import torch

from ._common import gaussian, times_like

PREDICTORS = ("reverse_diffusion", "euler_maruyama")
CORRECTORS = ("langevin", "ald", "none")


def pc(score, sde, shape, nfe, generator, callback, dtype, device, predictor: str = "reverse_diffusion",
       corrector: str = "langevin", snr: float = 0.16, corrector_steps: int = 1, step_size: float = 2e-5,
       eps: float = 1e-3):
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; choose one of {PREDICTORS}.")
    if corrector not in CORRECTORS:
        raise ValueError(f"unknown corrector {corrector!r}; choose one of {CORRECTORS}.")
    M = 0 if corrector == "none" else int(corrector_steps)
    if M < 0:
        raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}.")
    N = nfe // (1 + M)
    if N < 1:
        raise ValueError(f"nfe={nfe} is too small for one predictor step plus {M} corrector steps.")
    dt = (sde.T - eps) / N
    times = torch.linspace(sde.T, eps, N + 1, dtype=torch.float64)
    m = sde.marginal_scale(times)
    alpha = (m / sde.marginal_scale((times - dt).clamp_min(0.0))) ** 2
    s2 = sde.marginal_std(times) ** 2
    ald = (step_size * s2 / s2[-1]).to(dtype=dtype, device=device)
    alpha = alpha.to(dtype=dtype, device=device)
    a = sde.drift_coeff(times).to(dtype=dtype, device=device) * dt
    g = sde.diffusion(times)
    g2, gn = (g**2 * dt).to(dtype=dtype, device=device), (g * dt**0.5).to(dtype=dtype, device=device)
    t_d = times.to(dtype=dtype, device=device)
    x = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)

    for i in range(N):
        tb = times_like(t_d[i], x)
        for _ in range(M):
            sc = score(x, tb)
            z = gaussian(shape, generator, dtype, device)
            if corrector == "langevin":
                # batch-mean norms as Song et al.: a per-sample ratio explodes where the score vanishes
                ratio = z.flatten(1).norm(dim=1).mean() / sc.flatten(1).norm(dim=1).mean().clamp_min(1e-30)
                e = 2 * alpha[i] * (snr * ratio) ** 2
            else:
                e = ald[i]
            x = x + e * sc + (2 * e).sqrt() * z
        sc = score(x, tb)
        if predictor == "reverse_diffusion":
            f, G = sde._discretize(x, tb, dt)
            G = G[:1].reshape(())
            x = x - f + G * G * sc
            noise = G
        else:
            x = x - a[i] * x + g2[i] * sc
            noise = gn[i]
        if i < N - 1:
            x = x + noise * gaussian(shape, generator, dtype, device)
        if callback is not None:
            callback(i, t_d[i + 1], x)
    return x
