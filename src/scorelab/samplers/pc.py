"""Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3), composed from the tables of ``steps``: at
each grid time t_i, ``corrector_steps`` corrector moves, then one predictor step to t_{i+1}. ``resample`` = r > 1
repeats each step r times, backing up with the forward kernel in between (RePaint, Lugmayr et al. 2022, jump
length 1), so that a constraint and the free part harmonise; steps = nfe // (r (1 + corrector_steps)).
``euler_maruyama``, ``reverse_diffusion``, ``ancestral`` are PC without a corrector (ancestral's eps = 0).

snr = 0.04, not Song et al.'s 0.16 (their CIFAR-10 VE value): on scores trained by scorelab the corrector at 0.16
inflates every component at small noise (docs/samplers.md, "PC on learned scores").
"""

from __future__ import annotations

from ._common import Schedule, method
from .steps import CORRECTORS, PREDICTORS, renoise


@method(cost=lambda o: o["resample"] * (1 + (0 if o["corrector"] == "none" else o["corrector_steps"])))
def pc(score, sde, x, times, generator, callback, predictor: str = "reverse_diffusion", corrector: str = "langevin",
       snr: float = 0.04, corrector_steps: int = 1, step_size: float = 2e-5, eps: float = 1e-3, resample: int = 1):
    S = Schedule(sde, times, x)
    pred, corr = PREDICTORS[predictor], CORRECTORS[corrector]
    for i in range(len(S)):
        for r in range(resample):
            for _ in range(0 if corr is None else corrector_steps):
                x = callback.project(corr(score, x, i, S, generator, snr, step_size), S.t_d[i])
            x = pred(score, x, i, S, generator, last=i == len(S) - 1 and r == resample - 1)
            if r < resample - 1:
                x = callback.project(renoise(callback.project(x, S.t_d[i + 1]), i, S, generator), S.t_d[i])
        x = callback(i, S.t_d[i + 1], x)
    return x


def predictor_only(name: str, eps_default: float = 1e-3):
    """The method that runs predictor ``name`` of ``steps.PREDICTORS`` alone: PC without a corrector."""
    @method(cost=lambda o: o["resample"])
    def run(score, sde, x, times, generator, callback, eps: float = eps_default, resample: int = 1):
        return pc(score, sde, x, times, generator, callback, predictor=name, corrector="none", resample=resample)
    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"PC with predictor {name!r} and no corrector (see scorelab.samplers.steps.{name})."
    return run


euler_maruyama = predictor_only("euler_maruyama")
reverse_diffusion = predictor_only("reverse_diffusion")
ancestral = predictor_only("ancestral", eps_default=0.0)
