"""Distances between samples (or learned scores) and the analytic truth of a Gaussian mixture.

moment KL (the benchmark's primary error, shared/BENCHMARKS.md):
    assign sample j to argmax_k r_k(x_j) (exact responsibilities under p_0), take the sample mean and covariance
    of the points assigned to k, and sum_k w_k KL( N(mean_k, cov_k) || N(mu_k, S_k) ); a component with at most
    d + 1 points scores a penalty of 10 w_k.
mode TV: 1/2 sum_k |w_k - share_k|, share_k the fraction of points assigned to k.
weighted Fisher divergence: E_t E_{x ~ p_t} s(t)^2 |s_theta(x, t) - grad log p_t(x)|^2 / D.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import check_batch
from .oracle import GaussianMixture
from .sde import SDE

EMPTY_PENALTY = 10.0


@dataclass
class MixtureError:
    moment_kl: float
    mode_tv: float
    nonfinite: int  # samples that were NaN/inf (counted as assigned to no component)


def gaussian_kl(mean_p: torch.Tensor, cov_p: torch.Tensor, mean_q: torch.Tensor, cov_q: torch.Tensor) -> torch.Tensor:
    """KL( N(mean_p, cov_p) || N(mean_q, cov_q) ) for batches [..., d], [..., d, d]."""
    d = mean_p.shape[-1]
    Lq = torch.linalg.cholesky(cov_q)
    diff = (mean_q - mean_p).unsqueeze(-1)
    sol = torch.cholesky_solve(torch.cat([cov_p, diff], -1), Lq)
    trace = torch.diagonal(sol[..., :d], dim1=-2, dim2=-1).sum(-1)
    maha = (diff * sol[..., d:]).sum((-2, -1))
    logdet_q = 2 * torch.log(torch.diagonal(Lq, dim1=-2, dim2=-1)).sum(-1)
    logdet_p = torch.linalg.slogdet(cov_p)[1]
    return 0.5 * (trace + maha - d + logdet_q - logdet_p)


def mixture_error(samples: torch.Tensor, gmm: GaussianMixture) -> MixtureError:
    """moment KL and mode TV of ``samples`` [n, d] against the mixture ``gmm`` (float64 internally)."""
    check_batch(samples, "samples")
    x = samples.reshape(samples.shape[0], -1).to(torch.float64)
    if x.shape[1] != gmm.d:
        raise ValueError(f"samples must have {gmm.d} features to compare with this mixture, got {x.shape[1]}.")
    finite = torch.isfinite(x).all(1)
    nonfinite = int((~finite).sum())
    x = x[finite]
    n, d = samples.shape[0], gmm.d
    w = gmm.weights.to(x.device)
    assign = gmm.responsibilities(x).argmax(1) if len(x) else torch.zeros(0, dtype=torch.long)
    counts = torch.bincount(assign, minlength=gmm.K).to(torch.float64)
    share = counts / n
    kl = 0.0
    for k in range(gmm.K):
        if counts[k] <= d + 1:
            kl += EMPTY_PENALTY * float(w[k])
            continue
        xk = x[assign == k]
        mean = xk.mean(0)
        cov = torch.cov(xk.T).reshape(d, d)
        kl += float(w[k]) * float(gaussian_kl(mean, cov, gmm.means[k].to(x.device), gmm.covs[k].to(x.device)))
    return MixtureError(moment_kl=kl, mode_tv=0.5 * float((w - share).abs().sum()), nonfinite=nonfinite)


def fisher_divergence(score_fn, gmm: GaussianMixture, sde: SDE, n: int = 2000, n_times: int = 10,
                      t_min: float = 1e-3, generator: torch.Generator | None = None) -> float:
    """Monte-Carlo E_t E_{x~p_t} s(t)^2 |score_fn(x, t) - grad log p_t(x)|^2 / D on a fixed grid of n_times
    times, log-spaced in [t_min, 1] so small noise levels are represented."""
    times = torch.logspace(torch.log10(torch.tensor(t_min)), 0.0, n_times, dtype=torch.float64)
    total = 0.0
    for t in times:
        tt = torch.full((n,), float(t), dtype=torch.float64)
        x = gmm.sample(n, t=tt, sde=sde, generator=generator)
        true = gmm.score(x, tt, sde)
        with torch.no_grad():
            est = score_fn(x.float(), tt.float()).to(torch.float64)
        total += float((sde.marginal_std(tt)[:, None] ** 2 * (est - true) ** 2).sum(1).mean()) / gmm.d
    return total / n_times


# ---------------------------------------------------------------- sample-vs-data distances (no oracle needed)
def _flat2(x: torch.Tensor, name: str) -> torch.Tensor:
    check_batch(x, name)
    return x.reshape(x.shape[0], -1).to(torch.float64)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256,
                       generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance between the point sets x [n, *dims] and y [m, *dims] (Rabin et al. 2011):
    sqrt of the mean over random unit directions v of W2^2 of the projections v.x and v.y, each W2 from the
    quantile functions at n' = min(n, m) levels."""
    a, b = _flat2(x, "x"), _flat2(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x and y must have the same number of features, got {a.shape[1]} and {b.shape[1]}.")
    v = torch.randn(a.shape[1], n_projections, generator=generator, dtype=torch.float64)
    v = v / v.norm(dim=0, keepdim=True)
    n = min(len(a), len(b))
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    pa = torch.quantile((a @ v), q, dim=0) if len(a) != n else (a @ v).sort(0).values
    pb = torch.quantile((b @ v), q, dim=0) if len(b) != n else (b @ v).sort(0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased squared maximum mean discrepancy (Gretton et al. 2012) with a sum of Gaussian kernels at 0.5, 1
    and 2 x ``bandwidth`` (default: the median pairwise distance of the pooled points), x [n, *dims], y [m, *dims].
    Quadratic in n + m: pass at most a few thousand points."""
    a, b = _flat2(x, "x"), _flat2(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x and y must have the same number of features, got {a.shape[1]} and {b.shape[1]}.")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("mmd needs at least 2 points in each set.")
    z = torch.cat([a, b])
    d2 = torch.cdist(z, z).pow(2)
    if bandwidth is None:
        bandwidth = float(d2[torch.triu_indices(len(z), len(z), 1).unbind()].median().sqrt())
    k = sum(torch.exp(-d2 / (2 * (f * bandwidth) ** 2)) for f in (0.5, 1.0, 2.0))
    n, m = len(a), len(b)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
                 - 2 * kxy.mean())


# ---------------------------------------------------------------- Fréchet distance between Gaussian fits
def _sqrtm_psd(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigen-decomposition; eigenvalues that
    round-off made slightly negative count as 0)."""
    w, v = torch.linalg.eigh(0.5 * (s + s.T))
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_gaussians(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Squared 2-Wasserstein (Fréchet) distance between N(mean1, cov1) and N(mean2, cov2), in float64:

        |mean1 - mean2|^2 + tr cov1 + tr cov2 - 2 tr sqrt(cov1^(1/2) cov2 cov1^(1/2))

    (Dowson & Landau 1982). The cross term is the trace of the square root of a symmetric PSD product, taken from
    its eigenvalues, so it stays real (no complex sqrtm as in the usual FID code)."""
    m1, m2 = mean1.to(torch.float64).reshape(-1), mean2.to(torch.float64).reshape(-1)
    c1, c2 = cov1.to(torch.float64), cov2.to(torch.float64)
    d = m1.shape[0]
    if m2.shape[0] != d or c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(f"means [d] and covariances [d, d] must agree, got {list(m1.shape)}, {list(c1.shape)}, "
                         f"{list(m2.shape)}, {list(c2.shape)}.")
    r1 = _sqrtm_psd(c1)
    cross = torch.linalg.eigvalsh(r1 @ (0.5 * (c2 + c2.T)) @ r1).clamp_min(0).sqrt().sum()
    fd = (m1 - m2).pow(2).sum() + torch.trace(c1) + torch.trace(c2) - 2 * cross
    return max(float(fd), 0.0)


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits (mean, unbiased covariance) of the point sets x [n, d] and y [m, d]
    (features, e.g. a classifier's pooled layer, as FID uses Inception's; Heusel et al. 2017). Biased upwards
    for finite n: compare it with the same distance between two data sets of the same size (its floor)."""
    a, b = _flat2(x, "x"), _flat2(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x and y must have the same number of features, got {a.shape[1]} and {b.shape[1]}.")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least 2 points in each set.")
    if not bool(torch.isfinite(a).all() & torch.isfinite(b).all()):
        raise ValueError("x or y holds NaN/inf; drop those points first.")
    cov = (lambda z: torch.cov(z.T).reshape(z.shape[1], z.shape[1]))
    return frechet_gaussians(a.mean(0), cov(a), b.mean(0), cov(b))
