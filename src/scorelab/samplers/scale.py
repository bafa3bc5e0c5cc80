"""Where a short grid starts: the data's scale read off the score (``sample(..., sigma_max="auto")``).

A grid of a few steps that starts at sigma_max draws x_T ~ N(0, sigma_max^2 I) and needs sigma_max well above the
spread of the data, yet every octave above it costs steps the data's structure needs. The default below 8
evaluations started at sigma_max = 10, chosen on data of about unit scale ("The default at 5 evaluations" in
docs/samplers.md); on data a few times wider that start is too low (x_T does not cover the data) and a peer that
starts at 80 wins. ``"auto"`` starts at max(FLOOR, PER_STD std), std the data's root-mean-square spread per
dimension (means and covariances together), read off the score at the top of the process:

at a level sigma far above the data, the denoiser is linear to first order, D(y) = E[x0 | y] ~ mu + C (C + sigma^2)^-1
(y - mu) for y = x0 + sigma eps, C the data's covariance (for a mixture, the spread of the means is part of C).
With y = sigma eps drawn without the data (x_T itself), Cov(D, y) = sigma^2 C / (C + sigma^2) per eigendirection,
so c = E[(D - E D) . (y - E y)] / d ~ v sigma^2 / (v + sigma^2) and v = c sigma^2 / (sigma^2 - c), v = std^2. One
score evaluation on at most ``stop.PILOT`` draws (no more than the caller's batch) from a copy of the caller's
generator (its own stream untouched), one host read. Data narrower than FLOOR / PER_STD keep sigma_max = FLOOR.
The numbers behind the constants: docs/samplers.md, "Where a short grid starts".
"""

from __future__ import annotations

import torch

from ._common import sigma_of

PER_STD = 3.0  # sigma_max over the data's std (x_T then covers the data to 3 std)
FLOOR = 10.0  # the start for data of about unit scale and narrower (the fixed start before "auto")


def data_std(score_fn, sde, dims, generator=None, dtype: torch.dtype = torch.float32, device=None,
             n: int | None = None) -> float:
    """The data's root-mean-square std per dimension, from the denoiser's linear response at t = T (see the module's
    docstring)."""
    from ..tweedie import tweedie_mean
    from .stop import PILOT, stream_copy

    n = PILOT if n is None else n
    generator = stream_copy(generator)  # the caller's stream is left as it was
    T = float(sde.T)
    sigma = float(sigma_of(sde, T))
    m = float(sde.marginal_scale(torch.tensor(T, dtype=torch.float64)))
    y = sigma * torch.randn((n, *dims), generator=generator, dtype=dtype, device=device)
    with torch.no_grad():
        d = tweedie_mean(score_fn, sde, m * y, T).double().flatten(1)
    y = y.double().flatten(1)
    c = float(((d - d.mean(0)) * (y - y.mean(0))).sum(1).mean()) / y.shape[1]
    c = min(max(c, 0.0), 0.99 * sigma**2)
    return (c * sigma**2 / (sigma**2 - c)) ** 0.5


def choose_sigma_max(score_fn, sde, dims, generator=None, dtype: torch.dtype = torch.float32, device=None,
                     n: int | None = None) -> float:
    """max(FLOOR, PER_STD data_std), at most the process's top level sigma(T); ``n`` draws (default ``stop.PILOT``;
    ``sample()`` passes min(batch, PILOT), as for its pilots)."""
    top = float(sigma_of(sde, sde.T))
    return min(max(FLOOR, PER_STD * data_std(score_fn, sde, dims, generator, dtype, device, n)), top)
