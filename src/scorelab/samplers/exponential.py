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

Options: order 1-3, multistep (True) or singlestep (False), grid "log_snr" (default) / "karras" / "uniform",
sigma_min (end noise level s/m; default 0.03, see below), lower_order_final (use order <= 2 on the last steps
when there are fewer than 15, as DPM-Solver does, for stability), denoise_to_zero (spend the last evaluation
on x0_hat at the final time, i.e. a first-order step to sigma = 0), eta > 0 (stochastic SDE-DPM-Solver++,
multistep order <= 2; eta = 1 follows the reverse SDE).

Defaults (order 2 multistep, log-SNR grid, sigma_min = 0.03) are what measured best at 10-20 evaluations on the
exact-score benchmark (docs/samplers.md): stopping at sigma_min leaves noise whose moment error is
O((sigma_min^2 / v)^2) for a component of variance v, while the steps saved near sigma = 0 cut the
discretisation error more. Use sigma_min = 0.002 (EDM) for data with finer structure or large budgets.
"""

from __future__ import annotations

import torch

from ._common import data_prediction, times_like
from .grids import end_time, make_grid


class _Denoiser:
    """D(x, t) with the schedule of a set of times computed once, all 0-d tensors."""

    def __init__(self, score, sde, dtype, device):
        self.score, self.sde, self.dtype, self.device = score, sde, dtype, device

    def coeffs(self, times: torch.Tensor):
        t64 = times.to(torch.float64)
        m, s = self.sde.marginal_scale(t64), self.sde.marginal_std(t64)
        lam = torch.log(m) - torch.log(s)
        return [v.to(dtype=self.dtype, device=self.device) for v in (times, m, s)], lam

    def __call__(self, x, t, m, s):
        return data_prediction(self.score(x, times_like(t, x)), x, m, s)


def _phis(h):
    phi1 = torch.expm1(-h)
    phi2 = phi1 / h + 1
    return phi1, phi2, phi2 / h - 0.5


def dpm_solver(score, sde, shape, nfe, generator, callback, dtype, device, order: int = 2,
               multistep: bool = True, grid: str = "log_snr", sigma_min: float = 0.03,
               lower_order_final: bool = True, denoise_to_zero: bool = False, rho: float = 7.0, eta: float = 0.0):
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}.")
    if eta < 0 or (eta > 0 and (order == 3 or not multistep)):
        raise ValueError(f"eta (stochasticity) must be >= 0, and eta > 0 works with multistep order 1 or 2; got "
                         f"eta={eta}, order={order}, multistep={multistep}.")
    if eta > 0:
        return _sde_dpm_solver(score, sde, shape, nfe, generator, callback, dtype, device, order, grid, sigma_min,
                               rho, eta)
    evals = nfe - 1 if denoise_to_zero else nfe
    if evals < 1:
        raise ValueError("denoise_to_zero=True needs nfe >= 2.")
    if multistep:
        orders = [min(order, i + 1) for i in range(evals)]
        if lower_order_final and evals < 15:
            orders = [min(o, evals - i) for i, o in enumerate(orders)]
    else:
        orders = [order] * (evals // order) + ([evals % order] if evals % order else [])
    kw = {"rho": rho} if grid == "karras" else {}
    times = make_grid(grid, sde, len(orders), end_time(sde, sigma_min), **kw)
    den = _Denoiser(score, sde, dtype, device)
    (t_d, m, s), lam = den.coeffs(times)
    # step sizes and ratios of previous steps in float64, cast once
    h64 = lam[1:] - lam[:-1]
    phis = [p.to(dtype=dtype, device=device) for p in _phis(h64)]
    r_prev = torch.cat([torch.ones(1, dtype=torch.float64), h64[:-1] / h64[1:]])  # h_{i-1} / h_i
    r_prev2 = torch.cat([torch.ones(2, dtype=torch.float64), h64[:-2] / h64[2:]])  # h_{i-2} / h_i
    r0, r1 = r_prev.to(dtype=dtype, device=device), r_prev2.to(dtype=dtype, device=device)
    mids = [None if multistep or k < 2 else _midpoints(den, sde, lam, i, k, dtype, device)
            for i, k in enumerate(orders)]
    x = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    hist: list[torch.Tensor] = []
    for i, k in enumerate(orders):
        D0 = den(x, t_d[i], m[i], s[i])
        phi1, phi2, phi3 = phis[0][i], phis[1][i], phis[2][i]
        base = (s[i + 1] / s[i]) * x - m[i + 1] * phi1 * D0
        if multistep:
            if k >= 2:
                d10 = (D0 - hist[-1]) / r0[i]  # ~ h dD/dlambda
                if k == 3:
                    # divided differences over lambda_{i-2}, lambda_{i-1}, lambda_i (DPM-Solver++(3M))
                    ra, rb = r0[i], r1[i]
                    d11 = (hist[-1] - hist[-2]) / rb
                    D1 = d10 + ra / (ra + rb) * (d10 - d11)
                    D2 = (d10 - d11) / (ra + rb)
                    base = base + m[i + 1] * phi2 * D1 - m[i + 1] * phi3 * D2
                else:
                    base = base + m[i + 1] * phi2 * d10
            hist = (hist + [D0])[-2:]
        elif k >= 2:
            base = _singlestep(den, x, D0, i, k, mids[i], base, m, s, phi1, phi2)
        x = base
        if callback is not None:
            callback(i, t_d[i + 1], x)
    if denoise_to_zero:
        x = den(x, t_d[-1], m[-1], s[-1])
    return x


def _midpoints(den, sde, lam, i, k, dtype, device):
    """Schedule at the intermediate points of step i of DPM-Solver++(2S) (r1 = 1/2) or (3S) (r1 = 1/3,
    r2 = 2/3), computed before the loop: times, m, s, expm1(-r h) and phi_22 = expm1(-r2 h) / (r2 h) + 1."""
    h = lam[i + 1] - lam[i]
    rs = [0.5] if k == 2 else [1 / 3, 2 / 3]
    lam_mid = torch.stack([lam[i] + r * h for r in rs])
    (tm, mm, sm), _ = den.coeffs(sde.t_from_log_snr(2 * lam_mid))
    e1 = torch.expm1(-(lam_mid - lam[i]))
    phi22 = (e1[-1] / (rs[-1] * h) + 1).to(dtype=dtype, device=device)
    return rs, tm, mm, sm, e1.to(dtype=dtype, device=device), phi22


def _singlestep(den, x, D0, i, k, mid, base, m, s, phi1, phi2):
    """The intermediate evaluations and the update of DPM-Solver++(2S) or (3S)."""
    rs, tm, mm, sm, e1, phi22 = mid
    u1 = (sm[0] / s[i]) * x - mm[0] * e1[0] * D0
    D1 = den(u1, tm[0], mm[0], sm[0])
    if k == 2:
        return base - (0.5 / rs[0]) * m[i + 1] * phi1 * (D1 - D0)
    # (3S): the second intermediate point uses the first-order difference of D at r1
    r1, r2 = rs
    u2 = (sm[1] / s[i]) * x - mm[1] * e1[1] * D0 + (r2 / r1) * mm[1] * phi22 * (D1 - D0)
    D2 = den(u2, tm[1], mm[1], sm[1])
    return base + (1 / r2) * m[i + 1] * phi2 * (D2 - D0)


def _sde_dpm_solver(score, sde, shape, nfe, generator, callback, dtype, device, order, grid, sigma_min, rho, eta):
    """SDE-DPM-Solver++(1/2M) (Lu et al. 2022b; eta = 1 is the reverse SDE), with e = eta h:

        x_t = (s_t / s_s) e^{-e} x_s + m_t (1 - e^{-h - e}) [D_0 + (1 / (2 r)) (D_0 - D_-1)] + s_t sqrt(1 - e^{-2e}) z

    r = h_prev / h; the bracket's correction (second order) is dropped on the first step."""
    kw = {"rho": rho} if grid == "karras" else {}
    times = make_grid(grid, sde, nfe, end_time(sde, sigma_min), **kw)
    den = _Denoiser(score, sde, dtype, device)
    (t_d, m, s), lam = den.coeffs(times)
    h64 = lam[1:] - lam[:-1]
    carry = (s[1:] / s[:-1]) * torch.exp(-eta * h64).to(dtype=dtype, device=device)
    gain = m[1:] * (-torch.expm1(-(1 + eta) * h64)).to(dtype=dtype, device=device)
    noise = s[1:] * torch.sqrt(-torch.expm1(-2 * eta * h64)).to(dtype=dtype, device=device)
    half_over_r = (0.5 * h64[1:] / h64[:-1]).to(dtype=dtype, device=device)  # 1 / (2 r), r = h_{i-1} / h_i
    x = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    prev = None
    for i in range(nfe):
        D0 = den(x, t_d[i], m[i], s[i])
        D = D0 if prev is None or order == 1 else D0 + half_over_r[i - 1] * (D0 - prev)
        x = carry[i] * x + gain[i] * D + noise[i] * torch.randn(shape, generator=generator, dtype=dtype, device=device)
        prev = D0
        if callback is not None:
            callback(i, t_d[i + 1], x)
    return x
