"""Consistent imputation: sequential Monte Carlo with the forward-noised observation as the twist (MCGdiff).

Task: some entries of x_0 are known, x_0 = (x_k, x_u) with x_k = y; sample p_0(x_u | x_k = y) with only the
unconditional score. This is the noiseless-inpainting case of MCGdiff (Cardoso, Janati, Le Corff & Moulines,
"Monte Carlo guided diffusion for Bayesian linear inverse problems", ICLR 2024, arXiv:2308.07983): a particle
filter over the reverse chain whose intermediate targets tilt the model's marginals by the law of the
forward-noised observation, resampled when the effective sample size drops. It is exact as the number of
particles grows (for the model's own discretised reverse chain; that chain's bias vanishes with the steps).

On a grid T = t_0 > t_1 > ... > t_N = eps, the model's reverse chain is the ancestral kernel
    p(x_{i+1} | x_i) = N(mu_i(x_i), v_i I),   mu_i = c_x x_i + c_0 x0_hat(x_i),   x0_hat = (x_i + s_i^2 score) / m_i,
the exact Gaussian posterior q(x_{i+1} | x_i, x_0 = x0_hat) of the forward kernel (``SDE.transition``), so one
score evaluation per particle and step. The twist at t_i is the forward-noised observation
    g_i(x_k) = N(x_k; m_i y, s_i^2 I)   (i >= 1; g_0 = 1),
and the i-th target is gamma_i(x_{0:i}) = p_T(x_0) prod_{j<i} p(x_{j+1} | x_j) g_i(x_{i,k}). Each particle
moves with the locally optimal proposal q(x_{i+1} | x_i) proportional to p(x_{i+1} | x_i) g_{i+1}(x_{i+1,k}):
the unknown entries from N(mu_u, v), the known ones from the product of two Gaussians, with posterior variance
v s^2 / (v + s^2) and mean mu_k + v / (v + s^2) (m_{i+1} y - mu_k). The incremental weight
    w_i = N(mu_k; m_{i+1} y, (v_i + s_{i+1}^2) I) / g_i(x_{i,k})
depends on x_i only, so it is computed, and the particles resampled (systematic resampling, when the ESS falls
below ``ess`` x particles), before the move. The last target is the model's law at eps tilted by
N(x_k; m_eps y, s_eps^2), i.e. conditioned on x_k = y up to the noise s(eps) (~0.01 for VP at eps = 1e-3);
the last move returns the mean of the unknown entries (as every sampler's last step does) and y exactly for the
known ones; one particle per batch row is then drawn from the final weights.

Budget: ``nfe`` = score evaluations per particle = steps of the grid. Each evaluation is one batched call on
[B x particles, *dims] inputs, so the network sees nfe x particles x B examples in all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .samplers._common import CountedScore, SampleResult, gaussian
from .samplers.grids import make_grid
from .sde import SDE


@dataclass
class SMCResult(SampleResult):
    particles: int = 1  # particles per batch row (each score call evaluates B x particles inputs)
    resampled: float = 0.0  # resampling events per batch row, averaged over the batch
    ess: float = 0.0  # final effective sample size / particles, averaged over the batch


def _coefficients(sde: SDE, times: torch.Tensor):
    """float64 lists, per grid time or step: m, s (marginal), c_x, c_0, v (ancestral kernel t_i -> t_{i+1})."""
    t = times.to(torch.float64)
    m, s = sde.marginal_scale(t), sde.marginal_std(t)
    r, G = sde.transition(t[1:], t[:-1])
    cx = r * (s[1:] / s[:-1]) ** 2
    c0 = m[1:] * (G / s[:-1]) ** 2
    v = (G * s[1:] / s[:-1]) ** 2
    return [c.tolist() for c in (m, s, cx, c0, v)]


def systematic_resample(logw: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Indices [B, P] drawn by systematic resampling from each row of log-weights [B, P] (one uniform per row)."""
    B, P = logw.shape
    cdf = torch.softmax(logw, 1).cumsum(1)
    u = (torch.rand((B, 1), generator=generator, dtype=logw.dtype, device=logw.device)
         + torch.arange(P, dtype=logw.dtype, device=logw.device)) / P
    return torch.searchsorted(cdf.contiguous(), u.contiguous()).clamp_max(P - 1)


def effective_sample_size(logw: torch.Tensor) -> torch.Tensor:
    """1 / sum_j w_j^2 of the normalised weights of each row of log-weights [B, P]."""
    return 1.0 / torch.softmax(logw, 1).square().sum(1)


