"""The analytic ground truth: a Gaussian mixture pushed through any of the linear SDEs.

If x_0 ~ sum_k w_k N(mu_k, S_k) and x_t = m(t) x_0 + s(t) z, then x_t is again a mixture,

    p_t(x) = sum_k w_k N(x; m mu_k, C_k),      C_k = m^2 S_k + s^2 I,

so its log-density, score, and the posterior moments of x_0 given x_t are all exact. With the
eigendecomposition S_k = U_k diag(l_k) U_k^T (done once), C_k = U_k diag(m^2 l_k + s^2) U_k^T, so every
time t costs one batched projection and no factorisation. Everything is computed in float64 and returned
in the dtype of the input.

Per component (z = U_k^T (x - m mu_k), v = m^2 l_k + s^2):
    score_k          = -U_k (z / v)
    E[x_0 | x, k]    = mu_k + U_k (m l_k z / v)
    Cov[x_0 | x, k]  = U_k diag(l_k s^2 / v) U_k^T
and the mixture quantities weight them by the responsibilities r_k(x) = w_k N_k(x) / p_t(x).
"""

from __future__ import annotations

import math

import torch

from ._checks import check_batch, check_finite, check_time
from .sde import SDE

_LOG_2PI = math.log(2 * math.pi)


class GaussianMixture:
    """sum_k w_k N(mu_k, S_k) in R^d: weights [K], means [K, d], covs [K, d, d] (or [K, d] diagonals,
    or [K] isotropic variances)."""

    def __init__(self, weights, means, covs):
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        S = torch.as_tensor(covs, dtype=torch.float64)
        if mu.ndim != 2:
            raise ValueError(f"means must have shape [K, d], got {tuple(mu.shape)}.")
        K, d = mu.shape
        if w.shape != (K,):
            raise ValueError(f"weights must have shape [K] = [{K}] to match means, got {tuple(w.shape)}.")
        for name, v in (("weights", w), ("means", mu), ("covs", S)):
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"{name} contains NaN or inf.")
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {w.tolist()}.")
        if S.shape == (K,):
            S = S[:, None, None] * torch.eye(d, dtype=torch.float64)
        elif S.shape == (K, d):
            S = torch.diag_embed(S)
        elif S.shape != (K, d, d):
            raise ValueError(f"covs must have shape [K, d, d], [K, d] or [K], got {tuple(S.shape)} for K={K}, d={d}.")
        if not torch.allclose(S, S.transpose(1, 2), atol=1e-10, rtol=1e-8):
            raise ValueError("covs must be symmetric matrices.")
        S = 0.5 * (S + S.transpose(1, 2))
        lam, U = torch.linalg.eigh(S)
        if bool((lam <= 0).any()):
            k = int((lam <= 0).any(1).nonzero()[0])
            raise ValueError(
                f"covs[{k}] is not positive definite (smallest eigenvalue {float(lam[k].min()):.3g}); "
                "add a small multiple of the identity."
            )
        self.weights = w / w.sum()
        self.means, self.covs = mu, S
        self.K, self.d = K, d
        self._log_w = torch.log(self.weights)
        self._lam, self._U = lam, U  # [K, d], [K, d, d]
        self._chol = U * lam.sqrt()[:, None, :]  # S_k = chol chol^T

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, d={self.d})"

    # ---- helpers ----
    def _to(self, x: torch.Tensor):
        if x.device != self._U.device:
            for name in ("weights", "means", "covs", "_log_w", "_lam", "_U", "_chol"):
                setattr(self, name, getattr(self, name).to(x.device))

    def _prepare(self, x, t, sde, check: bool = True):
        check_batch(x)
        if x.ndim < 2 or x[0].numel() != self.d:
            raise ValueError(f"x must have shape [B, {self.d}] (or [B, *dims] with {self.d} entries), "
                             f"got {tuple(x.shape)}.")
        self._to(x)
        if not check:  # fast path for loops and torch.func transforms: no data-dependent checks
            x64 = x.reshape(x.shape[0], self.d).to(torch.float64)
            t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
            return x64, sde.marginal_scale(t), sde.marginal_std(t)
        check_finite(x)
        x64 = x.reshape(x.shape[0], self.d).to(torch.float64)
        if t is None:
            one = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
            return x64, one, torch.zeros_like(one)
        if not isinstance(sde, SDE):
            raise ValueError("Pass the forward process (sde=VESDE(...)/VPSDE(...)/SubVPSDE(...)) along with t.")
        t = check_time(t, x64, sde.T)
        return x64, sde.marginal_scale(t), sde.marginal_std(t)

    def _components(self, x64, m, s):
        """z [B, K, d], v [B, K, d], log N_k [B, K]."""
        y = x64[:, None, :] - m[:, None, None] * self.means[None]  # [B, K, d]
        z = torch.einsum("kij,bki->bkj", self._U, y)
        v = m[:, None, None] ** 2 * self._lam[None] + s[:, None, None] ** 2
        logn = -0.5 * ((z * z / v).sum(-1) + torch.log(v).sum(-1) + self.d * _LOG_2PI)
        return z, v, logn

    def _resp(self, logn):
        joint = self._log_w + logn
        return torch.softmax(joint, dim=1), torch.logsumexp(joint, dim=1)

    # ---- public ----
    def log_prob(self, x: torch.Tensor, t=None, sde: SDE | None = None) -> torch.Tensor:
        """log p_t(x), [B]. With t=None, log p_0(x)."""
        x64, m, s = self._prepare(x, t, sde)
        _, _, logn = self._components(x64, m, s)
        return self._resp(logn)[1].to(x.dtype)

    def responsibilities(self, x: torch.Tensor, t=None, sde: SDE | None = None) -> torch.Tensor:
        """r_k(x) = P(component k | x_t = x), [B, K]."""
        x64, m, s = self._prepare(x, t, sde)
        return self._resp(self._components(x64, m, s)[2])[0].to(x.dtype)

    def score(self, x: torch.Tensor, t=None, sde: SDE | None = None, check: bool = True) -> torch.Tensor:
        """grad_x log p_t(x), shaped like x. ``check=False`` skips input validation (no host syncs;
        usable under torch.func transforms)."""
        x64, m, s = self._prepare(x, t, sde, check)
        z, v, logn = self._components(x64, m, s)
        r = self._resp(logn)[0]
        sc = -torch.einsum("kij,bkj,bk->bi", self._U, z / v, r)
        return sc.to(x.dtype).reshape(x.shape)

    def score_fn(self, sde: SDE):
        """The exact score as a plain callable score_fn(x, t) for samplers and likelihoods (unchecked)."""
        if not isinstance(sde, SDE):
            raise ValueError("score_fn needs the forward process, e.g. gmm.score_fn(VPSDE()).")
        return lambda x, t: self.score(x, t, sde, check=False)

    def posterior_mean(self, x: torch.Tensor, t, sde: SDE) -> torch.Tensor:
        """E[x_0 | x_t = x], shaped like x."""
        x64, m, s = self._prepare(x, t, sde)
        z, v, logn = self._components(x64, m, s)
        r = self._resp(logn)[0]
        means_k = self.means[None] + torch.einsum("kij,bkj->bki", self._U, m[:, None, None] * self._lam * z / v)
        return (r[..., None] * means_k).sum(1).to(x.dtype).reshape(x.shape)

    def posterior_cov(self, x: torch.Tensor, t, sde: SDE) -> torch.Tensor:
        """Cov[x_0 | x_t = x], [B, d, d]."""
        x64, m, s = self._prepare(x, t, sde)
        z, v, logn = self._components(x64, m, s)
        r = self._resp(logn)[0]
        means_k = self.means[None] + torch.einsum("kij,bkj->bki", self._U, m[:, None, None] * self._lam * z / v)
        cdiag = self._lam[None] * s[:, None, None] ** 2 / v  # [B, K, d]
        # sum_k r_k (U_k diag(c_k) U_k^T + mean_k mean_k^T) - mean mean^T
        within = torch.einsum("kij,bkj,klj,bk->bil", self._U, cdiag, self._U, r)
        mean = (r[..., None] * means_k).sum(1)
        dev = means_k - mean[:, None, :]
        between = torch.einsum("bk,bki,bkj->bij", r, dev, dev)
        return (within + between).to(x.dtype)

    def sample(self, n: int, t=None, sde: SDE | None = None, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """n exact samples of p_0 (or of p_t when t and sde are given), [n, d]."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}.")
        dev = generator.device if generator is not None else self._U.device
        if dev != self._U.device:
            self._to(torch.empty(0, device=dev))
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.d, dtype=torch.float64, generator=generator, device=dev)
        x0 = self.means[k] + torch.einsum("nij,nj->ni", self._chol[k], eps)
        if t is None:
            return x0.to(dtype)
        if not isinstance(sde, SDE):
            raise ValueError("Pass the forward process (sde=...) along with t.")
        t = check_time(t, x0, sde.T)
        noise = torch.randn(n, self.d, dtype=torch.float64, generator=generator, device=dev)
        return (sde.marginal_scale(t)[:, None] * x0 + sde.marginal_std(t)[:, None] * noise).to(dtype)
