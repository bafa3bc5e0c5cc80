"""Time-step grids for samplers: plain float64 tensors [steps + 1], decreasing from t_max to t_min: equal steps in t
(``uniform_t``) or in log-SNR (``log_snr_uniform``), EDM's rho-spaced noise levels (``karras``), or equal steps in
the time of DDPM's VP process at the same noise levels, on any process (``ddpm``)."""

from __future__ import annotations

import torch

from ..ladders import geometric_sigmas
from ._common import sigma_of


def _ends(sde, t_min: float, t_max: float | None, zero: bool = False):
    t_max = sde.T if t_max is None else t_max
    if not ((0.0 <= t_min if zero else 0.0 < t_min) and t_min < t_max <= sde.T):
        raise ValueError(f"need {'0 <=' if zero else '0 <'} t_min < t_max <= T = {sde.T}, got t_min={t_min}, "
                         f"t_max={t_max} (a grid in noise level needs a positive end: pass eps > 0).")
    return torch.tensor([t_max, t_min], dtype=torch.float64)


def _pin(t: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    # the inverse maps are exact only up to rounding: pin the ends and keep the grid inside [t_min, t_max]
    t = t.clamp(ends[1], ends[0])
    t[0], t[-1] = ends[0], ends[1]
    return t


def uniform_t(sde, steps: int, t_min: float, t_max: float | None = None) -> torch.Tensor:
    """t_i = t_max + i/N (t_min - t_max), i = 0..N."""
    ends = _ends(sde, t_min, t_max, zero=True)
    return torch.linspace(float(ends[0]), float(ends[1]), steps + 1, dtype=torch.float64)


def log_snr_uniform(sde, steps: int, t_min: float, t_max: float | None = None) -> torch.Tensor:
    """Equal steps in lambda(t) = log(m^2 / s^2), the variable of DPM-Solver (Lu et al. 2022), between t_max and t_min:
    the geometric noise ladder sigma = s / m of SMLD (``scorelab.ladders.geometric_sigmas``) mapped to t."""
    ends = _ends(sde, t_min, t_max)
    sig = sigma_of(sde, ends).tolist()
    return _pin(sde.t_from_std_ratio(geometric_sigmas(sig[0], sig[1], steps + 1)), ends)


def karras(sde, steps: int, t_min: float, t_max: float | None = None, rho: float = 7.0) -> torch.Tensor:
    """EDM's sigma_i = (sigma_max^(1/rho) + i/N (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, sigma = s/m, between t_max
    and t_min (rho = 7, Karras et al. 2022, eq. 5), mapped back to t with ``t_from_std_ratio``."""
    ends = _ends(sde, t_min, t_max)
    sig = sigma_of(sde, ends) ** (1.0 / rho)
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    return _pin(sde.t_from_std_ratio((sig[0] + grid * (sig[1] - sig[0])) ** rho), ends)


def ddpm(sde, steps: int, t_min: float, t_max: float | None = None) -> torch.Tensor:
    """Equal steps in the time u of DDPM's process, VPSDE(beta 0.1..20) (Ho et al. 2020; diffusers' linear betas), at
    the same noise level: sigma_i = sigma_ddpm(u_i), u_i equal steps between the u of the two ends, mapped back to
    this process's t. On that VPSDE it is ``uniform_t``; on any other process (VE, sub-VP, other betas) the noise
    levels the time-uniform VP grid would visit between the same ends."""
    from ..sde import VPSDE

    ends = _ends(sde, t_min, t_max)
    ref = VPSDE(0.1, 20.0)
    u = ref.t_from_std_ratio(sigma_of(sde, ends))
    grid = torch.linspace(float(u[0]), float(u[1]), steps + 1, dtype=torch.float64)
    return _pin(sde.t_from_std_ratio(sigma_of(ref, grid)), ends)


GRIDS = {"uniform": uniform_t, "log_snr": log_snr_uniform, "karras": karras, "ddpm": ddpm}


def make_grid(name: str, sde, steps: int, t_min: float, **kw) -> torch.Tensor:
    """The grid called ``name`` ("uniform", "log_snr" or "karras"), ``steps`` + 1 times from t_max to t_min."""
    if not isinstance(name, str) or name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; choose one of {sorted(GRIDS)} or 'optimized', or pass a decreasing "
                         "1-D tensor of times.")
    if steps == 0:
        return _ends(sde, t_min, kw.get("t_max"), zero=name == "uniform")[:1]
    return GRIDS[name](sde, steps, t_min, **kw)


def end_time(sde, sigma_min: float) -> float:
    """The time at which the noise level s(t)/m(t) equals sigma_min (EDM's sigma_min = 0.002)."""
    return float(sde.t_from_std_ratio(torch.tensor(float(sigma_min), dtype=torch.float64)))
