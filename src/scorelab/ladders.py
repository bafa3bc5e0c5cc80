"""Discrete noise ladders: the SMLD/NCSN sigma sequence and the DDPM beta schedules, tied to the SDEs.

SMLD (Song & Ermon 2019) perturbs data with a geometric sequence sigma_1 > ... > sigma_L; its continuum limit
is the VE SDE with sigma(t) = sigma_min (sigma_max / sigma_min)^t, so the ladder is sigma(t_i) at
t_i = (L - i) / (L - 1). DDPM (Ho et al. 2020) uses betas beta_1..beta_N; its continuum limit is the VP SDE
with beta(t) ~ N beta_{tN} (``vpsde_for_betas``), and ``VPSDE.discrete_betas`` gives the chain that
reproduces the SDE's marginals exactly.

The rules of "Improved Techniques for Training Score-Based Generative Models" (Song & Ermon 2020):
  Technique 1  sigma_1 = the largest Euclidean distance between two training points;
  Technique 2  the ratio gamma = sigma_{i-1} / sigma_i solves
                   Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) = 1/2,
               so a sample of one level lands in the high-density shell of the next with probability ~1/2;
  Technique 4  the Langevin step size eps (alpha_i = eps sigma_i^2 / sigma_L^2, T steps per level) makes
                   (1 - eps/sL^2)^(2T) (gamma^2 - 2 eps / (sL^2 - sL^2 (1 - eps/sL^2)^2))
                       + 2 eps / (sL^2 - sL^2 (1 - eps/sL^2)^2)
               (the variance ratio s_T^2 / sigma_i^2 after T steps, their Proposition 3) as close to 1 as
               possible.
All ladders are float64 tensors.
"""

from __future__ import annotations

import math

import torch

from .sde import VESDE, VPSDE

# ---------------------------------------------------------------------------------------------------------
# SMLD / NCSN ladders
# ---------------------------------------------------------------------------------------------------------


def _check_int(L, name: str, least: int) -> int:
    if isinstance(L, bool) or not isinstance(L, int) or L < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {L!r}.")
    return L


