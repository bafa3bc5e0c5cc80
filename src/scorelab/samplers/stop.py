"""Where to stop: the last noise level of a grid chosen for the score (``sample(..., sigma_min="auto")``, or
``sigma_min="auto:LEVEL"`` to start the choice at LEVEL rather than at the method's own default end).

A sampler that ends at sigma leaves each sample with the noise sigma on top of the data (or, after a final
denoising step, shrunk towards the posterior mean): harmless where the data are wide at that scale, ruinous on
modes narrower than sigma. What "narrow" means is read off the score itself:

    r(sigma) = E |sigma score_sigma(x0 + sigma eps)|^2 / d        (score in the units of x0, VE)

is the share of the perturbed variance that is noise: sigma^2 / (s^2 + sigma^2) for data of local scale s, so
r(sigma) <= R_TARGET = 0.05 means the noise is at most a twentieth of the variance (sigma <= s / 4.4). For an
exact score r falls as sigma falls; a learned score is least accurate near the smallest noise it was trained on,
and there its r stops falling and turns up (docs/samplers.md, "Where to stop"): below that level it is not trusted.

``choose_sigma_min`` runs the method on a pilot batch (``pilot_size``: the caller's batch, at least ``PILOT_NUMBERS``
numbers, at most ``PILOT`` draws; from the pilots' own stream, ``pilot_generator``, so that the choice does not
depend on the seed and the caller's stream is untouched), denoises it once (x0_hat = E[x0 | x], Tweedie), and measures
r on x0_hat + sigma eps down the ladder ``LADDER`` from the method's own default end, or from LEVEL for "auto:LEVEL"
(one score evaluation per level, one draw of eps shared by all levels). It returns the first level with
r <= R_TARGET, stopping early where r no longer falls, never below a VE process's sigma_min. Where the pilot ends:

- "auto": at the bottom of the ladder, so that x0_hat keeps the data's narrow widths and r reads them as they are;
- "auto:LEVEL": at LEVEL. Where the data are narrower than LEVEL the denoising shrinks x0_hat and r reads low:
  sigma^2 (k v + sigma^2) / (v + sigma^2)^2 instead of sigma^2 / (v + sigma^2) for a Gaussian of variance v,
  k = v / (v + LEVEL^2); the choice is then a level or two higher than the exact r would give. The budget defaults
  below 20 evaluations use this reading: with few steps a lower end stretches the grid, and the higher choice wins
  there (docs/samplers.md, "The pilot's end"). Where r at LEVEL is already at or below the climb's target
  (R_TARGET; 0.015 below 8 evaluations, ``CLIMB``), the data are wide at that scale and the choice climbs the
  levels ``UP`` above LEVEL while r stays there: with few steps every octave of the grid below the data's width
  costs steps their structure needs, and data of components of std 1 sample best ending at 0.1-0.2
  (docs/samplers.md, "Wide data end higher"). "auto" does not climb.

Cost: the method's budget + 1 + len(LADDER) (+ len(UP) for "auto:LEVEL") evaluations on the pilot batch, and one
host read per level, all before the sampler's loop; none where there is one level to choose (a VE process trained
down to the start, "auto"). With the window read off the score (``stochastic_below="auto"``,
``samplers/window.py``) the window's pilot ends where this one does (``pilot_end``) and ``sample()`` reads the stop
level on it: one pilot run for both. The noise shares read on a pilot are kept in the same memo: from 4 to 7
evaluations ``sample()`` reads the default's pilot a second time with the climb of 8 evaluations (``climb=``), to
tell wide data (``WIDE_END``), at the cost of the levels the first reading did not reach.
"""

from __future__ import annotations

import math

import torch

from ._common import sigma_of
from .grids import end_time

LADDER = (0.03, 0.02, 0.01, 0.005, 0.002)  # candidate last levels, in data units (EDM's sigma_min is 0.002)
UP = (0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5)  # "auto:LEVEL" climbs these above LEVEL ("Wide data end higher")
R_TARGET = 0.05
# the noise share the climb above LEVEL may reach, by budget (from nfe, target): at 5 evaluations a climb to r = 0.05
# cost 1.2-1.6x on three mixtures of std 0.15-0.2 out of 85 (ring8: 0.01 -> 0.03) where 0.015 cost at most 1.11x
CLIMB = ((8, R_TARGET), (1, 0.015))
# grid="auto" (the default from 8 to 12 evaluations): DDPM's time-uniform noise levels (grids.ddpm) where the stop
# level chosen is at least this, the method's own grid below: at 10 evaluations 0.28-0.90x on the 7 of 133 mixtures
# that end at 0.2 or above, 0.92-5.4x (gm 1.33) on the 14 of the 125 ending at 0.1 (docs/samplers.md, "Wide data:
# DDPM's grid")
WIDE_END = 0.2
PILOT = 256
# a pilot reads at least this many numbers (draws x numbers per draw) whatever the batch: 256 draws of 2-D data, 64 of
# 8-D, the batch itself for images (docs/samplers.md, "One choice per score")
PILOT_NUMBERS = 2 * PILOT
PILOT_SEED = 0  # the pilots' own stream (``pilot_generator``)


