"""Exponential integrators of the probability-flow ODE in data prediction: DPM-Solver++ (Lu et al. 2022,
"DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models").

With lambda = log(m / s) (half the log-SNR), h = lambda_t - lambda_s and D = x0_hat = (x + s^2 score) / m, the
ODE's exact solution is  x_t = (s_t / s_s) x_s + m_t int_{lambda_s}^{lambda_t} e^{lambda - lambda_t} D dlambda.
Approximating D by a polynomial in lambda gives, with phi_1 = expm1(-h), phi_2 = phi_1 / h + 1,
phi_3 = phi_2 / h - 1/2:

    x_t = (s_t / s_s) x_s - m_t phi_1 D_0 + m_t phi_2 D_1 - m_t phi_3 D_2

where D_1, D_2 are the first/second divided differences of D in lambda (zero for order 1, the DDIM step).
Multistep (DPM-Solver++(2M)/(3M)) takes them from previous steps (one evaluation per step, lower orders for
the first steps); singlestep ((2S)/(3S)) from intermediate points at lambda_s + h/2 (order 2) or
h/3, 2h/3 (order 3).

Every D_j enters the update multiplied by m_t, as m_t D_j = (m_t / m_j) (x_j + s_j^2 score_j) with the ratio
in float64: the step never divides by an m(t) that underflows float16 (VPSDE(beta_max=100) has m(T) ~ 1e-11).

Options: order 1-3, multistep (True) or singlestep (False), sigma_min (end noise level s/m; default 0.03, see
below), lower_order_final (use order <= 2 on the last steps when there are fewer than 15, as DPM-Solver does,
for stability), denoise_to_zero (spend the last evaluation
on x0_hat at the final time, i.e. a first-order step to sigma = 0), eta > 0 (stochastic SDE-DPM-Solver++,
multistep order <= 2; eta = 1 follows the reverse SDE); the grid (``sample(grid=...)``) defaults to "log_snr".

Defaults (order 2 multistep, log-SNR grid, sigma_min = 0.03) are what measured best at 10-20 evaluations on the
exact-score benchmark (docs/samplers.md): stopping at sigma_min leaves noise whose moment error is
O((sigma_min^2 / v)^2) for a component of variance v, while the steps saved near sigma = 0 cut the
discretisation error more. Use sigma_min = 0.002 (EDM) for data with finer structure or large budgets.
"""

from __future__ import annotations

import torch

from .._checks import axpy
from ._common import Schedule, gaussian, method, posterior_mean
from .multistep import data_store, run_plan, to_zero, warm_orders


def _phis(h):
    phi1 = torch.expm1(-h)
    phi2 = phi1 / h + 1
    return phi1, phi2, phi2 / h - 0.5


