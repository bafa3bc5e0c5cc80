"""Fixed-step explicit Runge-Kutta solvers as Butcher tableaux that declare their order and stages, and torchdiffeq
for adaptive solves: the one ODE path of the ``ode`` and ``edm_heun`` samplers, ``latent.encode``/``decode`` and
``log_likelihood`` (diffrax's split: the field is the caller's, the solver is here).

SOLVERS: "euler" (order 1, 1 stage), "midpoint" (2, 2), "heun" (explicit trapezoid, 2, 2), "heun3" (3, 3),
"rk4" (classical, 4, 4). ADAPTIVE: torchdiffeq's "dopri5" (Dormand-Prince), "dopri8", "bosh3", "fehlberg2",
"adaptive_heun", with rtol/atol.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import axpy


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
            out = [axpy(o, u, w) for o, u in zip(out, v)]
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

__all__ = ["Tableau", "SOLVERS", "ADAPTIVE", "integrate", "solve"]
