"""The finish chosen by the flow: on data that read wide, the default from 10 to 12 evaluations may end on DDPM's levels
with x0_hat blended with the sample it was read at (``unipc(..., denoise_to_zero=True, final_blend=g)``), where a
pilot shows that finish nearer the probability-flow ODE's own endpoint than the plain run.

A short run that stops at sigma_N leaves two errors: the solver's (UniPC on nine or ten steps stretches or shrinks
the modes by a few per cent) and the end's (the noise sigma_N left on, or, after a final x0_hat, the posterior's
spread taken off). On wide data the two are of one size and their signs vary from mixture to mixture, so no fixed
end wins everywhere (docs/samplers.md, "Wide data: DDPM's grid", "Batch 20 written blind"). The flow itself says
which is nearer: from one x_T, the ODE solved finely (``REF_STEPS`` steps of DPM-Solver++(3M) to the ladder's bottom,
``stop.LADDER``) ends at the point the short run stands for, and the mean distance between the two endpoints over a
pilot, E ||x_run - x_flow||, bounds the Wasserstein-1 distance between the two laws (Villani 2009: the coupling by a
common x_T is one coupling). ``choose_finish`` measures it for

- the plain run, the default as it is (UniPC to the level read for the score, ``stop.choose_sigma_min``), and
- UniPC on DDPM's time-uniform levels from the same start to ``ddpm_end(nfe)`` (the last level before 0 of DDPM's
  grid of nfe steps: 0.34 at 10), its last evaluation spent on x0_hat, blended as x0_hat + g (x_N - x0_hat) with
  every g of ``BLENDS`` (0: x0_hat; 1: the noise left on; 1/2: Euler's step in sigma^2, the flow's step for data
  much wider than sigma_N; g < 0 takes off more than the posterior's spread, where the solver stretched),

and keeps the nearest. The blends cost two runs (x0_hat and x_N, deterministic from one x_T; every other g is their
combination). Where the data are sharp, the flow's endpoints are decorrelated from a short run's within each mode and
the distance rewards shrinking to the modes' centres; the choice is therefore made only where the level read is at
least ``FINISH_END`` (data wide at that level: docs/samplers.md, "The finish chosen by the flow"), and only for a
score whose noise share keeps falling down the stop ladder to its bottom around the flow's endpoints
(``stop.share_keeps_falling``, the guard of the stochastic window): the reference runs to that bottom, where a
trained network is least accurate, and on the three networks scorelab trained on wide data the blend chosen against
their own flow was 0.93-1.41x the plain run (docs/samplers.md, "The finish chosen by the flow").

Cost: REF_STEPS + len(stop.LADDER) + 3 nfe evaluations on ``stop.pilot_size`` draws from the pilots' own stream
(``stop.pilot_generator``), once per ``sample()`` call that reads wide, before the sampler's loop; one host read per
candidate.
"""

from __future__ import annotations

import torch

from ..sde import VPSDE
from .stop import LADDER, pilot_generator, pilot_size, share_keeps_falling

FINISH_END = 0.1  # the choice is made where the level read for the score is at least this
BLENDS = tuple(round(-0.6 + 0.1 * i, 1) for i in range(17))  # -0.6 .. 1.0
REF_STEPS = 200  # the reference flow: DPM-Solver++(3M) on this many log-SNR steps
REF_ORDER = 3


def ddpm_end(nfe: int) -> float:
    """The noise level sigma = s/m of DDPM's process (VPSDE(0.1, 20), Ho et al. 2020) at time 1/nfe: the last level
    before 0 of its time-uniform grid of nfe steps, where its samplers spend their last evaluation on x0_hat (0.34 at
    10 evaluations, 0.43 at 8, 0.28 at 12)."""
    ref = VPSDE(0.1, 20.0)
    t = torch.tensor(1.0 / nfe, dtype=torch.float64)
    return float(ref.marginal_std(t) / ref.marginal_scale(t))


def flow_gap(x: torch.Tensor, ref: torch.Tensor) -> float:
    """E ||x - ref|| over the batch (the draws flattened): the mean distance between coupled endpoints."""
    return float((x - ref).flatten(1).norm(dim=1).mean())


def choose_finish(score_fn, sde, shape, nfe: int, options: dict, grid, generator=None,
                  dtype: torch.dtype = torch.float32, device=None) -> dict | None:
    """The options of UniPC's finish on DDPM's levels (``grid="ddpm"``, sigma_min ``ddpm_end(nfe)``,
    ``denoise_to_zero=True``, ``final_blend`` g) where, on a pilot, it ends nearer the flow than the plain run of
    ``unipc`` with ``options`` (resolved, no "auto") on ``grid``; None where the plain run is nearer (see the module's
    docstring)."""
    from . import METHODS, _bind, _grid, _run, _start

    n = (pilot_size(shape), *shape[1:])
    fn = METHODS["unipc"]
    opts = _bind("unipc", sde, options)
    times = _grid(fn, sde, fn.steps(nfe, opts), opts, grid)
    gen = pilot_generator(generator, device)
    x_t = _start(sde, fn, opts, times, None, n, gen, dtype, device)

    def run(method, budget, opts, grid=None):
        return _run(score_fn, sde, n, method, budget, opts, None, dtype, device, x_t, grid, None, False, None).x

    bottom = max(LADDER[-1], float(getattr(sde, "sigma_min", 0.0)))
    with torch.no_grad():
        ref = run("dpm_solver", REF_STEPS, {"order": REF_ORDER, "sigma_max": opts["sigma_max"], "sigma_min": bottom})
        eps = torch.randn(ref.shape, generator=gen, dtype=ref.dtype, device=ref.device)
        if not share_keeps_falling(score_fn, sde, ref, eps):  # the flow to the bottom is not to be trusted
            return None
        plain = flow_gap(run("unipc", nfe, options, grid), ref)
        end = {**options, "sigma_min": ddpm_end(nfe), "denoise_to_zero": True}
        x0 = run("unipc", nfe, {**end, "final_blend": 0.0}, "ddpm")
        xn = run("unipc", nfe, {**end, "final_blend": 1.0}, "ddpm")
        gaps = {g: flow_gap(x0 + g * (xn - x0), ref) for g in BLENDS}
    g = min(gaps, key=gaps.get)
    return {**end, "final_blend": g} if gaps[g] < plain else None
