"""Tweedie's formulas: posterior moments of the clean data from a score function.

For x_t = m x_0 + s z with z ~ N(0, I) (m = m(t), s = s(t) of the forward SDE), and score = grad log p_t,

    first order  (Efron 2011):           E[x_0 | x_t]   = (x_t + s^2 score(x_t)) / m
    second order (e.g. Meng et al. 2021): Cov[x_0 | x_t] = s^2 / m^2 (I + s^2 J(x_t)),  J = grad_x score

(the Hessian of log p_t; the derivation differentiates the first-order formula once more). J is a D x D
matrix per example: it is formed exactly for small D (D batched vector-Jacobian products), and for images
summarised by its diagonal (Hutchinson-style probes, diag J = E[v * (v^T J)] for E[v v^T] = I; Bekas et al.
2007), its trace (Hutchinson) or a low-rank eigen-approximation (randomised subspace iteration; Halko et al.
2011). J of a learned score need not be symmetric; the symmetric part is used, which is what the
covariance formula sees.

``denoise`` applies the first formula to a noisy observation y = x_0 + sigma n at a known noise level: the
time t with s(t) / m(t) = sigma makes m(t) y distributed as x_t.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._checks import axpy, batch_view, check_batch, check_finite, check_time
from .divergence import PROBES, divergence_exact, divergence_hutchinson, sample_probes, vjp
from .sde import SDE

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _checked(score_fn, sde, x, t, name="x"):
    if not callable(score_fn):
        raise TypeError("score_fn must be a callable score_fn(x, t) -> tensor shaped like x.")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scorelab SDE (VESDE/VPSDE/SubVPSDE), got {type(sde).__name__}.")
    check_batch(x, name)
    check_finite(x, name)
    t = check_time(t, x, sde.T)
    if bool((sde.marginal_std(t) <= 0).any()):
        raise ValueError("t must be > 0: the posterior given x_0 itself is a point mass and the score is singular.")
    return t


def _scales(sde, t, x):
    return batch_view(sde.marginal_scale(t), x), batch_view(sde.marginal_std(t), x)


def posterior_mean(x: torch.Tensor, score: torch.Tensor, m, s) -> torch.Tensor:
    """Tweedie's x0_hat = (x + s^2 score) / m = E[x_0 | x_t = x] (m, s floats or broadcastable against x;
    unchecked); m = 1.0 gives m x0_hat. The one place this formula lives. With a float s it is one fused kernel
    (s^2 in the kernel's float32-or-wider arithmetic); a tensor s is applied as s (s score), so s^2 never
    overflows a low-precision dtype."""
    xs = axpy(x, score, s * s) if isinstance(s, float) else x + s * (s * score)
    return xs if isinstance(m, float) and m == 1.0 else xs / m


def tweedie_mean(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, t) -> torch.Tensor:
    """E[x_0 | x_t = x] = (x + s(t)^2 score(x, t)) / m(t), shaped like x [B, *dims]; t a float or [B]."""
    t = _checked(score_fn, sde, x, t)
    m, s = _scales(sde, t, x)
    return posterior_mean(x, score_fn(x, t), m, s)


def score_jacobian(score_fn: ScoreFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """J = d score / d x per example, [B, D, D] with D = prod(dims), symmetrised. Costs D batched VJPs."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = score_fn(xg, t)
        B, D = x.shape[0], x[0].numel()
        basis = torch.eye(D, dtype=x.dtype, device=x.device).reshape(D, 1, *x.shape[1:]).expand(D, *x.shape)
        rows = vjp(y, xg, basis).reshape(D, B, D).transpose(0, 1)  # rows[b, i] = e_i^T J_b
    return 0.5 * (rows + rows.transpose(1, 2))


def tweedie_cov(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, t) -> torch.Tensor:
    """Cov[x_0 | x_t = x] = s^2/m^2 (I + s^2 J), exact, [B, D, D] (D = prod(dims)); for small D."""
    t = _checked(score_fn, sde, x, t)
    J = score_jacobian(score_fn, x, t)
    m, s = sde.marginal_scale(t)[:, None, None], sde.marginal_std(t)[:, None, None]
    eye = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device)
    return s * s / (m * m) * (eye + s * s * J)


def _check_probes(n_probes, probe):
    if not isinstance(n_probes, int) or isinstance(n_probes, bool) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}.")
    if probe not in PROBES:
        raise ValueError(f"Unknown probe {probe!r}; choose one of {PROBES}.")


def tweedie_cov_diag(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, t, n_probes: int = 16,
                     probe: str = "rademacher", generator: torch.Generator | None = None,
                     exact: bool = False) -> torch.Tensor:
    """Diagonal of Cov[x_0 | x_t = x], shaped like x [B, *dims]: s^2/m^2 (1 + s^2 diag J).

    diag J is estimated by the probe average of v * (v^T J) (unbiased; with Rademacher probes the error
    comes from the off-diagonal entries only and falls as 1/sqrt(n_probes)); ``exact=True`` forms it with
    D batched VJPs instead.
    """
    t = _checked(score_fn, sde, x, t)
    _check_probes(n_probes, probe)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = score_fn(xg, t)
        if exact:
            D = x[0].numel()
            v = torch.eye(D, dtype=x.dtype, device=x.device).reshape(D, 1, *x.shape[1:]).expand(D, *x.shape)
            diag = (vjp(y, xg, v) * v).sum(0)
        else:
            v = sample_probes(x, n_probes, probe, generator)
            diag = (vjp(y, xg, v) * v).mean(0)
    m, s = _scales(sde, t, x)
    return (s * s / (m * m) * (1 + s * s * diag)).detach()


