"""The probability-flow ODE dx/dt = a(t) x - 1/2 g(t)^2 score(x, t) (Song et al. 2021), integrated from T to eps.

Fixed-step solvers (``solver=``): "euler" (order 1, 1 evaluation per step), "heun" (order 2, 2), "rk4"
(classical Runge-Kutta, order 4, 4); steps = nfe // evaluations-per-step on the grid ``grid`` ("uniform",
"log_snr", "karras"). "dopri5": adaptive Dormand-Prince through torchdiffeq with rtol/atol; if it would need
more than nfe evaluations, ``sample`` raises a ValueError saying so (raise nfe or loosen the tolerances).
"""

from __future__ import annotations

import torch

from .grids import make_grid

STAGES = {"euler": 1, "heun": 2, "rk4": 4}
SOLVERS = (*STAGES, "dopri5")


def _velocity(score, sde, dtype, device):
    def v(x, t):  # t 0-d tensor
        tb = t.expand(x.shape[0])
        return sde.drift_coeff(t) * x - 0.5 * sde.diffusion(t) ** 2 * score(x, tb)
    return v


def ode(score, sde, shape, nfe, generator, callback, dtype, device, solver: str = "heun", grid: str = "uniform",
        eps: float = 1e-3, rtol: float = 1e-5, atol: float = 1e-5, x_init: torch.Tensor | None = None,
        t_start: float | None = None):
    if solver not in SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r}; choose one of {SOLVERS}.")
    x = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype) if x_init is None else x_init
    v = _velocity(score, sde, dtype, device)
    if solver == "dopri5":
        from torchdiffeq import odeint
        # integrate in tau = t_start - t (increasing), so the solver never sees reversed time
        t0 = float(sde.T if t_start is None else t_start)
        taus = torch.tensor([0.0, t0 - eps], dtype=dtype, device=device)
        # step_t lands the last step on eps: stepping past it would evaluate the score at t < 0
        return odeint(lambda tau, y: -v(y, t0 - tau), x, taus, rtol=rtol, atol=atol, method="dopri5",
                      options={"step_t": taus})[-1]
    k = STAGES[solver]
    steps = nfe // k
    if steps < 1:
        raise ValueError(f"solver {solver!r} needs nfe >= {k} (one step uses {k} evaluations), got nfe={nfe}.")
    times = make_grid(grid, sde, steps, eps, t_max=t_start).to(dtype=dtype, device=device)
    for i in range(steps):
        t0, t1 = times[i], times[i + 1]
        h = t1 - t0
        d1 = v(x, t0)
        if solver == "euler":
            x = x + h * d1
        elif solver == "heun":
            d2 = v(x + h * d1, t1)
            x = x + 0.5 * h * (d1 + d2)
        else:
            tm = t0 + 0.5 * h
            d2 = v(x + 0.5 * h * d1, tm)
            d3 = v(x + 0.5 * h * d2, tm)
            d4 = v(x + h * d3, t1)
            x = x + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
        if callback is not None:
            callback(i, t1, x)
    return x
