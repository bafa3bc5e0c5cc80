"""Where a short grid starts and what x_T is drawn from there, read off the score (``sample(..., sigma_max="auto")``,
the default below 8 evaluations).

A grid of a few steps that starts at sigma_max spends every octave above the data's structure on steps the structure
needs; one that starts too low hands the flow a start far from the noised data. The data's Gaussian fit N(mu, std^2 I)
(``data_fit``) is read at the top of the process: there the denoiser is linear to first order, D(y) = E[x0 | y] ~
mu + C (C + sigma^2)^-1 (y - mu) for y = x0 + sigma eps, C the data's covariance (for a mixture, the spread of the
means is part of C). With y = sigma eps drawn without the data (x_T itself), E D = mu + O(sigma^-2) and Cov(D, y) =
sigma^2 C / (C + sigma^2) per eigendirection, so c = E[(D - E D) . (y - E y)] / d ~ v sigma^2 / (v + sigma^2) and
v = c sigma^2 / (sigma^2 - c), v = std^2, the data's root-mean-square spread per dimension.

x_T is drawn from the fit noised to the start, N(mu, (std^2 + sigma_max^2) I) in data units (``DataFit.draw``),
rather than from N(0, (1 + sigma_max^2) I), the law of centred data of unit variance, which leaves the flow a
first-order error in the mean and the variance that a few steps do not remove. The start (``choose_start``) is
then as low as that fit allows: max(FLOOR, PER_STD std, the lowest level at which the noised data are within TAU
nats of the noised fit, ``gaussian_level``), at most sigma(T). Data whose modes still stand apart at a few times
their std in many dimensions (the divergence adds up over the dimensions) start higher; narrow data low.

Cost: 2 + at most log(sigma(T) / FLOOR) / log(RATIO) (about 24 on VE to 80) score evaluations on at most
``stop.pilot_size`` draws from the pilots' own stream (``stop.pilot_generator``: the caller's untouched, the choice the
same for every seed), one host read each, all before the sampler's loop. The numbers behind the constants:
docs/samplers.md, "Where a short grid starts" and "The start drawn from the data's fit".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._common import sigma_of

# chosen on 97 mixtures at 5 evaluations against the former max(10, 3 std), errors interpolated between fixed
# starts (docs/samplers.md, "The start drawn from the data's fit"): geometric mean 0.69, the worst 2.35x (a ring of
# needles); measured against the former default, start and draw together: 0.52 at 5, 0.53 at 7
PER_STD = 2.5  # sigma_max at least this many times the data's std
FLOOR = 3.0  # the lowest start
TAU = 0.03  # nats: the start is no lower than where the noised data are this far from their Gaussian fit
RATIO = 1.15  # the ladder the divergence is integrated over: sigma(T) / RATIO^k down to the start


@dataclass(frozen=True)
class DataFit:
    """The data's Gaussian fit N(mean, std^2 I) read off the score (``data_fit``): mean [*dims] and the rms std per
    dimension, in data units."""

    mean: torch.Tensor
    std: float


    def draw(self, sde, t0: float, shape, generator=None, dtype: torch.dtype = torch.float32,
             device=None) -> torch.Tensor:
        """x at time t0 drawn from the fit noised to that level: m (mean + sqrt(std^2 + sigma^2) z), sigma = s / m,
        i.e. m mean + sqrt(m^2 std^2 + s^2) z in the process's units; z ~ N(0, I) [shape] from ``generator``."""
        t = torch.tensor(float(t0), dtype=torch.float64)
        m, s = float(sde.marginal_scale(t)), float(sde.marginal_std(t))
        z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        return (m * self.mean).to(dtype=dtype, device=z.device) + (m * m * self.std**2 + s * s) ** 0.5 * z


def data_fit(score_fn, sde, dims, generator=None, dtype: torch.dtype = torch.float32, device=None,
             n: int | None = None) -> DataFit:
    """The data's mean and root-mean-square std per dimension, from the denoiser's response at t = T (see the
    module's docstring)."""
    from ..tweedie import tweedie_mean
    from .stop import PILOT, pilot_generator

    n = PILOT if n is None else n
    generator = pilot_generator(generator, device)  # the pilots' own stream: the caller's is left as it was
    T = float(sde.T)
    sigma = float(sigma_of(sde, T))
    m = float(sde.marginal_scale(torch.tensor(T, dtype=torch.float64)))
    y = sigma * torch.randn((n, *dims), generator=generator, dtype=dtype, device=device)
    with torch.no_grad():
        d = tweedie_mean(score_fn, sde, m * y, T).double()
    mean = d.mean(0)
    d, y = d.flatten(1), y.double().flatten(1)
    c = float(((d - d.mean(0)) * (y - y.mean(0))).sum(1).mean()) / y.shape[1]
    c = min(max(c, 0.0), 0.99 * sigma**2)
    return DataFit(mean=mean, std=(c * sigma**2 / (sigma**2 - c)) ** 0.5)