def noise_share(score_fn, sde, x0: torch.Tensor, sigma: float, generator=None, eps=None) -> float:
    """r(sigma) = mean over the batch of |sigma score(m (x0 + sigma eps), t)|^2 m^2 / d, t the time of noise level
    sigma (s(t) / m(t) = sigma) and m its marginal scale: the noise's share of the variance at that level. ``eps``
    (default: a draw from ``generator``) lets several levels share one draw, so that their r differ by the level
    and not by the draw."""
    t = end_time(sde, sigma)
    m = float(sde.marginal_scale(torch.tensor(t, dtype=torch.float64)))
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    s = score_fn(m * (x0 + sigma * eps), torch.full((x0.shape[0],), t, dtype=x0.dtype, device=x0.device))
    return float((sigma * m * s).pow(2).flatten(1).sum(1).mean()) / x0[0].numel()


def reaches_bottom(sde) -> bool:
    """Whether the process reaches the ladder's bottom (a VE process trained down to 0.01 does not)."""
    return float(getattr(sde, "sigma_min", 0.0)) <= LADDER[-1]


def share_keeps_falling(score_fn, sde, x0: torch.Tensor, eps: torch.Tensor) -> bool:
    """Whether the noise share r falls at every level of ``LADDER``, from its top to its bottom, on ``x0`` (a pilot
    denoised at the bottom) with the shared ``eps``; False where the process stops above the ladder's bottom (no
    evidence). An exact score's r fell at every step on all 105 mixtures of the sampler benchmark, VE and VP (at most
    0.89x a step); every network scorelab trained turned up somewhere (11 of 11: 2-D to 64-D, VE and VP, trained
    down to 0.01 or 0.002; a network's error grows near its smallest trained noise), and a VE process trained down
    to 0.01 cannot show it (docs/samplers.md, "A guard on the window"). Cost: len(LADDER) evaluations on x0."""
    if not reaches_bottom(sde):
        return False
    with torch.no_grad():
        r = [noise_share(score_fn, sde, x0, s, eps=eps) for s in LADDER]
    return all(b < a for a, b in zip(r, r[1:]))


def auto_start(value) -> float | None | bool:
    """What a sigma_min option asks of this module: False for a number (no choice to make); for "auto", None (the
    ladder starts at the method's own default end, the pilot ends at its bottom); for "auto:LEVEL", LEVEL (> 0, a
    level in data units where the pilot ends and the ladder starts, e.g. "auto:0.01"). Any other string is refused
    in one line."""
    if not isinstance(value, str):
        return False
    if value == "auto":
        return None
    head, _, level = value.partition(":")
    try:
        start = float(level) if head == "auto" else None
    except ValueError:
        start = None
    if start is None or not start > 0 or start == float("inf"):
        raise ValueError(f"sigma_min must be a number > 0 or 'auto' (the level chosen for the score, starting at the "
                         f"method's own end), or 'auto:LEVEL' (starting at LEVEL, e.g. 'auto:0.01'); got {value!r}.")
    return start


def pilot_generator(generator: torch.Generator | None, device=None) -> torch.Generator:
    """The pilots' own generator, seeded ``PILOT_SEED``, on the device of ``generator`` (or ``device``): a pilot's
    draws do not depend on the caller's stream, nor touch it, so the choice it makes is a function of the score, the
    process, the budget and the pilot's size alone: the same for every seed, and for every batch of 2-D data (whose
    pilot is always ``PILOT`` draws, ``pilot_size``)."""
    where = generator.device if generator is not None else torch.device(device if device is not None else "cpu")
    return torch.Generator(where).manual_seed(PILOT_SEED)


def pilot_size(shape) -> int:
    """Draws in a pilot for a batch of ``shape`` = (B, *dims): the batch's B, but at least enough to read
    ``PILOT_NUMBERS`` numbers (a batch of a few low-dimensional draws would otherwise read its levels off a handful
    of them), and at most ``PILOT``."""
    per = math.prod(int(d) for d in shape[1:])
    return min(PILOT, max(int(shape[0]), math.ceil(PILOT_NUMBERS / max(per, 1))))