def tweedie_cov_trace(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, t, n_probes: int | None = None,
                      probe: str = "rademacher", generator: torch.Generator | None = None) -> torch.Tensor:
    """tr Cov[x_0 | x_t = x] = s^2/m^2 (D + s^2 div score), [B]: the expected squared error of the posterior
    mean. Exact divergence when ``n_probes`` is None, Hutchinson with n_probes probes otherwise."""
    t = _checked(score_fn, sde, x, t)
    fn = lambda v: score_fn(v, t)  # noqa: E731
    if n_probes is None:
        div, _ = divergence_exact(fn, x)
    else:
        _check_probes(n_probes, probe)
        div, _ = divergence_hutchinson(fn, x, n_probes, probe, generator)
    m, s = sde.marginal_scale(t), sde.marginal_std(t)
    return (s * s / (m * m) * (x[0].numel() + s * s * div)).detach()


def tweedie_cov_lowrank(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, t, rank: int = 8, n_iter: int = 4,
                        oversample: int = 4, generator: torch.Generator | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading eigenpairs of Cov[x_0 | x_t = x] by randomised subspace iteration (Halko et al. 2011).

    Returns eigenvalues [B, rank] (descending) and eigenvectors [B, rank, *dims], so that
    Cov ~ sum_k lam_k u_k u_k^T. Each iteration applies the covariance to rank + oversample vectors at once
    through one batched VJP of the score (score evaluated once). Exact when rank + oversample >= D.
    """
    t = _checked(score_fn, sde, x, t)
    B, D = x.shape[0], x[0].numel()
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= D:
        raise ValueError(f"rank must be an integer in [1, D={D}], got {rank!r}.")
    k = min(D, rank + oversample)
    m, s = sde.marginal_scale(t), sde.marginal_std(t)
    c0, c1 = (s * s / (m * m))[:, None, None], (s**4 / (m * m))[:, None, None]
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = score_fn(xg, t)

        def cov_apply(Q):  # Q [B, D, k] orthonormal columns -> Cov Q [B, D, k]
            V = Q.permute(2, 0, 1).reshape(k, *x.shape)
            # J^T V by one batched VJP (the true J is a Hessian, so this is J V); the graph of the single score
            # evaluation is kept for the next iteration
            (JV,) = torch.autograd.grad(y, xg, grad_outputs=V, is_grads_batched=True, retain_graph=True)
            JV = JV.reshape(k, B, D).permute(1, 2, 0)
            return c0 * Q + c1 * JV

        omega = torch.randn(B, D, k, generator=generator, dtype=x.dtype, device=x.device)
        Q = torch.linalg.qr(omega).Q
        for _ in range(n_iter):
            Q = torch.linalg.qr(cov_apply(Q)).Q
        CQ = cov_apply(Q)
    small = Q.transpose(1, 2) @ CQ
    lam, W = torch.linalg.eigh(0.5 * (small + small.transpose(1, 2)))
    lam, W = lam.flip(-1)[:, :rank], W.flip(-1)[:, :, :rank]
    U = (Q @ W).transpose(1, 2).reshape(B, rank, *x.shape[1:])
    return lam.detach(), U.detach()


def denoise(score_fn: ScoreFn, sde: SDE, y: torch.Tensor, sigma, return_cov_diag: bool = False,
            **diag_options):
    """Posterior-mean denoiser for y = x_0 + sigma n, n ~ N(0, I), at a known noise level sigma (float or [B]).

    The time t with s(t)/m(t) = sigma (``sde.t_from_std_ratio``) makes x_t = m(t) y distributed exactly as the
    forward process at t, so E[x_0 | y] = (x_t + s^2 score(x_t, t)) / m. Returns x_hat shaped like y, and with
    ``return_cov_diag`` also the per-entry posterior variance (``tweedie_cov_diag``, options passed on).
    """
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scorelab SDE (VESDE/VPSDE/SubVPSDE), got {type(sde).__name__}.")
    check_batch(y, "y")
    check_finite(y, "y")
    sig = torch.as_tensor(sigma, dtype=y.dtype, device=y.device)
    if sig.ndim == 0:
        sig = sig.expand(y.shape[0])
    if sig.shape != (y.shape[0],) or not bool(torch.isfinite(sig).all()) or bool((sig <= 0).any()):
        raise ValueError(f"sigma must be a positive number or a [B] = [{y.shape[0]}] tensor of positive numbers.")
    T = torch.full_like(sig, sde.T)
    top = sde.marginal_std(T) / sde.marginal_scale(T)
    if bool((sig > top).any()):
        raise ValueError(f"sigma = {float(sig.max()):.4g} exceeds the largest noise level the process reaches, "
                         f"s(T)/m(T) = {float(top[0]):.4g}; use an SDE with a larger sigma_max / terminal noise.")
    t = sde.t_from_std_ratio(sig).clamp(max=sde.T)
    x_t = batch_view(sde.marginal_scale(t), y) * y
    x_hat = tweedie_mean(score_fn, sde, x_t, t)
    if not return_cov_diag:
        return x_hat
    return x_hat, tweedie_cov_diag(score_fn, sde, x_t, t, **diag_options)
