"""The probability-flow ODE dx/dt = a(t) x - 1/2 g(t)^2 score(x, t) (Song et al. 2021, eq. 13) and the one set
of ODE solvers: the ``ode`` sampler, ``latent.encode``/``decode`` and ``log_likelihood`` all use them.

Fixed-step explicit Runge-Kutta solvers are Butcher tableaux declaring their order and stages (SOLVERS):
"euler" (order 1, 1 stage), "midpoint" (2, 2), "heun" (explicit trapezoid, 2, 2), "heun3" (3, 3), "rk4"
(classical, 4, 4); ``integrate`` steps any of them over a grid of times, in either direction, on a tensor or
a tuple of tensors. Adaptive solvers ("dopri5", ... ADAPTIVE) go through torchdiffeq with rtol/atol.

The ``ode`` sampler takes steps = nfe // stages on the grid (default uniform in t from T to eps = 1e-3) and
integrates in EDM's variables (``SigmaFlow``: the same ODE for every process, smooth on steep schedules);
"dopri5" solves in t and raises a ValueError (via ``sample``) if it would need more than nfe evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sde import reverse_drift
from ._common import method


@dataclass(frozen=True)
class Tableau:
    order: int  # global order of accuracy
    a: tuple  # a[j]: weights of the earlier stages in stage j
    b: tuple  # weights of the stages in the step
    c: tuple  # stage times as fractions of the step

    @property
    def stages(self) -> int:
        return len(self.b)


SOLVERS = {
    "euler": Tableau(1, ((),), (1.0,), (0.0,)),
    "midpoint": Tableau(2, ((), (0.5,)), (0.0, 1.0), (0.0, 0.5)),
    "heun": Tableau(2, ((), (1.0,)), (0.5, 0.5), (0.0, 1.0)),
    "heun3": Tableau(3, ((), (1 / 3,), (0.0, 2 / 3)), (0.25, 0.0, 0.75), (0.0, 1 / 3, 2 / 3)),
    "rk4": Tableau(4, ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6), (0.0, 0.5, 0.5, 1.0)),
}
ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


def _axpy(y: tuple, terms, c: float = 1.0) -> tuple:
    """c y + sum_k w_k v_k for tuples of tensors; terms = [(w, v), ...] with Python-float weights."""
    out = list(y) if c == 1.0 else [c * u for u in y]
    for w, v in terms:
        if w:
            out = [o + w * u for o, u in zip(out, v)]
    return tuple(out)


def integrate(field, y, times: torch.Tensor, solver: str, after=None):
    """Solve dy/dt = field over ``times`` (float64 [N + 1], any direction) with the tableau ``solver``.

    ``field.prepare(stage_times, times)`` gets the float64 [N, stages] times of every stage once; then
    ``field(i, j, y) -> dy/dt`` for stage j of step i (y a tuple of tensors). A field that integrates a scaled
    state u = y / m(t) while carrying y sets ``field.factors`` = (c, w, c_end, w_end) in prepare: a stage is
    c_ij y + w_ij h sum a k, the step's end c_end_i y + w_end_i h sum b k (c = m_stage / m_i, w = m_stage).
    ``after(i, y) -> y`` runs after each step. y may be a tensor or a tuple; the result has the same form."""
    tab = SOLVERS[solver]
    single = isinstance(y, torch.Tensor)
    y = (y,) if single else tuple(y)
    t = times.to(torch.float64)
    h = t[1:] - t[:-1]
    c = torch.tensor(tab.c, dtype=torch.float64)
    field.prepare(t[:-1, None] * (1 - c) + t[1:, None] * c, t)  # exact at c = 0 and c = 1
    N, S = len(h), tab.stages
    c, w, c_end, w_end = getattr(field, "factors", None) or ([[1.0] * S] * N, [[1.0] * S] * N, [1.0] * N, [1.0] * N)
    for i, hi in enumerate(h.tolist()):
        ks: list = []
        for j, a in enumerate(tab.a):
            ks.append(field(i, j, _axpy(y, [(w[i][j] * hi * aw, k) for aw, k in zip(a, ks)], c[i][j])))
        y = _axpy(y, [(w_end[i] * hi * b, k) for b, k in zip(tab.b, ks)], c_end[i])
        if after is not None:
            y = after(i, y)
    return y[0] if single else y


def solve(field, y0, t0: float, t1: float, solver: str, rtol: float, atol: float, steps: int | None = None):
    """y(t1) from y(t0) = y0 (either direction; y a tensor or a tuple): ``integrate`` over ``steps`` equal steps
    with a tableau, or torchdiffeq with rtol/atol for an ADAPTIVE solver (calling ``field.at(t, y)``)."""
    if solver not in ADAPTIVE:
        return integrate(field, y0, torch.linspace(t0, t1, steps + 1, dtype=torch.float64), solver)
    from torchdiffeq import odeint
    like = y0 if isinstance(y0, torch.Tensor) else y0[0]
    ts = torch.tensor([t0, t1], dtype=like.dtype, device=like.device)
    # step_t lands the last step on t1: stepping past it would evaluate the score outside [eps, T]
    out = odeint(field.at, y0, ts, method=solver, rtol=rtol, atol=atol, options={"step_t": ts})
    return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]


class ProbabilityFlow:
    """The probability-flow field for ``integrate`` (coefficients a(t), g(t) computed in float64 once per stage
    time and passed as Python floats) and, through ``at(t, x)``, for adaptive solves."""

    def __init__(self, score, sde):
        self.score, self.sde = score, sde

    def prepare(self, stage_times: torch.Tensor, times=None):
        self.t = stage_times.tolist()
        self.a, self.g = self.sde.drift_coeff(stage_times).tolist(), self.sde.diffusion(stage_times).tolist()

    def velocity(self, i: int, j: int, x: torch.Tensor) -> torch.Tensor:
        tb = torch.full(x.shape[:1], self.t[i][j], dtype=x.dtype, device=x.device)
        return reverse_drift(self.a[i][j], self.g[i][j], x, self.score(x, tb), 0.5)

    def __call__(self, i, j, y):
        return (self.velocity(i, j, y[0]),)

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
        return (-(self.s[i][j] * self.score(x, tb)),)


def flow_in_sigma(score, sde, x, times: torch.Tensor, solver: str, callback, first: int = 0):
    """Integrate the probability-flow ODE over the time grid ``times`` (float64) in EDM's variables with the
    tableau ``solver``, x carried in its own units; ``callback(first + i, t, x) -> x`` after each step."""
    times = times.to(torch.float64)
    sig = torch.where(times > 0, sde.marginal_std(times) / sde.marginal_scale(times), 0.0)
    t_d = times.to(dtype=x.dtype, device=x.device)
    return integrate(SigmaFlow(score, sde, times), x, sig, solver,
                     after=lambda i, y: (callback(first + i, t_d[i + 1], y[0]),))


def _stages(o):
    return 1 if o["solver"] in ADAPTIVE else SOLVERS[o["solver"]].stages


@method(cost=_stages)
def ode(score, sde, x, times, generator, callback, solver: str = "heun", eps: float = 1e-3, rtol: float = 1e-5,
        atol: float = 1e-5):
    if solver in ADAPTIVE:
        x = solve(ProbabilityFlow(score, sde), x, float(times[0]), float(times[-1]), solver, rtol, atol)
        return callback(len(times) - 2, times[-1].to(dtype=x.dtype, device=x.device), x)
    return flow_in_sigma(score, sde, x, times, solver, callback)
