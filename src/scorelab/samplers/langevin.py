"""Langevin MCMC with a score: x <- x + (eps/2) score(x) + sqrt(eps) z (Song & Ermon 2019, notes sec. Langevin).

- ``langevin``: fixed step at one small time t, from a broad Gaussian start N(0, init_std^2 I). On a mixture
  its stationary law is right but its mixing between separated modes is not: from a broad start it returns
  mode weights set by the start, not by the mixture (the notes' mixture-weight pitfall).
- ``annealed_langevin``: the NCSN ladder (Song & Ermon 2019): L noise levels t_1 > ... > t_L of the process,
  geometric in sigma = s(t)/m(t); T steps at each level with step alpha_i = eps s(t_i)^2 / s(t_L)^2
  (targets p_{t_i} in x space, so it serves VE, VP and sub-VP alike). eps defaults to Technique 4 of
  Song & Ermon 2020 (``scorelab.ladders.langevin_step_size``); an optional final Tweedie step
  x0_hat = (x + s^2 score) / m removes the last level's noise (Song & Ermon 2020).
- ``mala``: Metropolis-adjusted Langevin at fixed t, with the energy ``energy_fn(x, t) -> [B]`` (p ∝ exp(-E))
  used for the accept/reject test and the score for the proposal.
"""

from __future__ import annotations

import math

import torch

from ..ladders import langevin_step_size
from ._common import data_prediction, gaussian, schedule, times_like
from .grids import end_time


def langevin(score, sde, shape, nfe, generator, callback, dtype, device, step_size: float = 1e-2,
             t: float = 1e-3, init_std: float = 5.0):
    tt = torch.tensor(float(t), dtype=dtype, device=device)
    x = init_std * gaussian(shape, generator, dtype, device)
    noise = math.sqrt(step_size)
    for i in range(nfe):
        x = x + 0.5 * step_size * score(x, times_like(tt, x)) + noise * gaussian(shape, generator, dtype, device)
        if callback is not None:
            callback(i, tt, x)
    return x


def annealed_langevin(score, sde, shape, nfe, generator, callback, dtype, device, n_levels: int | None = None,
                      steps_per_level: int | None = None, step_size: float | None = None, sigma_min: float = 0.01,
                      denoise: bool = True):
    budget = nfe - 1 if denoise else nfe
    if budget < 1:
        raise ValueError("annealed_langevin with denoise=True needs nfe >= 2 (one evaluation is the Tweedie step).")
    T = steps_per_level or max(1, min(5, budget // 10))  # many levels, few steps each (Song & Ermon 2020)
    L = n_levels or max(1, budget // T)
    if L * T > budget:
        raise ValueError(f"n_levels * steps_per_level = {L * T} exceeds the budget of {budget} Langevin steps "
                         f"(nfe={nfe}{', minus 1 for the final Tweedie step' if denoise else ''}).")
    eps = end_time(sde, sigma_min)  # sigma_L = 0.01 (Song & Ermon 2019)
    ends = torch.tensor([sde.T, eps], dtype=torch.float64)
    ratio = sde.marginal_std(ends) / sde.marginal_scale(ends)
    sig = torch.exp(torch.linspace(float(ratio[0].log()), float(ratio[1].log()), L, dtype=torch.float64))
    times = sde.t_from_std_ratio(sig).clamp(eps, sde.T)
    m, s = schedule(sde, times, torch.float64)
    if step_size is None:
        step_size = langevin_step_size(sig, T) / float(sig[-1]) ** 2 * float(s[-1]) ** 2 if L > 1 else 1e-2
    alphas = (step_size * s**2 / s[-1] ** 2)
    half, root = (0.5 * alphas).to(dtype=dtype, device=device), alphas.sqrt().to(dtype=dtype, device=device)
    t_d = times.to(dtype=dtype, device=device)
    x = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    k = 0
    for i in range(L):
        tb = times_like(t_d[i], x)
        for _ in range(T):
            x = x + half[i] * score(x, tb) + root[i] * gaussian(shape, generator, dtype, device)
            if callback is not None:
                callback(k, t_d[i], x)
            k += 1
    if denoise:
        md, sd = m[-1].to(dtype=dtype, device=device), s[-1].to(dtype=dtype, device=device)
        x = data_prediction(score(x, times_like(t_d[-1], x)), x, md, sd)
        if callback is not None:
            callback(k, t_d[-1], x)
    return x


def mala(score, sde, shape, nfe, generator, callback, dtype, device, energy_fn=None, step_size: float = 1e-2,
         t: float = 1e-3, init_std: float = 5.0):
    if energy_fn is None or not callable(energy_fn):
        raise ValueError("mala needs energy_fn=callable(x, t) -> [B] energy with p_t ∝ exp(-E); "
                         "use method='langevin' when no energy is available.")
    tt = torch.tensor(float(t), dtype=dtype, device=device)
    dims = tuple(range(1, len(shape)))
    x = init_std * gaussian(shape, generator, dtype, device)
    tb = times_like(tt, x)
    sx, ex = score(x, tb), energy_fn(x, tb)
    inv2 = 1.0 / (2 * step_size)
    for i in range(nfe - 1):
        y = x + 0.5 * step_size * sx + math.sqrt(step_size) * gaussian(shape, generator, dtype, device)
        sy, ey = score(y, tb), energy_fn(y, tb)
        # log q(x | y) - log q(y | x) for the Gaussian proposals N(. + (eps/2) score(.), eps I)
        fwd = (y - x - 0.5 * step_size * sx).pow(2).sum(dims)
        bwd = (x - y - 0.5 * step_size * sy).pow(2).sum(dims)
        log_acc = ex - ey + (fwd - bwd) * inv2
        u = torch.rand(shape[0], generator=generator, dtype=dtype, device=device)
        accept = torch.log(u) < log_acc
        a = accept.reshape((-1,) + (1,) * (len(shape) - 1))
        x, sx, ex = torch.where(a, y, x), torch.where(a, sy, sx), torch.where(accept, ey, ex)
        if callback is not None:
            callback(i, tt, x)
    return x