def _check_sigmas(sigma_max, sigma_min) -> tuple[float, float]:
    for name, v in (("sigma_max", sigma_max), ("sigma_min", sigma_min)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {v!r}.")
    if not sigma_min < sigma_max:
        raise ValueError(f"need sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}.")
    return float(sigma_max), float(sigma_min)


def geometric_sigmas(sigma_max: float, sigma_min: float, L: int) -> torch.Tensor:
    """sigma_i = sigma_max (sigma_min / sigma_max)^((i - 1) / (L - 1)), i = 1..L: [L] float64, decreasing.

    The ratio sigma_{i-1} / sigma_i = (sigma_max / sigma_min)^(1 / (L - 1)) is the same for every i.
    """
    sigma_max, sigma_min = _check_sigmas(sigma_max, sigma_min)
    L = _check_int(L, "L (number of noise levels)", 2)
    frac = torch.arange(L, dtype=torch.float64) / (L - 1)
    sig = torch.exp(math.log(sigma_max) + frac * (math.log(sigma_min) - math.log(sigma_max)))
    sig[0], sig[-1] = sigma_max, sigma_min  # exact end points, no rounding from exp/log
    return sig


def ladder_ratio(sigmas: torch.Tensor) -> float:
    """gamma = sigma_{i-1} / sigma_i of a geometric ladder (checked to be constant)."""
    sig = _check_ladder(sigmas)
    r = sig[:-1] / sig[1:]
    if not torch.allclose(r, r.mean(), rtol=1e-6, atol=0.0):
        raise ValueError("sigmas is not geometric (sigma_{i-1}/sigma_i varies); build it with geometric_sigmas.")
    return float(r.mean())


def _check_ladder(sigmas) -> torch.Tensor:
    sig = torch.as_tensor(sigmas, dtype=torch.float64)
    if sig.ndim != 1 or sig.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor [L] with L >= 2, got shape {tuple(sig.shape)}.")
    if not bool(torch.isfinite(sig).all()) or bool((sig <= 0).any()):
        raise ValueError("sigmas must be positive and finite.")
    if not bool((sig[:-1] > sig[1:]).all()):
        raise ValueError("sigmas must be strictly decreasing, sigma_1 > ... > sigma_L (largest noise first).")
    return sig


def sigma_max_from_data(x: torch.Tensor, max_points: int | None = None, generator: torch.Generator | None = None,
                        chunk: int = 1024) -> float:
    """Technique 1: sigma_1 = max_{i, j} ||x_i - x_j||_2 over the data x [N, *dims].

    Computed with torch.cdist in row blocks of ``chunk`` points (a 60000 x 784 set never builds the N x N
    matrix). ``max_points`` evaluates it on a random subset drawn with ``generator`` (a lower bound).
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor [N, *dims] with N >= 2 points, got {shape}.")
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("x contains NaN or inf; clean the data before choosing sigma_max.")
    if max_points is not None:
        max_points = _check_int(max_points, "max_points", 2)
        if max_points < flat.shape[0]:
            idx = torch.randperm(flat.shape[0], generator=generator)[:max_points]
            flat = flat[idx]
    chunk = _check_int(chunk, "chunk", 1)
    # Centring leaves distances unchanged and keeps cdist's |a|^2 + |b|^2 - 2ab form well conditioned.
    flat = flat - flat.mean(0)
    best = 0.0
    for i in range(0, flat.shape[0], chunk):
        block = flat[i:i + chunk]
        # only pairs (i, j) with j >= start of the block: the matrix is symmetric
        best = max(best, float(torch.cdist(block, flat[i:]).max()))
    return best


def _shell_overlap(gamma: float, D: int) -> float:
    """Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma)."""
    c = math.sqrt(2 * D) * (gamma - 1)
    phi = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))  # noqa: E731  (standard normal CDF)
    return phi(c + 3 * gamma) - phi(c - 3 * gamma)


def noise_ratio(dim: int, target: float = 0.5, tol: float = 1e-12) -> float:
    """Technique 2's gamma > 1 solving _shell_overlap(gamma, D) = target (default 1/2), by bisection.

    The rule comes from the Gaussian-annulus picture of high dimensions: it has a solution only when
    sqrt(2D) > 3 (D >= 5); for low-dimensional data choose L by hand.
    """
    D = _check_int(dim, "dim (data dimension D)", 1)
    if not 0 < target < _shell_overlap(1.0, D):
        raise ValueError(f"target must lie in (0, {_shell_overlap(1.0, D):.4f}), got {target!r}.")
    if math.sqrt(2 * D) <= 3:
        raise ValueError(f"Technique 2 (Song & Ermon 2020) has no solution for D = {D} < 5 dimensions (it assumes "
                         "high-dimensional data); pick the number of noise levels L yourself.")
    lo, hi = 1.0, 1.0 + 1e-3
    while _shell_overlap(hi, D) > target:  # bracket the first crossing from above
        lo, hi = hi, 1.0 + 2 * (hi - 1.0)
    while hi - lo > tol * hi:
        mid = 0.5 * (lo + hi)
        if _shell_overlap(mid, D) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def num_noise_levels(sigma_max: float, sigma_min: float, dim: int) -> int:
    """Technique 2: L = ceil(log(sigma_max / sigma_min) / log(gamma)) + 1 with gamma = noise_ratio(dim)."""
    sigma_max, sigma_min = _check_sigmas(sigma_max, sigma_min)
    gamma = noise_ratio(dim)
    return math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma)) + 1


def ncsn_ladder(x_data: torch.Tensor, sigma_min: float = 0.01, max_points: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The ladder of Song & Ermon 2020 for data x [N, *dims]: sigma_1 by Technique 1, L by Technique 2,
    geometric in between. sigma_min = 0.01 is the paper's default. Returns [L] float64."""
    sigma_max = sigma_max_from_data(x_data, max_points=max_points, generator=generator)
    dim = x_data[0].numel()
    return geometric_sigmas(sigma_max, sigma_min, num_noise_levels(sigma_max, sigma_min, dim))


