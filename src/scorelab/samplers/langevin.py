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

from .._checks import batch_view
from ..ladders import langevin_step_size
from ._common import Schedule, gaussian, method, posterior_mean
from .steps import ald, langevin_move


@method(grid=None, end="t", start=lambda sde, o: o["init_std"])
def langevin(score, sde, x, times, generator, callback, step_size: float = 1e-2, t: float = 1e-3,
             init_std: float = 5.0):
    tt = times[0].to(dtype=x.dtype, device=x.device)
    u = math.sqrt(step_size)
    for i in range(len(times) - 1):
        x = callback(i, tt, langevin_move(x, score(x, tt.expand(x.shape[0])), u, gaussian(x, generator)))
    return x


def _levels(budget, o):
    T = o["steps_per_level"] or max(1, min(5, budget // 10))  # many levels, few steps each (Song & Ermon 2020)
    L = o["n_levels"] or max(1, budget // T)
    if budget < 1 or L * T > budget:
        raise ValueError(f"annealed_langevin: n_levels * steps_per_level = {L * T} exceeds the budget of {budget} "
                         f"Langevin steps{' (nfe minus 1 for the final Tweedie step)' if o['denoise'] else ''}; "
                         "raise nfe or lower n_levels / steps_per_level.")
    return L, T


@method(steps=lambda nfe, o: _levels(nfe - o["denoise"], o)[0] - 1, grid="log_snr", end="sigma_min",
        noisy_end=lambda o: not o["denoise"])
def annealed_langevin(score, sde, x, times, generator, callback, n_levels: int | None = None,
                      steps_per_level: int | None = None, step_size: float | None = None, sigma_min: float = 0.01,
                      denoise: bool = True):
    S = Schedule(sde, times, x)  # sigma_L = 0.01 (Song & Ermon 2019)
    L = len(S) + 1
    budget = int(score.budget - score.count) - denoise
    T = _levels(budget, {"steps_per_level": steps_per_level, "n_levels": L, "denoise": denoise})[1]
    if step_size is None:  # Technique 4 on the ladder sigma = s/m, in units of s(t_L)^2
        sig = S.s64 / S.m64
        step_size = langevin_step_size(sig, T) / float(sig[-1]) ** 2 * S.s[-1] ** 2 if L > 1 else 1e-2
    for k in range(L * T):  # T steps at level i = k // T; alpha_i = step_size s_i^2 / s_L^2 is 2 e of ``ald``
        x = callback(k, S.t_d[k // T], ald(score, x, k // T, S, generator, None, step_size / 2))
    if denoise:
        x = callback(L * T, S.t_d[-1], posterior_mean(x, score(x, S.tb(L - 1, x)), S.m[-1], S.s[-1]))
    return x


@method(reserve=1, grid=None, end="t", start=lambda sde, o: o["init_std"])
def mala(score, sde, x, times, generator, callback, energy_fn=None, step_size: float = 1e-2, t: float = 1e-3,
         init_std: float = 5.0):
    if energy_fn is None or not callable(energy_fn):
        raise ValueError("mala needs energy_fn=callable(x, t) -> [B] energy with p_t ∝ exp(-E); "
                         "use method='langevin' when no energy is available.")
    tt = times[0].to(dtype=x.dtype, device=x.device)
    tb, dims, inv2 = tt.expand(x.shape[0]), tuple(range(1, x.ndim)), 1.0 / (2 * step_size)
    sx, ex = score(x, tb), energy_fn(x, tb)
    for i in range(len(times) - 1):
        y = x + 0.5 * step_size * sx + math.sqrt(step_size) * gaussian(x, generator)
        sy, ey = score(y, tb), energy_fn(y, tb)
        # log q(x | y) - log q(y | x) for the Gaussian proposals N(. + (eps/2) score(.), eps I)
        fwd = (y - x - 0.5 * step_size * sx).pow(2).sum(dims)
        bwd = (x - y - 0.5 * step_size * sy).pow(2).sum(dims)
        log_acc = ex - ey + (fwd - bwd) * inv2
        accept = torch.log(torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)) < log_acc
        a = batch_view(accept, x)
        x, sx, ex = torch.where(a, y, x), torch.where(a, sy, sx), torch.where(accept, ey, ex)
        x = callback(i, tt, x)
    return x
