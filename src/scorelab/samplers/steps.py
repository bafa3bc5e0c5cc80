"""Reverse-time steps: predictors and correctors as pure functions of (score, x, i, S, generator).

S is the grid's ``Schedule`` (float64 coefficients as Python floats), i the step t_i -> t_{i+1}; ``last``: the
final step adds no noise (Song et al. 2021 return its mean). A new step is one function here plus one entry in
PREDICTORS or CORRECTORS: it then works in ``pc``, as a method (``predictor_only``) and in inpainting.

Predictors of the reverse SDE dx = [a x - g^2 score] dt + g dw_bar (Anderson 1982):
- ``euler_maruyama``: x <- x - a dt x + g^2 dt score + g sqrt(dt) z.
- ``reverse_diffusion`` (Song et al. 2021, eq. 47): from the forward kernel x_t = r x_{t-dt} + G z
  (``SDE.transition``; SMLD for VE, DDPM for VP):  x <- (2 - r) x + G^2 score + G z.
- ``ancestral``: x_s ~ q(x_s | x_t, x_0 = x0_hat(x_t)), the exact Gaussian posterior of the forward kernel
  (DDPM's ancestral step for VP, Ho et al. 2020; SMLD's for VE); landing on t = 0 it returns x0_hat.
Correctors (Langevin moves at t_i, x <- x + e score + sqrt(2 e) z):
- ``langevin``: e = 2 alpha (snr |z| / |score|)^2 with batch-mean norms and alpha = r^2 (1 for VE, 1 - beta_i
  for DDPM) (Song et al. 2021, Algorithms 4-5; PC's default snr is 0.04, see ``pc``).
- ``ald``: annealed-Langevin steps e = step_size s(t_i)^2 / s(t_N)^2 (Song & Ermon 2019).
Scales multiply in fused kernels (``_checks.axpy``), split in square roots where a scale would overflow the
dtype (float16 with G^2 = 1e8).
"""

from __future__ import annotations

import math

from .._checks import axpy
from ._common import gaussian


def euler_maruyama(score, x, i, S, generator, last):
    gn = S.gn[i]
    x = axpy((1 + S.em[i]) * x, score(x, S.tb(i, x)), gn * gn)
    return x if last else axpy(x, gaussian(x, generator), gn, inplace=True)


def reverse_diffusion(score, x, i, S, generator, last):
    G = S.G[i]
    x = axpy((2 - S.r[i]) * x, score(x, S.tb(i, x)), G * G)
    return x if last else axpy(x, gaussian(x, generator), G, inplace=True)


def _ancestral(S):
    """q(x_s | x_t, x_0) = N(c_x x_t + c_0 x_0, v) for t = t_i > s = t_{i+1}: c_x = r s_s^2 / s_t^2,
    c_0 = m_s G^2 / s_t^2, v = G^2 s_s^2 / s_t^2; with x_0 = (x + s_t (s_t score)) / m_t the step is
    (c_x + c_0 / m_t) x + (c_0 s_t / m_t) (s_t score) + sqrt(v) z."""
    m, s, r, G = S.m64, S.s64, S.r64, S.G64
    c0m = m[1:] / m[:-1] * (G / s[:-1]) ** 2
    return r * (s[1:] / s[:-1]) ** 2 + c0m, c0m * s[:-1], G * s[1:] / s[:-1]


def ancestral(score, x, i, S, generator, last):
    cx, ce, cz = (c[i] for c in S.coef(_ancestral))
    x = axpy(cx * x, score(x, S.tb(i, x)), ce * S.s[i])
    return x if last or cz == 0 else axpy(x, gaussian(x, generator), cz, inplace=True)


def langevin_move(x, sc, u, z):
    return x + 0.5 * u * (u * sc) + u * z


def langevin(score, x, i, S, generator, snr, step_size):
    sc, z = score(x, S.tb(i, x)), gaussian(x, generator)
    # batch-mean norms as Song et al.: a per-sample ratio explodes where the score vanishes
    ratio = z.reshape(len(z), -1).norm(dim=1).mean() / sc.reshape(len(z), -1).norm(dim=1).mean().clamp_min(1e-30)
    return langevin_move(x, sc, (2 * S.r[i] * snr) * ratio, z)  # u = sqrt(2 e), sqrt(alpha) = r


def ald(score, x, i, S, generator, snr, step_size):
    u = math.sqrt(2 * step_size) * S.s[i] / S.s[-1]
    return langevin_move(x, score(x, S.tb(i, x)), u, gaussian(x, generator))


def renoise(x, i, S, generator):
    """x_{t_i} ~ p(x_{t_i} | x_{t_{i+1}}), the forward kernel: back up one step (RePaint's jump)."""
    return S.r[i] * x + S.G[i] * gaussian(x, generator)


PREDICTORS = {"reverse_diffusion": reverse_diffusion, "euler_maruyama": euler_maruyama, "ancestral": ancestral}
CORRECTORS = {"langevin": langevin, "ald": ald, "none": None}