def impute(score_fn, sde: SDE, x: torch.Tensor, known: torch.Tensor, nfe: int = 400, particles: int = 32,
           ess: float = 0.5, eps: float = 1e-3, grid: str = "uniform",
           generator: torch.Generator | None = None) -> SMCResult:
    """Sample x[known == 0] from p_0(unknown | known = x[known == 1]) by twisted SMC (see the module).

    x [B, *dims] (finite; its unknown entries are ignored); known: 0/1 tensor shaped like x. ``particles`` per
    batch row, resampled when their ESS falls below ``ess`` x particles; ``nfe`` steps on ``grid`` from T to
    ``eps``. Returns SMCResult with x [B, *dims] (known entries equal to x), nfe, steps, particles, resampled, ess.
    Checks of the arguments: ``scorelab.conditional.inpaint``.
    """
    B, dims, P = x.shape[0], tuple(x.shape[1:]), particles
    times = make_grid(grid, sde, nfe, eps)
    m, s, cx, c0, v = _coefficients(sde, times)
    t_d = times.to(dtype=x.dtype, device=x.device)
    score = CountedScore(score_fn, nfe)
    kw = {"dtype": x.dtype, "device": x.device}

    def rows(z):  # [B, *dims] -> [B * P, *dims], particle j of row b at b * P + j
        return z.unsqueeze(1).expand(B, P, *dims).reshape(B * P, *dims)

    known_p = rows(known.to(x.dtype))
    unknown_p = 1 - known_p
    y = rows(x.detach() * known.to(x.dtype))
    offset = (torch.arange(B, device=x.device) * P)[:, None]

    def sq(z):  # sum over the known entries of z^2, per row of particles: [B, P], float64 (log-weights)
        return (known_p * z * z).reshape(B, P, -1).sum(-1, dtype=torch.float64)

    xt = sde.prior_std * torch.randn((B * P, *dims), generator=generator, **kw)
    logw = torch.zeros((B, P), dtype=torch.float64, device=x.device)
    resampled = torch.zeros(B, dtype=torch.float64, device=x.device)
    for i in range(nfe):
        last = i == nfe - 1
        sc = score(xt, t_d[i].expand(B * P))
        mu = (cx[i] + c0[i] / m[i]) * xt + (c0[i] * s[i] ** 2 / m[i]) * sc
        target = m[i + 1] * y
        # weight: N(mu_k; m_{i+1} y, v + s_{i+1}^2) / g_i(x_k); constants shared by all particles dropped
        logw = logw - 0.5 * sq(mu - target) / (v[i] + s[i + 1] ** 2)
        if i > 0:
            logw = logw + 0.5 * sq(xt - m[i] * y) / s[i] ** 2
        # systematic resampling of the rows whose ESS dropped (all rows draw, so the stream never depends on it)
        need = effective_sample_size(logw) < ess * P
        idx = torch.where(need[:, None], systematic_resample(logw, generator),
                          torch.arange(P, device=x.device).expand(B, P))
        resampled = resampled + need.to(resampled.dtype)
        logw = torch.where(need[:, None], torch.zeros_like(logw), logw)
        mu = mu[(idx + offset).reshape(-1)]
        # move: the unknown entries from the model's kernel, the known ones from kernel x twist
        gain = v[i] / (v[i] + s[i + 1] ** 2)
        mu_k = mu + gain * (target - mu)
        z = gaussian(mu, generator)
        if last:
            xt = unknown_p * mu + known_p * y
        else:
            xt = unknown_p * (mu + v[i] ** 0.5 * z) + known_p * (mu_k + (gain * s[i + 1] ** 2) ** 0.5 * z)
    pick = torch.multinomial(torch.softmax(logw, 1), 1, generator=generator)  # [B, 1]
    out = xt[(pick + offset).reshape(-1)]
    out = torch.where(known.bool(), x.detach(), out)
    return SMCResult(x=out, nfe=score.count, steps=nfe, method="smc", times=times, particles=P,
                     resampled=float(resampled.mean()),
                     ess=float((effective_sample_size(logw) / P).mean()))


def conditional_mixture(gmm, known: torch.Tensor, y: torch.Tensor):
    """The exact law of the unknown coordinates of a ``GaussianMixture`` given the known ones.

    known: bool [d] (True = known); y: the known values [d_k]. Returns (weights [K], means [K, d_u],
    covs [K, d_u, d_u]): component k keeps weight proportional to w_k N(y; mu_k,k, S_k,kk) and becomes
    N(mu_k,u + S_k,uk S_k,kk^-1 (y - mu_k,k), S_k,uu - S_k,uk S_k,kk^-1 S_k,ku)."""
    k = known.to(torch.bool)
    u = ~k
    mu, S = gmm.means, gmm.covs
    y = y.to(torch.float64)
    Skk, Suk, Suu = S[:, k][:, :, k], S[:, u][:, :, k], S[:, u][:, :, u]
    L = torch.linalg.cholesky(Skk)
    diff = (y - mu[:, k]).unsqueeze(-1)
    sol = torch.cholesky_solve(diff, L)  # S_kk^-1 (y - mu_k)
    logn = -0.5 * (diff * sol).sum((-2, -1)) - torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    weights = torch.softmax(torch.log(gmm.weights) + logn, 0)
    means = mu[:, u] + (Suk @ sol).squeeze(-1)
    covs = Suu - Suk @ torch.cholesky_solve(Suk.transpose(1, 2), L)
    return weights, means, 0.5 * (covs + covs.transpose(1, 2))


def between_modes(gmm, known: torch.Tensor, share: float = 0.4):
    """Known values y on the segment between the known parts of modes 0 and 1 of a ``GaussianMixture``, placed
    (by bisection) where mode 0 holds ``share`` of the two modes' conditional weight: the hard case for
    imputation, whose conditional weights a biased sampler gets wrong. Returns (y [d_k], the exact conditional
    mixture of the unknown coordinates)."""
    from .oracle import GaussianMixture

    lo, hi = 0.0, 1.0
    for _ in range(50):
        lam = 0.5 * (lo + hi)
        y = lam * gmm.means[0, known] + (1 - lam) * gmm.means[1, known]
        w = conditional_mixture(gmm, known, y)[0]
        lo, hi = (lo, lam) if w[0] / (w[0] + w[1]) > share else (lam, hi)
    return y, GaussianMixture(*conditional_mixture(gmm, known, y))


__all__ = ["impute", "SMCResult", "systematic_resample", "effective_sample_size", "conditional_mixture",
           "between_modes"]
