"""Samplers of the reverse-time SDE dx = [a(t) x - g(t)^2 score(x, t)] dt + g(t) dw_bar (Anderson 1982).

- ``euler_maruyama``: x_{t-dt} = x - [a x - g^2 score] dt + g sqrt(dt) z on a uniform t grid.
- ``reverse_diffusion``: the predictor of Song et al. 2021 built from the forward discretisation
  x_t = x_{t-dt} + f + G z (SMLD for VE, DDPM for VP):  x_{t-dt} = x - f + G^2 score + G z.
- ``ancestral``: draw x_s ~ q(x_s | x_t, x_0 = x0_hat(x_t)), the exact Gaussian posterior of the forward
  process; for VP this is DDPM's ancestral step (Ho et al. 2020), for VE the SMLD ancestral step, and it
  serves every linear process. Its last step lands on t = 0 with zero variance, i.e. returns x0_hat.

All take nfe steps (one score evaluation each) from T down to ``eps`` (default 1e-3); the last step adds no
noise (Song et al. 2021 return the mean of the last step).
"""

from __future__ import annotations

import torch

from ._common import data_prediction, gaussian, schedule, times_like


def euler_maruyama(score, sde, shape, nfe, generator, callback, dtype, device, eps: float = 1e-3):
    times = torch.linspace(sde.T, eps, nfe + 1, dtype=torch.float64)
    dt = (sde.T - eps) / nfe
    t_d = times.to(dtype=dtype, device=device)
    a = sde.drift_coeff(times).to(dtype=dtype, device=device)
    g2 = (sde.diffusion(times) ** 2 * dt).to(dtype=dtype, device=device)
    noise = (sde.diffusion(times) * dt**0.5).to(dtype=dtype, device=device)
    x = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    for i in range(nfe):
        s = score(x, times_like(t_d[i], x))
        x = x - a[i] * dt * x + g2[i] * s
        if i < nfe - 1:
            x = x + noise[i] * gaussian(shape, generator, dtype, device)
        if callback is not None:
            callback(i, t_d[i + 1], x)
    return x


def reverse_diffusion(score, sde, shape, nfe, generator, callback, dtype, device, eps: float = 1e-3):
    times = torch.linspace(sde.T, eps, nfe + 1, dtype=dtype, device=device)
    dt = (sde.T - eps) / nfe
    x = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    for i in range(nfe):
        t = times_like(times[i], x)
        f, G = sde._discretize(x, t, dt)  # forward step from t - dt to t
        G = G[:1].reshape(())  # G depends on t only
        x = x - f + G * G * score(x, t)
        if i < nfe - 1:
            x = x + G * gaussian(shape, generator, dtype, device)
        if callback is not None:
            callback(i, times[i + 1], x)
    return x


def ancestral_coefficients(sde, times: torch.Tensor, dtype, device):
    """Posterior q(x_s | x_t, x_0) = N(c_x x_t + c_0 x_0, v) for consecutive grid times t > s:
    alpha = m_t / m_s, var_ts = s_t^2 - alpha^2 s_s^2, c_x = alpha s_s^2 / s_t^2, c_0 = m_s var_ts / s_t^2,
    v = var_ts s_s^2 / s_t^2. Returns c_x, c_0, sqrt(v), each [steps]."""
    m, s = schedule(sde, times, torch.float64)
    alpha = m[:-1] / m[1:]
    var_ts = (s[:-1] ** 2 - alpha**2 * s[1:] ** 2).clamp_min(0.0)
    cx = alpha * s[1:] ** 2 / s[:-1] ** 2
    c0 = m[1:] * var_ts / s[:-1] ** 2
    std = (var_ts * s[1:] ** 2 / s[:-1] ** 2).sqrt()
    return [c.to(dtype=dtype, device=device) for c in (cx, c0, std, m, s)]


def ancestral(score, sde, shape, nfe, generator, callback, dtype, device):
    times = torch.linspace(sde.T, 0.0, nfe + 1, dtype=torch.float64)
    cx, c0, std, m, s = ancestral_coefficients(sde, times, dtype, device)
    t_d = times.to(dtype=dtype, device=device)
    x = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    for i in range(nfe):
        x0 = data_prediction(score(x, times_like(t_d[i], x)), x, m[i], s[i])
        x = cx[i] * x + c0[i] * x0
        if i < nfe - 1:
            x = x + std[i] * gaussian(shape, generator, dtype, device)
        if callback is not None:
            callback(i, t_d[i + 1], x)
    return x
