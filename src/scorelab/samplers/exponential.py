"""Exponential integrators of the probability-flow ODE in data prediction: DPM-Solver++ (Lu et al. 2022,
"DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models").

With lambda = log(m / s) (half the log-SNR), h = lambda_t - lambda_s and D = x0_hat = (x + s^2 score) / m, the ODE's
exact solution is  x_t = (s_t / s_s) x_s + m_t int_{lambda_s}^{lambda_t} e^{lambda - lambda_t} D dlambda. Approximating
D by a polynomial in lambda gives, with phi_1 = expm1(-h), phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2:

    x_t = (s_t / s_s) x_s - m_t phi_1 D_0 + m_t phi_2 D_1 - 2 m_t phi_3 D_2

where D_1 ~ h D' and D_2 ~ h^2 D'' / 2 come from the first/second divided differences of D in lambda (zero for order 1,
the DDIM step; m_t int_0^h e^{u - h} u^2 / 2 du D'' = -2 m_t phi_3 h^2 D'' / 2). Multistep (DPM-Solver++(2M)/(3M)) takes
them from previous steps (one evaluation per step, lower orders for the first steps); singlestep ((2S)/(3S)) from
intermediate points at lambda_s + h/2 (order 2) or h/3, 2h/3 (order 3).

Every D_j enters the update multiplied by m_t, as m_t D_j = (m_t / m_j) (x_j + s_j^2 score_j) with the ratio
in float64: the step never divides by an m(t) that underflows float16 (VPSDE(beta_max=100) has m(T) ~ 1e-11).

Options: order 1-3, multistep (True) or singlestep (False), sigma_min (end noise level s/m), sigma_max (the grid starts
at min(sigma_max, sigma(T)); 80 as EDM and the other ODE solvers, so that a VP process (sigma(T) ~ 150) takes the same
steps as a VE one), lower_order_final (order <= 2 on the last steps when there are fewer than 15, as DPM-Solver does,
for stability), denoise_to_zero (the last evaluation spent on x0_hat at the final time: a first-order step to
sigma = 0), eta > 0 (SDE-DPM-Solver++(1M/2M/3M), multistep; eta = 1 follows the reverse SDE and is ``sde_dpm_solver``'s
default), stochastic_below (with eta > 0: only the steps that start at noise levels at or below it are stochastic, those
above follow the probability-flow ODE, eta = 0; the window of stochasticity of Karras et al. 2022, S_tmax),
stochastic_above (with eta > 0: only the steps that start at or above it are stochastic, Karras et al.'s S_tmin; with
stochastic_below a band, as diffusers' SA-Solver takes its tau = 1 between timesteps 200 and 800; docs/samplers.md, "A
band of reduced noise at 20 evaluations"), midpoint (order 2 multistep at eta = 0: the update of DPM-Solver++(2M) as Lu
et al. 2022b write it, Algorithm 2, m_t (1 - e^{-h}) [D_0 + (D_0 - D_-1) / (2 r)], as k-diffusion's dpmpp_2m and
diffusers' default solver_type take it; False: the phi_2 form above, the 3M warm-up's. The midpoint form is 0.41-0.87x
the error of phi_2 at 5 and 10 evaluations on 14 mixtures, 0.82-1.10x at 20 (gm 0.94), 0.99-1.05x at 50:
docs/samplers.md, "The midpoint form of DPM-Solver++(2M)"; the SDE step takes it whatever this says), corrector_order
(multistep, any eta: the SA-Solver corrector of that order, Xue et al. 2023, at no extra evaluation; 0 none, the
default: ``_corrector_plan``; docs/samplers.md, "The SA-Solver corrector, two more peers and a second digits network"),
final_order (with denoise_to_zero, multistep and eta = 0: 2 takes the final step to sigma = 0 at second order in sigma,
``_common.to_zero``; docs/samplers.md, "A second-order step to sigma = 0"); the grid (``sample(grid=...)``) defaults to
"log_snr". The defaults (order 2 multistep to sigma_min = 0.03: the noise left costs O((sigma_min^2 / v)^2) in the
moments of a component of variance v, less than the hardest steps it saves; use 0.002 (EDM) for finer data or large
budgets) measured best at 10-20 evaluations: docs/samplers.md, "What wins at 10-20 evaluations (exact score)". """

