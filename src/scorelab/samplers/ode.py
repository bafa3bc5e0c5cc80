"""The probability-flow ODE dx/dt = a(t) x - 1/2 g(t)^2 score(x, t) (Song et al. 2021, eq. 13) as fields for
``scorelab.solvers``: in t (``ProbabilityFlow``: encode/decode, likelihood, adaptive solves) and in EDM's
variables (``SigmaFlow``). The ``ode`` sampler takes nfe // stages steps on its grid (default uniform in t, T to
eps = 1e-3) in EDM's variables; "dopri5" solves in t and stops with a ValueError past nfe evaluations.
"""

from __future__ import annotations

import torch

from ..sde import reverse_drift
from ..solvers import ADAPTIVE, SOLVERS, integrate, solve
from ._common import method


class ProbabilityFlow:
    """The probability-flow field for ``integrate`` (coefficients a(t), g(t) computed in float64 once per stage
    time and passed as Python floats) and, through ``at(t, x)``, for adaptive solves."""

    def __init__(self, score, sde):
        self.score, self.sde = score, sde

    def prepare(self, stage_times: torch.Tensor, times=None):
        self.t = stage_times.tolist()
        self.a, self.g = self.sde.drift_coeff(stage_times).tolist(), self.sde.diffusion(stage_times).tolist()

    def __call__(self, i, j, y):
        x = y[0]
        tb = torch.full(x.shape[:1], self.t[i][j], dtype=x.dtype, device=x.device)
        return (reverse_drift(self.a[i][j], self.g[i][j], x, self.score(x, tb), 0.5),)

    def at(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.sde._reverse_drift(x, t.expand(x.shape[0]), self.score(x, t.expand(x.shape[0])), 0.5)


class SigmaFlow:
    """The same ODE in EDM's variables (Karras et al. 2022, eq. 4): with sigma = s(t) / m(t) and u = x / m(t),

        du/dsigma = (u - D) / sigma = eps_hat(x, t) = -s(t) score(x, t),      D = x0_hat,

    one ODE for VE, VP and sub-VP, smooth in sigma where the t-form is stiff (a steep schedule). The carried
    state is x = m u (``factors``), so nothing of size 1/m(T) is formed (u overflows float16 on
    VPSDE(beta_max=100)); stage coefficients are float64 Python floats."""

    def __init__(self, score, sde, grid_times: torch.Tensor):
        self.score, self.sde, self.grid_t = score, sde, grid_times.to(torch.float64)

    def prepare(self, stage_sigmas: torch.Tensor, sigmas: torch.Tensor):
        t = torch.where(stage_sigmas > 0, self.sde.t_from_std_ratio(stage_sigmas.clamp_min(1e-300)), 0.0)
        # at the grid's own points use its times (no round trip through the inverse map)
        t = torch.where(stage_sigmas == sigmas[:-1, None], self.grid_t[:-1, None], t)
        t = torch.where(stage_sigmas == sigmas[1:, None], self.grid_t[1:, None], t)
        m, s = self.sde.marginal_scale(t), self.sde.marginal_std(t)
        m_grid = self.sde.marginal_scale(self.grid_t)
        self.t, self.s = t.tolist(), s.tolist()
        self.factors = ((m / m_grid[:-1, None]).tolist(), m.tolist(), (m_grid[1:] / m_grid[:-1]).tolist(),
                        m_grid[1:].tolist())

    def __call__(self, i, j, y):
        x = y[0]
        tb = torch.full(x.shape[:1], self.t[i][j], dtype=x.dtype, device=x.device)
        return (self.score(x, tb).mul(-self.s[i][j]),)


def flow_in_sigma(score, sde, x, times: torch.Tensor, solver: str, callback, first: int = 0):
    """Integrate the probability-flow ODE over the time grid ``times`` (float64) in EDM's variables with the
    tableau ``solver``, x carried in its own units; ``callback(first + i, t, x) -> x`` after each step."""
    times = times.to(torch.float64)
    sig = torch.where(times > 0, sde.marginal_std(times) / sde.marginal_scale(times), 0.0)
    t_d = times.to(dtype=x.dtype, device=x.device)
    return integrate(SigmaFlow(score, sde, times), x, sig, solver,
                     after=lambda i, y: (callback(first + i, t_d[i + 1], y[0]),))


@method(cost=lambda o: 1 if o["solver"] in ADAPTIVE else SOLVERS[o["solver"]].stages, deterministic=True)
def ode(score, sde, x, times, generator, callback, solver: str = "heun", eps: float = 1e-3, rtol: float = 1e-5,
        atol: float = 1e-5):
    if solver in ADAPTIVE:
        x = solve(ProbabilityFlow(score, sde), x, float(times[0]), float(times[-1]), solver, rtol, atol)
        return callback(len(times) - 2, times[-1].to(dtype=x.dtype, device=x.device), x)
    return flow_in_sigma(score, sde, x, times, solver, callback)