def _steps(nfe, o):
    evals = nfe - o["denoise_to_zero"]
    if evals < 1:
        raise ValueError("dpm_solver with denoise_to_zero=True needs nfe >= 2.")
    return evals if o["multistep"] or o["eta"] > 0 else -(-evals // o["order"])


@method(steps=_steps, reserve=lambda o: int(o["denoise_to_zero"]), grid="log_snr", end="sigma_min",
        deterministic=lambda o: not o.get("eta", 0))
def dpm_solver(score, sde, x, times, generator, callback, order: int = 2, multistep: bool = True,
               sigma_min: float = 0.03, lower_order_final: bool = True, denoise_to_zero: bool = False,
               rho: float = 7.0, eta: float = 0.0):
    if order > 3 or (eta > 0 and (order == 3 or not multistep)):
        raise ValueError(f"order must be 1, 2 or 3, and eta > 0 (stochastic) works with multistep order 1 or 2; "
                         f"got eta={eta}, order={order}, multistep={multistep}.")
    S = Schedule(sde, times, x)
    N, m, s = len(S), S.m, S.s
    lam = torch.log(S.m64) - torch.log(S.s64)  # half the log-SNR
    h = lam[1:] - lam[:-1]
    if eta > 0:
        x = _sde_dpm_solver(score, x, S, h, generator, callback, order, eta)
    elif multistep:
        plan = _multistep_plan(S, h, warm_orders(N, order, lower_order_final and N < 15))
        x = run_plan(score, x, S, data_store(S), plan, callback)
    else:
        evals = int(min(score.budget - score.count, 3 * N)) - denoise_to_zero
        orders = ([order] * (evals // order) + ([evals % order] if evals % order else []))[:N]
        phi1, phi2, _ = (p.tolist() for p in _phis(h))
        for i, k in enumerate(orders + [1] * (N - len(orders))):
            mD0 = posterior_mean(x, score(x, S.tb(i, x)), 1.0, s[i])
            x_next = axpy((s[i + 1] / s[i]) * x, mD0, -phi1[i] * m[i + 1] / m[i])
            if k >= 2:
                x_next = _singlestep(score, sde, x, mD0, (m[i + 1] / m[i]) * mD0, i, k, lam, S, x_next, phi1[i],
                                     phi2[i])
            x = callback(i, S.t_d[i + 1], x_next)
    if denoise_to_zero:
        x = posterior_mean(x, score(x, S.tb(N, x)), m[N], s[N])
    return x


def _multistep_plan(S, h, orders):
    """DPM-Solver++(kM) as a plan (``multistep.run_plan``): x_{i+1} = (s'/s) x_i + sum_j c_j (m' / m_j) m_j D_j over
    j = i, i-1, i-2, the update above with D_1, D_2 the divided differences of D in lambda; a step to sigma = 0 is
    x = m' D_i."""
    phi1, phi2, phi3 = (p.tolist() for p in _phis(h))
    hl, m, s = h.tolist(), S.m, S.s
    plan = []
    for i, k in enumerate(orders):
        if s[i + 1] == 0:
            plan.append(to_zero(S, i))
            continue
        c = [-phi1[i]]
        if k >= 2:
            r0 = hl[i - 1] / hl[i]  # d10 = (D_i - D_{i-1}) / r0 ~ h dD/dlambda
            if k == 3:  # divided differences over lambda_{i-2}, lambda_{i-1}, lambda_i (DPM-Solver++(3M))
                rb = hl[i - 2] / hl[i]  # d11 = (D_{i-1} - D_{i-2}) / rb
                a = phi2[i] * (1 + r0 / (r0 + rb)) - phi3[i] / (r0 + rb)  # weight of d10
                b = phi2[i] * r0 / (r0 + rb) - phi3[i] / (r0 + rb)  # minus the weight of d11
                c = [-phi1[i] + a / r0, -a / r0 - b / rb, b / rb]
            else:
                c = [-phi1[i] + phi2[i] / r0, -phi2[i] / r0]
        plan.append((s[i + 1] / s[i], [(i - j, cj * m[i + 1] / m[i - j]) for j, cj in enumerate(c)]))
    return plan


def _singlestep(score, sde, x, mD0, E0, i, k, lam, S, x_next, phi1, phi2):
    """The intermediate evaluations and the update of DPM-Solver++(2S) (r1 = 1/2) or (3S) (r1 = 1/3, r2 = 2/3)."""
    h = lam[i + 1] - lam[i]
    rs = [0.5] if k == 2 else [1 / 3, 2 / 3]
    lam_mid = torch.stack([lam[i] + r * h for r in rs])
    t_mid = sde.t_from_log_snr(2 * lam_mid)
    tm, mm, sm = t_mid.tolist(), sde.marginal_scale(t_mid).tolist(), sde.marginal_std(t_mid).tolist()
    e1 = torch.expm1(-(lam_mid - lam[i])).tolist()
    m, s = S.m, S.s

    def mD(u, j):
        return posterior_mean(u, score(u, torch.full(u.shape[:1], tm[j], dtype=u.dtype, device=u.device)), 1.0, sm[j])

    mD1 = mD((sm[0] / s[i]) * x - e1[0] * (mm[0] / m[i]) * mD0, 0)
    if k == 2:
        return x_next - (0.5 / rs[0]) * phi1 * ((m[i + 1] / mm[0]) * mD1 - E0)
    # (3S): the second intermediate point uses the first-order difference of D at r1
    r1, r2 = rs
    phi22 = e1[1] / (r2 * float(h)) + 1
    u2 = (sm[1] / s[i]) * x - e1[1] * (mm[1] / m[i]) * mD0 \
        + (r2 / r1) * phi22 * ((mm[1] / mm[0]) * mD1 - (mm[1] / m[i]) * mD0)
    return x_next + (1 / r2) * phi2 * ((m[i + 1] / mm[1]) * mD(u2, 1) - E0)


def _sde_dpm_solver(score, x, S, h, generator, callback, order, eta):
    """SDE-DPM-Solver++(1/2M) (Lu et al. 2022b; eta = 1 is the reverse SDE), with e = eta h:

        x_t = (s_t / s_s) e^{-e} x_s + m_t (1 - e^{-h - e}) [D_0 + (1 / (2 r)) (D_0 - D_-1)] + s_t sqrt(1 - e^{-2e}) z

    r = h_prev / h; the bracket's correction (second order) is dropped on the first step."""
    m, s, hl = S.m, S.s, h.tolist()
    carry = (S.s64[1:] / S.s64[:-1] * torch.exp(-eta * h)).tolist()
    gain = (-torch.expm1(-(1 + eta) * h)).tolist()
    noise = (S.s64[1:] * torch.sqrt(-torch.expm1(-2 * eta * h))).tolist()
    prev = None
    for i in range(len(S)):
        mD0 = posterior_mean(x, score(x, S.tb(i, x)), 1.0, s[i])
        E0 = (m[i + 1] / m[i]) * mD0
        if prev is not None and order > 1:
            E0 = E0 + (0.5 * hl[i] / hl[i - 1]) * (E0 - (m[i + 1] / m[i - 1]) * prev)
        x = axpy(axpy(carry[i] * x, E0, gain[i]), gaussian(x, generator), noise[i], inplace=True)
        prev = mD0
        x = callback(i, S.t_d[i + 1], x)
    return x