from __future__ import annotations

import math

import torch

from .._checks import axpy
from ._common import Schedule, check_final_order, method, posterior_mean, to_zero
from .calibrate import gaussian_weights
from .multistep import corrector_weights, data_plan, data_store, run_plan, warm_orders


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
        begin="sigma_max", deterministic=lambda o: not o.get("eta", 0), noisy_end=lambda o: not o["denoise_to_zero"])
def dpm_solver(score, sde, x, times, generator, callback, order: int = 2, multistep: bool = True,
               sigma_min: float = 0.03, lower_order_final: bool = True, denoise_to_zero: bool = False,
               rho: float = 7.0, eta: float = 0.0, calibrate: bool = False, stochastic_below: float | None = None,
               midpoint: bool = True, sigma_max: float = 80.0, corrector_order: int = 0, final_order: int = 1,
               stochastic_above: float | None = None):
    check_final_order(final_order, denoise_to_zero, eta)
    if None not in (stochastic_above, stochastic_below) and stochastic_above >= stochastic_below:
        raise ValueError(f"stochastic_above must be below stochastic_below (the steps between them are stochastic); "
                         f"got stochastic_above={stochastic_above}, stochastic_below={stochastic_below}.")
    if final_order == 2 and not multistep:
        raise ValueError("final_order=2 extrapolates eps from the evaluation at the grid's level before the last, "
                         "which the singlestep solver (multistep=False) does not make; use multistep=True.")
    if order not in (1, 2, 3) or (eta > 0 and not multistep):
        raise ValueError(f"order must be 1, 2 or 3, and eta > 0 (stochastic) works with multistep=True; "
                         f"got eta={eta}, order={order}, multistep={multistep}.")
    if corrector_order not in (0, 1, 2, 3, 4) or (corrector_order and not multistep):
        raise ValueError(f"corrector_order must be 0 (none) or the order 1-4 of the SA-Solver corrector, which works "
                         f"with multistep=True; got corrector_order={corrector_order}, multistep={multistep}.")
    if calibrate and not (eta > 0 and order == 2):
        raise ValueError(f"calibrate=True calibrates the SDE 2M step: it needs eta > 0 and order=2; got eta={eta}, "
                         f"order={order}.")
    S = Schedule(sde, times, x)
    N, m, s = len(S), S.m, S.s
    lam = torch.log(S.m64) - torch.log(S.s64)  # half the log-SNR
    h = lam[1:] - lam[:-1]
    if multistep:  # the SDE variant (eta > 0) on every step, without lower_order_final
        sig = S.s64 / S.m64
        start = sig[:-1]  # each step's starting level: stochastic inside [stochastic_above, stochastic_below]
        inside = (start <= (math.inf if stochastic_below is None else stochastic_below)) & \
            (start >= (0.0 if stochastic_above is None else stochastic_above))
        etas = inside.to(h.dtype) * float(eta)  # float64, like h
        c = gaussian_weights(sig.cpu().numpy(), etas.cpu().numpy(), denoise_to_zero, corrector_order) \
            if calibrate else None
        plan, noise = _multistep_plan(S, h, warm_orders(N, order, lower_order_final and N < 15 and eta == 0), etas,
                                      midpoint=order == 2 and (eta > 0 or midpoint), c=c)
        fix = _corrector_plan(S, lam, etas, corrector_order, [a for a, _ in plan]) if corrector_order else None
        x = run_plan(score, x, S, data_store(S), plan, callback, corrector=fix, noise=noise, generator=generator)
    else:
        evals = int(min(score.budget - score.count, 3 * N)) - denoise_to_zero
        orders = ([order] * (evals // order) + ([evals % order] if evals % order else []))[:N]
        phi1, phi2, _ = (p.tolist() for p in _phis(h))
        for i, k in enumerate(orders + [1] * (N - len(orders))):
            mD0 = posterior_mean(x, score(x, S.tb(i, x)), 1.0, s[i])
            x_next = axpy((s[i + 1] / s[i]) * x, mD0, -phi1[i] * m[i + 1] / m[i])
            if k >= 2:
                x_next = _singlestep(score, sde, x, mD0, i, k, lam, S, x_next, phi1[i], phi2[i])
            x = callback(i, S.t_d[i + 1], x_next)
    return to_zero(score, x, S, final_order) if denoise_to_zero else x


@method(steps=lambda nfe, o: _steps(nfe, {**o, "multistep": True}), reserve=lambda o: int(o["denoise_to_zero"]),
        grid="log_snr", end="sigma_min", begin="sigma_max", deterministic=lambda o: o.get("eta", 1.0) == 0,
        noisy_end=lambda o: not o["denoise_to_zero"])
def sde_dpm_solver(score, sde, x, times, generator, callback, order: int = 2, sigma_min: float = 0.03,
                   denoise_to_zero: bool = False, eta: float = 1.0, calibrate: bool = False,
                   stochastic_below: float | None = None, sigma_max: float = 80.0, corrector_order: int = 0,
                   stochastic_above: float | None = None):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b): ``dpm_solver`` with eta = 1 (the reverse SDE) as its default, a name of
    its own so that ``default_method`` can name it; order 3 is SDE-DPM-Solver++(3M). Same draws as
    ``dpm_solver(eta=eta, order=order, ...)``. sigma_min = 0.03 and order 2: docs/samplers.md, "SDE-DPM-Solver++(3M)
    and the default method from 20 evaluations". ``calibrate=True`` (order 2): the extrapolation weights of each
    step chosen so that the sampler is exact in variance on Gaussian data of every scale from 2 sigma_min up
    (``samplers/calibrate.py``; docs/samplers.md, "The calibrated SDE step"). ``stochastic_below=S``: eta only on the
    steps that start at noise levels <= S, the probability-flow ODE above (docs/samplers.md, "The stochastic
    window"); ``stochastic_above=A``: eta only on those that start at >= A (both: a band)."""
    return dpm_solver(score, sde, x, times, generator, callback, order=order, sigma_min=sigma_min,
                      denoise_to_zero=denoise_to_zero, eta=eta, sigma_max=sigma_max, calibrate=calibrate,
                      stochastic_below=stochastic_below, corrector_order=corrector_order,
                      stochastic_above=stochastic_above)


def _multistep_plan(S, h, orders, eta, midpoint=False, c=None):
    """DPM-Solver++(kM) (eta = 0) and SDE-DPM-Solver++(kM) (eta > 0; Lu et al. 2022b) for ``run_plan``: the plan and
    each step's noise std (None when every step has eta = 0); ``eta`` holds each step's eta (float64, like h).
    With y = x / m the eta-family dy/dlambda = (1 + eta)(D - y) + noise (eta = 0 the probability-flow ODE, eta = 1
    the reverse SDE) has over a step the exact solution

        x_t = (s_t / s_s) e^{-eta h} x_s + m_t int_0^h (1 + eta) e^{-(1 + eta)(h - u)} D(lambda_s + u) du
              + s_t sqrt(1 - e^{-2 eta h}) z.

    With D = D_0 + u D' + u^2 D'' / 2 and H = (1 + eta) h the integral is, term by term,
    -phi_1(H) D_0 + phi_2(H) (h D') - 2 phi_3(H) (h^2 D'' / 2), the update above with its phis at H (the u^k weights
    scale as (1 + eta)^-k), h D' and h^2 D'' / 2 the divided differences D_1, D_2 of D in lambda over the last
    evaluations: x_{i+1} = a_i x_i + sum_j c_j (m' / m_j) m_j D_j over j = i, i-1, i-2. ``midpoint`` (SDE 2M) takes
    the midpoint form m_t (1 - e^{-H}) [D_0 + (1 / (2 r)) (D_0 - D_-1)], r = h_prev / h, for order 2; the order-2
    warm-up step of 3M keeps phi_2(H) (D_0 - D_-1) / r, so that eta = 0 is the ODE 3M. ``c`` (with midpoint): the
    weight c_i / r in place of 1 / (2 r) on each step (``calibrate.gaussian_weights``)."""
    phi1, phi2, phi3 = (p.tolist() for p in _phis((1 + eta) * h))
    hl = h.tolist()

    def weights(i, k):  # on D_i, D_{i-1}, D_{i-2}
        if k == 1:
            return [-phi1[i]]
        r0 = hl[i - 1] / hl[i]  # d10 = (D_i - D_{i-1}) / r0 ~ h dD/dlambda
        if k == 2:
            w = -(0.5 if c is None else c[i]) * phi1[i] / r0 if midpoint else phi2[i] / r0
            return [-phi1[i] + w, -w]
        # divided differences over lambda_{i-2}, lambda_{i-1}, lambda_i (DPM-Solver++(3M)):
        # D_1 = d10 + r0 (d10 - d11) / (r0 + rb) ~ h D', D_2 = (d10 - d11) / (r0 + rb) ~ h^2 D'' / 2, so
        # D_2's weight is -2 phi_3 (the reference implementations' -phi_3 leaves an O(h^3) local error)
        rb = hl[i - 2] / hl[i]  # d11 = (D_{i-1} - D_{i-2}) / rb
        a = phi2[i] * (1 + r0 / (r0 + rb)) - 2 * phi3[i] / (r0 + rb)  # weight of d10
        b = phi2[i] * r0 / (r0 + rb) - 2 * phi3[i] / (r0 + rb)  # minus the weight of d11
        return [-phi1[i] + a / r0, -a / r0 - b / rb, b / rb]

    noise = (S.s64[1:] * torch.sqrt(-torch.expm1(-2 * eta * h))).tolist() if bool((eta > 0).any()) else None
    return data_plan(S, orders, weights, (S.s64[1:] / S.s64[:-1] * torch.exp(-eta * h)).tolist()), noise


def _corrector_plan(S, lam, eta, order, carry):
    """The SA-Solver corrector (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion
    Models", the SA-Corrector in data prediction) of the eta-family step above: once D_{i+1} is known, x_{i+1} is
    taken again from x_i with D in the step's integral the Lagrange polynomial in lambda through lambda_{i+1} and the
    last order - 1 nodes (an Adams-Moulton step; its first steps with the nodes there are), and with the step's own
    noise; ``carry``: the predictor's weights a_i on x_i, the same. The weights: ``multistep.corrector_weights``."""
    w = corrector_weights(lam.tolist(), eta.tolist(), order)
    return data_plan(S, [len(wi) - 1 for wi in w], lambda i, k: w[i], carry)


def _singlestep(score, sde, x, mD0, i, k, lam, S, x_next, phi1, phi2):
    """The intermediate evaluations and the update of DPM-Solver++(2S) (r1 = 1/2) or (3S) (r1 = 1/3, r2 = 2/3)."""
    h = lam[i + 1] - lam[i]
    rs = [0.5] if k == 2 else [1 / 3, 2 / 3]
    lam_mid = torch.stack([lam[i] + r * h for r in rs])
    t_mid = sde.t_from_log_snr(2 * lam_mid)
    tm, mm, sm = t_mid.tolist(), sde.marginal_scale(t_mid).tolist(), sde.marginal_std(t_mid).tolist()
    e1 = torch.expm1(-(lam_mid - lam[i])).tolist()
    m, s = S.m, S.s
    E0 = (m[i + 1] / m[i]) * mD0  # m_{i+1} D_0

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