def pilot_draws(score_fn, sde, shape, method: str, nfe: int, options: dict, end: float, generator=None,
                dtype: torch.dtype = torch.float32, device=None, memo: dict | None = None, fit=None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A pilot batch of ``pilot_size(shape)`` draws of ``method`` with ``options`` (its last evaluation not spent on
    denoise_to_zero) to the noise level ``end``, denoised there once (x0_hat = E[x0 | x], Tweedie), and eps, one draw
    shaped like it for every level the caller reads; both from the pilots' own stream (``pilot_generator``) on
    ``generator``'s device, whose own stream is left untouched. ``memo``: a dict owned by one ``sample()`` call, in
    which a pilot run with the same method, budget, options and end is kept and reused (``sample()`` chooses the stop
    level on the window's pilot). ``fit``: the data's fit x_T is drawn from (``scale.DataFit``, under sigma_max="auto"),
    as in the run the pilot stands for."""
    from ..tweedie import tweedie_mean
    from . import _run, options_of

    if "denoise_to_zero" in options_of(method):
        options = {**options, "denoise_to_zero": False}
        options.pop("final_order", None)  # the order and blend of that final step: none here
        options.pop("final_blend", None)
    n = pilot_size(shape)
    key = (method, nfe, n, tuple(shape[1:]), float(end), str(dtype), str(device),
           tuple(sorted((k, repr(v)) for k, v in options.items())))
    if memo is not None and key in memo:
        return memo[key]
    generator = pilot_generator(generator, device)
    x = _run(score_fn, sde, (n, *shape[1:]), method, nfe, options, generator, dtype, device, None, None, None, False,
             None, fit).x
    t_end = end_time(sde, end)
    m_end = float(sde.marginal_scale(torch.tensor(t_end, dtype=torch.float64)))
    with torch.no_grad():  # sample() returns x / m at the end (data units): the state is m times that
        x0 = tweedie_mean(score_fn, sde, x if m_end == 1.0 else m_end * x, t_end)
        drawn = x0, torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    if memo is not None:
        memo[key] = drawn
    return drawn


def _ladder(sde, method: str, start: float | None) -> tuple[list[float], bool]:
    """The candidate last levels for ``method`` (its own default end first, or ``start``) and whether the pilot runs
    to the ladder's bottom (``start`` None) rather than ending at ``start``."""
    from . import options_of

    known = options_of(method)
    if "sigma_min" not in known:
        raise ValueError(f"sigma_min='auto' needs a method whose grid ends at sigma_min; {method!r} has no "
                         "sigma_min option.")
    lo = float(getattr(sde, "sigma_min", 0.0))  # a VE process's smallest trained level; none for VP / sub-VP
    precise, start = start is None, float(known["sigma_min"] if start is None else start)
    return [start] + [s for s in LADDER if s < start and s >= lo], precise


def _up(sde, ladder: list[float], precise: bool) -> list[float]:
    """The levels above the ladder's start that "auto:LEVEL" may climb to (none for "auto"), below the process's top."""
    top = float(sigma_of(sde, sde.T))
    return [] if precise else [s for s in UP if ladder[0] < s < top]


def pilot_end(sde, method: str, sigma_min) -> float | None:
    """Where ``choose_sigma_min``'s pilot ends for this sigma_min option ("auto" or "auto:LEVEL"); None where it runs
    no pilot (a number, or a ladder of one level with nothing above it to climb to)."""
    start = auto_start(sigma_min)
    if start is False:
        return None
    ladder, precise = _ladder(sde, method, start)
    if len(ladder) == 1 and not _up(sde, ladder, precise):
        return None
    return ladder[-1] if precise else ladder[0]


def choose_sigma_min(score_fn, sde, shape, method: str, nfe: int, options: dict, generator=None,
                     dtype: torch.dtype = torch.float32, device=None, start: float | None = None,
                     memo: dict | None = None, fit=None, climb: float | None = None) -> float:
    """The last noise level for ``method`` at budget ``nfe`` on this score (see the module's docstring).
    ``options`` are the method's other options; the ladder starts at ``start``, where the pilot ends, or, when
    ``start`` is None, at the method's own default sigma_min, the pilot then ending at the ladder's bottom.
    ``memo``, ``fit``: see ``pilot_draws``; with a ``memo`` the noise shares read on a pilot are kept there too, so
    that a second reading of the same pilot costs only the levels the first did not read. ``climb``: the noise
    share the climb above ``start`` may reach (default: by budget, ``CLIMB``)."""
    ladder, precise = _ladder(sde, method, start)
    up = [s for s in _up(sde, ladder, precise) if s < options.get("sigma_max", float("inf"))]  # below the grid's top
    if len(ladder) == 1 and not up:  # nothing to choose (e.g. a VE run trained down to start): no pilot
        return ladder[0]
    start, end = ladder[0], ladder[-1] if precise else ladder[0]  # where the pilot ends and is denoised
    x0, eps = pilot_draws(score_fn, sde, shape, method, nfe, {**options, "sigma_min": end}, end, generator, dtype,
                          device, memo, fit)
    shares = {} if memo is None else memo.setdefault(("shares", id(x0)), {})  # x0 is held by the memo

    def share(sigma: float) -> float:
        if sigma not in shares:
            shares[sigma] = noise_share(score_fn, sde, x0, sigma, eps=eps)
        return shares[sigma]

    with torch.no_grad():
        chosen, r_prev = start, None
        for sigma in ladder:
            r = share(sigma)
            if r_prev is not None and not r < r_prev:
                break  # r stopped falling: the score is not trusted this low
            chosen, r_prev = sigma, r
            if r <= R_TARGET:
                break
        target = next(r for lo, r in CLIMB if nfe >= lo) if climb is None else climb
        if chosen == start and r_prev <= target:  # data wide at the start: climb while r stays at or below target
            for sigma in up:
                if share(sigma) > target:
                    break
                chosen = sigma
    return chosen

