"""Multistep solvers of the probability-flow ODE: one score evaluation per step, the earlier evaluations reused.

Two forms of the one ODE, both the same for VE, VP and sub-VP (no branch on the process):

- EDM's variables (Karras et al. 2022, eq. 4): with sigma = s(t) / m(t) and y = x / m, dy/dsigma = eps_hat =
  -s(t) score(x, t). ``lms`` and ``ipndm`` are Adams-Bashforth steps on it:
  y_{i+1} = y_i + sum_j c_ij eps_j, carried as x_{i+1} = (m_{i+1} / m_i) x_i - sum_j m_{i+1} c_ij s_j score_j.
- data prediction in lambda = log(m / s) (half the log-SNR; Lu et al. 2022b): with D = x0_hat,
  x_t = (s_t / s_s) x_s + m_t int_{lambda_s}^{lambda_t} e^{lambda - lambda_t} D dlambda. ``unipc``, ``deis``
  (and DPM-Solver++(kM), ``exponential``) approximate D in that integral (``data_plan``).

Every method is a *plan*: for step i, x_{i+1} = a_i x_i + sum_j w_ij v_j, with v_j the stored evaluation at t_j (the
score, or m_j D_j) and a_i, w_ij float64 numbers computed once from the grid before the loop (Python floats in the
loop: no host sync). ``unipc`` adds a corrector plan applied to x_{i+1} once v_{i+1} is known.

Methods (one evaluation per step, nfe steps; grid from min(sigma_max, sigma(T)) to sigma_min; the first steps use lower
orders, as the papers do, so the global order of a multistep method is capped by its warm start); the defaults not
taken from the papers are measured in docs/samplers.md, "Multistep solvers":

- ``lms``: k-diffusion's linear multistep (Crowson 2022, ``sample_lms``) with its defaults (order 4, Karras grid):
  c_ij = int_{sigma_i}^{sigma_{i+1}} l_j(sigma) dsigma, l_j the Lagrange basis through the last ``order`` noise levels.
- ``ipndm``: improved pseudo-numerical multistep (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with
  Exponential Integrator", sec. 5 / app. iPNDM): the fixed equal-step Adams-Bashforth weights (``_IPNDM``) times
  h_i = sigma_{i+1} - sigma_i; order 3 (theirs: 4) to sigma_min = 0.005 on the Karras grid.
- ``unipc``: UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework", Alg. 2-3, data
  prediction): the UniP-p predictor and the UniC corrector that reuses the next evaluation (order p + 1 at no cost),
  B(h) = h ("bh1", Zhao et al.'s choice for unconditional sampling) or e^h - 1 ("bh2", diffusers' default, ours);
  order 1-3 (default 2), log-SNR grid to sigma_min = 0.03.
- ``deis``: DEIS tAB (Zhang & Chen 2023, eq. 14): the exponential integral above with D extrapolated by the Lagrange
  polynomial *in t* through the last ``order`` points (order 1-3); the polynomial in lambda instead is
  DPM-Solver++(kM). The weights int e^{lambda - lambda_t} l_j(t(lambda)) dlambda by 12-point Gauss-Legendre in
  float64. Defaults: order 3 (tAB3, Zhang & Chen's best at low NFE), log-SNR grid to sigma_min = 0.03.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._checks import axpy
from ._common import Schedule, check_final_blend, check_final_order, gaussian, method, posterior_mean, to_zero

_GL = np.polynomial.legendre.leggauss(12)
# iPNDM's Adams-Bashforth weights for equal steps, newest first (Zhang & Chen 2023)
_IPNDM = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def lagrange_integrals(nodes, lo, hi, var, weight):
    """int_lo^hi l_j(var(u)) weight(u) du for the Lagrange basis l_j through ``nodes`` (in var's units)."""
    x, w = _GL
    u = 0.5 * (hi - lo) * x + 0.5 * (hi + lo)
    v, wt = var(u), weight(u) * w * 0.5 * (hi - lo)
    out = []
    for j, nj in enumerate(nodes):
        basis = np.ones_like(u)
        for k, nk in enumerate(nodes):
            if k != j:
                basis = basis * (v - nk) / (nj - nk)
        out.append(float((basis * wt).sum()))
    return out


def corrector_weights(lam, eta, order: int) -> list[list[float]]:
    """The SA-Solver corrector's weights (Xue et al. 2023) of the eta-family step in data prediction, one list per
    step i: on D_i, D_{i-1}, ..., D_{i-k+1}, then D_{i+1}, k = min(order - 1, i + 1): int (1 + eta_i)
    e^{-(1 + eta_i)(lambda_{i+1} - u)} l_j(u) du over [lambda_i, lambda_{i+1}], l_j the Lagrange basis in lambda through
    those nodes (Gauss-Legendre, float64). ``lam``: the grid's lambda = log(m / s) [N + 1]; ``eta``: one per step.
    ``exponential._corrector_plan`` runs them; ``calibrate`` puts them in the variance recursion."""
    lam, kap = [float(v) for v in lam], [1.0 + float(e) for e in eta]
    out = []
    for i in range(len(lam) - 1):
        nodes = [lam[i - j] for j in range(min(order - 1, i + 1))] + [lam[i + 1]]
        out.append(lagrange_integrals(nodes, lam[i], lam[i + 1], lambda u: u,
                                      lambda u, i=i: kap[i] * np.exp(-kap[i] * (lam[i + 1] - u))))
    return out


def warm_orders(n, order, lower_order_final):
    """Warm start min(order, i + 1); with lower_order_final also min(., n - i) (DPM-Solver, UniPC)."""
    return [min(order, i + 1, n - i) if lower_order_final else min(order, i + 1) for i in range(n)]


def run_plan(score, x, S, store, plan, callback, corrector=None, noise=None, generator=None):
    """x_{i+1} = a_i x_i + sum_j w_ij v_j (+ noise_i z, z ~ N(0, I), with ``noise``), v_i = store(x_i, score_i, i); the
    corrector plan (same form, may use v_{i+1}) replaces x_{i+1} once v_{i+1} is known, with the step's own noise
    noise_i z added again (then projected again, as every step is; the user's callback has seen the predictor's
    x_{i+1}). Only the last four v_j are kept."""
    vals: dict = {}
    project = getattr(callback, "project", None)
    x_prev = z = None
    for i, (a, w) in enumerate(plan):
        vals[i] = store(x, score(x, S.tb(i, x)), i)
        if corrector is not None and i > 0:
            ac, wc = corrector[i - 1]
            x = _combine(ac, x_prev, wc, vals)
            if z is not None:
                x = axpy(x, z, noise[i - 1], inplace=True)
            if project is not None:
                x = project(x, S.t_d[i])
        x_prev = x
        x_next = _combine(a, x, w, vals)
        z = None
        if noise is not None and noise[i] > 0:  # steps with eta = 0 (``stochastic_below``) draw nothing
            z = gaussian(x, generator)
            x_next = axpy(x_next, z, noise[i], inplace=True)
        x = callback(i, S.t_d[i + 1], x_next)
        vals.pop(i - 4, None)  # the oldest of the last four (one enters per step)
    return x


def _combine(a, x, w, vals):
    out = a * x
    for j, c in w:
        out = axpy(out, vals[j], c, inplace=True)
    return out


def data_plan(S, orders, weights, carry=None):
    """The plan of a data-prediction method: x_{i+1} = a_i x_i + sum_j c_j (m_{i+1} / m_j) m_j D_j, a_i = ``carry``
    (default s_{i+1} / s_i), weights(i, k) = [c_j] on D_i, D_{i-1}, ..., D_{i-k+1} (and D_{i+1} last, for a corrector).
    A step to sigma = 0 (a user grid ending at t = 0) is x_{i+1} = m_{i+1} D_i, the exact limit of every form."""
    m, s = S.m, S.s
    carry = carry or [s[i + 1] / s[i] for i in range(len(S))]
    return [(0.0, [(i, m[i + 1] / m[i])]) if s[i + 1] == 0 else
            (carry[i], [(j, c * m[i + 1] / m[j]) for j, c in zip([*range(i, i - k, -1), i + 1], weights(i, k))])
            for i, k in enumerate(orders)]


# ---- (sigma, x/m) Adams-Bashforth: lms, ipndm ----------------------------------------------------------------

def _adams(score, x, S, callback, order, coeffs):
    """Adams-Bashforth steps in (sigma, x/m) with the warm start min(order, i + 1): coeffs(i, k, sigmas) -> c_ij
    (newest first) for step i of order k, carried in x with v_j = score_j."""
    sig, m, s = (S.s64 / S.m64).tolist(), S.m, S.s
    plan = [(m[i + 1] / m[i], [(i - j, -m[i + 1] * cj * s[i - j]) for j, cj in enumerate(coeffs(i, k, sig))])
            for i, k in enumerate(warm_orders(len(S), order, False))]
    return run_plan(score, x, S, lambda x, sc, i: sc, plan, callback)


@method(grid="karras", end="sigma_min", begin="sigma_max", deterministic=True, noisy_end=True)
def lms(score, sde, x, times, generator, callback, order: int = 4, sigma_min: float = 0.002,
        sigma_max: float = 80.0, rho: float = 7.0):
    return _adams(score, x, Schedule(sde, times, x), callback, order, lambda i, k, sig: lagrange_integrals(
        [sig[i - j] for j in range(k)], sig[i], sig[i + 1], lambda u: u, np.ones_like))


@method(grid="karras", end="sigma_min", begin="sigma_max", deterministic=True, noisy_end=True)
def ipndm(score, sde, x, times, generator, callback, order: int = 3, sigma_min: float = 0.005,
          sigma_max: float = 80.0, rho: float = 7.0):
    return _adams(score, x, Schedule(sde, times, x), callback, order,
                  lambda i, k, sig: [b * (sig[i + 1] - sig[i]) for b in _IPNDM[k - 1]])


# ---- data prediction in lambda: unipc, deis ------------------------------------------------------------------

def data_store(S):
    return lambda x, sc, i: posterior_mean(x, sc, 1.0, S.s[i])


def _at_most_3(order):
    if order > 3:
        raise ValueError(f"order must be 1, 2 or 3 for this method, got {order}.")


def _lambda(S):
    with np.errstate(divide="ignore"):
        return np.log(S.m64.numpy()) - np.log(S.s64.numpy())


def _unipc_weights(lam, i, k, variant, corrector):
    """UniP-k (corrector=False) or UniC-k weights for step i on D_i, D_{i-1}, ... (and D_{i+1} last for UniC),
    before the factor m_{i+1} / m_j; the x weight is s_{i+1} / s_i. Zhao et al. 2023, Alg. 2-3 (with B(h))."""
    h = lam[i + 1] - lam[i]
    hh = -h
    r = [(lam[i - j] - lam[i]) / h for j in range(1, k)]
    h_phi_1 = math.expm1(hh)
    bh = hh if variant == "bh1" else math.expm1(hh)
    rks = np.array(r + [1.0])
    R, b, h_phi_k, fact = [], [], h_phi_1 / hh - 1, 1
    for p in range(1, k + 1):
        R.append(rks ** (p - 1))
        b.append(h_phi_k * fact / bh)
        fact *= p + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    R, b = np.array(R), np.array(b)
    if corrector:
        rho = np.array([0.5]) if k == 1 else np.linalg.solve(R, b)
    else:
        rho = np.zeros(0) if k == 1 else np.array([0.5]) if k == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
    w = [-h_phi_1 + bh * sum(rho[j] / r[j] for j in range(k - 1))] + [-bh * rho[j - 1] / r[j - 1] for j in range(1, k)]
    if corrector:
        w[0] += bh * rho[-1]
        w.append(-bh * rho[-1])
    return w


@method(grid="log_snr", end="sigma_min", begin="sigma_max", deterministic=True,
        reserve=lambda o: int(o["denoise_to_zero"]), noisy_end=lambda o: not o["denoise_to_zero"])
def unipc(score, sde, x, times, generator, callback, order: int = 2, variant: str = "bh2", use_corrector: bool = True,
          lower_order_final: bool = True, sigma_min: float = 0.03, sigma_max: float = 80.0, rho: float = 7.0,
          denoise_to_zero: bool = False, final_order: int = 1, final_blend: float = 0.0):
    """``denoise_to_zero``: the last evaluation spent on x0_hat = E[x0 | x] at the grid's last level (one step
    fewer), which is then the final step of ``lower_order_final`` (order 1: x0_hat is the first-order step to
    sigma = 0), the steps before it keeping their order: diffusers' ``UniPCMultistepScheduler`` with its default
    ``final_sigmas_type="zero"``, to float32 rounding on the same grid (tests/test_interop.py). ``final_order=2``
    (with ``denoise_to_zero``): that step of second order in sigma (``_common.to_zero``), at no extra evaluation.
    ``final_blend`` g (with ``denoise_to_zero``): x0_hat + g (x_N - x0_hat), x_N the sample at the last level in data
    units (``_common.to_zero``; g chosen by the flow: ``samplers/finish.py``)."""
    _at_most_3(order)
    check_final_order(final_order, denoise_to_zero)
    check_final_blend(final_blend, denoise_to_zero, final_order)
    S = Schedule(sde, times, x)
    lam, orders = _lambda(S), warm_orders(len(S), order, lower_order_final and not denoise_to_zero)

    def plan(corrector):  # UniP-k (False) or UniC-k (True) on this grid
        return data_plan(S, orders, lambda i, k: _unipc_weights(lam, i, k, variant, corrector))

    x = run_plan(score, x, S, data_store(S), plan(False), callback, plan(True) if use_corrector else None)
    return to_zero(score, x, S, final_order, final_blend) if denoise_to_zero else x


@method(grid="log_snr", end="sigma_min", begin="sigma_max", deterministic=True, noisy_end=True)
def deis(score, sde, x, times, generator, callback, order: int = 3, lower_order_final: bool = True,
         sigma_min: float = 0.03, sigma_max: float = 80.0, rho: float = 7.0):
    _at_most_3(order)
    S = Schedule(sde, times, x)
    lam, t = _lambda(S), S.t

    def t_of(u):  # t(lambda) for half log-SNR values u
        return sde.t_from_log_snr(torch.from_numpy(2 * u)).numpy()

    def weights(i, k):
        return lagrange_integrals([t[i - j] for j in range(k)], lam[i], lam[i + 1], t_of,
                                   lambda u: np.exp(u - lam[i + 1]))

    plan = data_plan(S, warm_orders(len(S), order, lower_order_final), weights)
    return run_plan(score, x, S, data_store(S), plan, callback)