def _variance_ratio(r: torch.Tensor, gamma: float, T: int) -> torch.Tensor:
    """The Technique 4 expression in terms of r = eps / sigma_L^2; it depends on sigma_L only through r:
    2 eps / (sL^2 - sL^2 (1 - r)^2) = 2 / (2 - r)."""
    c = 2 / (2 - r)
    return (1 - r) ** (2 * T) * (gamma**2 - c) + c


def langevin_step_size(sigmas: torch.Tensor, T: int) -> float:
    """Technique 4: the eps whose variance ratio s_T^2 / sigma_i^2 (module docstring) is closest to 1.

    sigmas is a geometric ladder [L] (largest first), T the Langevin steps per level; the step at level i
    is then alpha_i = eps sigma_i^2 / sigma_L^2. Solved on a fine log grid of r = eps / sigma_L^2 in (0, 1),
    refined by bisection at a crossing of 1, or by golden section at the minimum of |ratio - 1| when the ratio
    never reaches 1 (the usual case: for sigma_L = 0.01, L = 232, T = 5 the minimum is 1.055 at eps = 6.2e-6,
    the value Song & Ermon 2020 use for CIFAR-10).
    """
    sig = _check_ladder(sigmas)
    gamma = ladder_ratio(sig)
    T = _check_int(T, "T (Langevin steps per noise level)", 1)
    sL2 = float(sig[-1]) ** 2
    r = torch.logspace(-12, math.log10(1 - 1e-9), 20001, dtype=torch.float64)
    dev = _variance_ratio(r, gamma, T) - 1
    k = int(dev.abs().argmin())
    # the ratio starts at gamma^2 > 1 for r -> 0; a sign change next to the grid minimum is an exact root
    for a, b in ((k - 1, k), (k, k + 1)):
        if 0 <= a and b < r.numel() and float(dev[a]) * float(dev[b]) <= 0:
            lo, hi = float(r[a]), float(r[b])
            f_lo = float(dev[a])
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                f_mid = float(_variance_ratio(torch.tensor(mid, dtype=torch.float64), gamma, T)) - 1
                if (f_mid > 0) == (f_lo > 0):
                    lo, f_lo = mid, f_mid
                else:
                    hi = mid
            return 0.5 * (lo + hi) * sL2
    # no crossing (for ladders with gamma^2 - 1 large next to T, e.g. the paper's CIFAR-10 setting, the ratio
    # stays above 1): refine the minimum of |ratio - 1| by golden-section search between the grid neighbours
    a, b = math.log(float(r[max(k - 1, 0)])), math.log(float(r[min(k + 1, r.numel() - 1)]))

    def obj(u: float) -> float:
        return abs(float(_variance_ratio(torch.tensor(math.exp(u), dtype=torch.float64), gamma, T)) - 1)

    inv_phi = (math.sqrt(5) - 1) / 2
    for _ in range(100):
        c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
        if obj(c) < obj(d):
            b = d
        else:
            a = c
    return math.exp(0.5 * (a + b)) * sL2


# ---------------------------------------------------------------------------------------------------------
# DDPM beta schedules
# ---------------------------------------------------------------------------------------------------------


def linear_betas(N: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """beta_i evenly spaced from beta_start to beta_end, i = 1..N: [N] float64 (Ho et al. 2020 defaults)."""
    N = _check_int(N, "N (number of diffusion steps)", 1)
    if not (0 < beta_start <= beta_end < 1):
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}.")
    if N == 1:
        return torch.tensor([beta_start], dtype=torch.float64)
    return torch.linspace(beta_start, beta_end, N, dtype=torch.float64)