def gaussian_level(score_fn, sde, fit: DataFit, dims, tau: float = TAU, floor: float = FLOOR, generator=None,
                   dtype: torch.dtype = torch.float32, device=None, n: int | None = None) -> float:
    """The lowest level sigma >= floor, down the ladder sigma(T) / RATIO^k, at which the data noised to sigma, p_sigma,
    are within ``tau`` nats of the fit noised to sigma, q_sigma = N(mean, (std^2 + sigma^2) I), by de Bruijn's
    identity for the heat flow (both laws are the data's convolved with N(0, sigma^2 I)):

        KL(p_sigma || q_sigma) = 1/2 int_{sigma^2}^{inf} J(s) d s^2,   J(s) = E |score_p(y, s) - score_q(y, s)|^2

    (data units; J from sigma(T) down by the trapezoid rule, interpolated in log KL between levels). J is taken under
    q_s rather than p_s (draws of the fit, one draw of z shared by all levels): one score evaluation per level on
    ``n`` draws (default ``stop.PILOT``) from the pilots' own stream, one host read per level."""
    from .grids import end_time
    from .stop import PILOT, pilot_generator

    n = PILOT if n is None else n
    generator = pilot_generator(generator, device)
    top = float(sigma_of(sde, sde.T))
    z = torch.randn((n, *dims), generator=generator, dtype=dtype, device=device)
    mean, v = fit.mean.to(dtype=dtype, device=z.device), fit.std**2
    levels, sigma = [], top
    while sigma > floor:
        levels.append(sigma)
        sigma /= RATIO
    levels.append(floor)
    kl, J_prev = 0.0, None
    with torch.no_grad():
        for k, sigma in enumerate(levels):
            t = sde.T if k == 0 else end_time(sde, sigma)
            m = float(sde.marginal_scale(torch.tensor(t, dtype=torch.float64)))
            w = (v + sigma**2) ** 0.5
            score = score_fn(m * (mean + w * z), torch.full((n,), t, dtype=dtype, device=z.device))
            J = float((m * score + z / w).double().pow(2).flatten(1).sum(1).mean())
            if J_prev is not None:
                step = 0.25 * (J + J_prev) * (levels[k - 1] ** 2 - sigma**2)
                if kl + step > tau:  # crossed between the two levels: interpolate in log KL
                    if kl <= 0:
                        return levels[k - 1]
                    f = (math.log(tau) - math.log(kl)) / (math.log(kl + step) - math.log(kl))
                    return max(floor, math.exp(math.log(levels[k - 1]) + f * math.log(sigma / levels[k - 1])))
                kl += step
            J_prev = J
    return floor


def mean_at(score_fn, sde, fit: DataFit, sigma: float, dims, generator=None, dtype: torch.dtype = torch.float32,
            device=None, n: int | None = None) -> torch.Tensor:
    """The data's mean read again at level sigma: E[D(y)] over y drawn from the fit noised to sigma, since
    E[E[x0 | y]] = mu for y from the noised data (and the fit is close to them there); a trained network is
    trusted at the levels it saw in training more than at the top. ``n`` draws (default ``stop.PILOT``) from the
    pilots' own stream; one score evaluation."""
    from ..tweedie import tweedie_mean
    from .grids import end_time
    from .stop import PILOT, pilot_generator

    n = PILOT if n is None else n
    t = sde.T if sigma >= float(sigma_of(sde, sde.T)) else end_time(sde, sigma)
    y = fit.draw(sde, t, (n, *dims), pilot_generator(generator, device), dtype, device)
    with torch.no_grad():
        return tweedie_mean(score_fn, sde, y, t).double().mean(0)


def choose_start(score_fn, sde, dims, generator=None, dtype: torch.dtype = torch.float32, device=None,
                 n: int | None = None) -> tuple[float, DataFit]:
    """sigma_max="auto": the start max(FLOOR, PER_STD std, gaussian_level), at most sigma(T), and the fit x_T is
    drawn from there (its mean read again at the start, ``mean_at``)."""
    fit = data_fit(score_fn, sde, dims, generator, dtype, device, n)
    top = float(sigma_of(sde, sde.T))
    level = max(FLOOR, PER_STD * fit.std)
    if level < top:
        level = max(level, gaussian_level(score_fn, sde, fit, dims, TAU, level, generator, dtype, device, n))
    level = min(level, top)
    return level, DataFit(mean_at(score_fn, sde, fit, level, dims, generator, dtype, device, n), fit.std)