def clipped_cosine_betas(N: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """beta_i = min(1 - abar(i/N) / abar((i-1)/N), max_beta), abar(t) = f(t)/f(0),
    f(t) = cos(((t + s) / (1 + s)) pi / 2)^2: [N] float64 (Nichol & Dhariwal 2021; s = 0.008, clip 0.999).
    A different schedule from VPSDE(schedule="cosine") (``sde.TruncatedCosineBeta``), which truncates time at
    0.9946 instead of clipping beta, hence the distinct names."""
    N = _check_int(N, "N (number of diffusion steps)", 1)
    if not (s >= 0 and math.isfinite(s)):
        raise ValueError(f"s must be a finite offset >= 0, got {s!r}.")
    if not 0 < max_beta <= 1:
        raise ValueError(f"max_beta must lie in (0, 1], got {max_beta!r}.")
    t = torch.arange(N + 1, dtype=torch.float64) / N
    log_f = 2 * torch.log(torch.cos((t + s) / (1 + s) * (math.pi / 2)).clamp_min(0.0))
    betas = -torch.expm1(torch.diff(log_f))  # 1 - f(t_i) / f(t_{i-1}); f(1) = 0 gives beta_N = 1
    return betas.clamp(max=max_beta)


# ---------------------------------------------------------------------------------------------------------
# ties to the continuous processes
# ---------------------------------------------------------------------------------------------------------


def vesde_for_ladder(sigmas: torch.Tensor) -> VESDE:
    """The VE SDE whose sigma(t) passes through a geometric ladder: sigma(t_i) = sigma_i at
    t_i = (L - i) / (L - 1) (sigma_min = sigma_L, sigma_max = sigma_1, N = L)."""
    sig = _check_ladder(sigmas)
    ladder_ratio(sig)  # refuses a non-geometric ladder, which no VE SDE reproduces
    return VESDE(sigma_min=float(sig[-1]), sigma_max=float(sig[0]), N=int(sig.numel()))


def ladder_times(L: int) -> torch.Tensor:
    """t_i = (L - i) / (L - 1), i = 1..L: [L] float64 from 1 down to 0, the times of the ladder's levels."""
    L = _check_int(L, "L (number of noise levels)", 2)
    return torch.arange(L - 1, -1, -1, dtype=torch.float64) / (L - 1)


def ladder_of(sde: VESDE, L: int) -> torch.Tensor:
    """sde.sigma(t_i) at t_i = ladder_times(L): the geometric ladder [L] float64 of a VE SDE, equal to
    geometric_sigmas(sde.sigma_max, sde.sigma_min, L)."""
    if not hasattr(sde, "sigma"):
        raise ValueError(f"ladder_of needs a VE SDE with a sigma(t) schedule, got {sde!r}.")
    return sde.sigma(ladder_times(L))


def vpsde_for_betas(betas: torch.Tensor) -> VPSDE:
    """The linear VP SDE of a linear DDPM schedule: beta(t) = N beta_{tN}, so beta_min = N beta_1 and
    beta_max = N beta_N (0.1 and 20 for Ho et al.'s 1e-4..0.02 with N = 1000)."""
    b = torch.as_tensor(betas, dtype=torch.float64)
    if b.ndim != 1 or b.numel() < 2:
        raise ValueError(f"betas must be a 1-D tensor [N] with N >= 2, got shape {tuple(b.shape)}.")
    if not bool(((b > 0) & (b < 1)).all()):
        raise ValueError("betas must lie in (0, 1).")
    d = torch.diff(b)
    if not torch.allclose(d, d.mean(), rtol=1e-6, atol=1e-12 * float(b.max())):
        raise ValueError("betas is not a linear schedule; vpsde_for_betas maps linear_betas(...) to "
                         "VPSDE(beta_min, beta_max). For a cosine schedule use VPSDE(schedule='cosine').")
    N = b.numel()
    return VPSDE(beta_min=N * float(b[0]), beta_max=N * float(b[-1]), N=N)


__all__ = [
    "geometric_sigmas", "ladder_ratio", "sigma_max_from_data", "noise_ratio", "num_noise_levels", "ncsn_ladder",
    "langevin_step_size", "linear_betas", "clipped_cosine_betas", "vesde_for_ladder", "ladder_times", "ladder_of",
    "vpsde_for_betas",
]
