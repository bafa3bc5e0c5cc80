"""Where to inject noise: the stochastic window read off the score (``stochastic_below="auto"``).

A stochastic step (eta > 0) forgets part of the error made so far and pays for it with a larger error of its own; with
few steps it pays off where the data look like one Gaussian at the current noise level (its calibrated weights make
that case exact, ``samplers/calibrate.py``) and not where the posterior hesitates between modes. Which levels those
are is read off the score through the noise share of stop.py,

    r(sigma) = E |sigma score_sigma(x0 + sigma eps)|^2 / d,

as the effective variance v(sigma) = sigma^2 (1 - r) / r that the data show at that level (constant, v, for a
Gaussian of variance v) and its growth

    kappa(sigma) = d log v / d log sigma:

about 0 while sigma stays inside the components, up to 2 and above (r falling as sigma rises) once sigma reaches the
gaps between modes, where the posterior spreads over several. The window ends at the first level of ``LADDER`` with
kappa > ``KAPPA`` and r > ``R_MIN`` (below that the noise is too small a share to tell modes apart), and never below
``S_MIN``: the steps that start above it follow the probability-flow ODE. None (no level found up to the top of the
ladder): stochastic everywhere. Components of unequal widths (needles, 1-D lines of sharp and wide modes) raise kappa
too, without a gap between modes; there a window that ends too low costs up to 4x, one that ends too high about 1.5x,
hence the floor.

``choose_stochastic_below`` runs the method with the fixed window ``PILOT_WINDOW`` on a pilot batch (at most
``stop.pilot_size`` draws, from the pilots' own stream; ``stop.pilot_draws``) down to where the stop level's
pilot ends when ``sigma_min`` is "auto" or "auto:LEVEL" (``stop.pilot_end``), else to ``PILOT_END`` (or the method's
sigma_min where that is a number and higher), denoises it once (Tweedie) and measures r up the ladder with one shared
draw of eps, to one level above the first that qualifies. "auto:FLOOR" reads the same way and never ends the window
below FLOOR. "auto:guarded" reads the same way with the floor GUARD where the score shows a network's error near its
smallest noise, S_MIN where it shows none: its noise share keeps falling down the stop ladder to its bottom on the
same pilot (``stop.share_keeps_falling``; the pilot then ends there). Cost: the method's budget + 1 + at most
len(LADDER) evaluations on the pilot batch (guarded: + len(stop.LADDER)), one host read per level, all before the
sampler's loop; ``sample()`` then chooses the stop level on the same pilot (it passes both one ``memo``). The numbers
behind the constants: docs/samplers.md, "The window read off the score", "A floor under the window" and "A guard on
the window".
"""

from __future__ import annotations

import math

import torch

from ._common import sigma_of
from .stop import LADDER as STOP_LADDER
from .stop import noise_share, pilot_draws, pilot_end, reaches_bottom, share_keeps_falling

LADDER = tuple(0.05 * 1.2**k for k in range(27))  # 0.05 .. 5.5, in data units
KAPPA = 1.8  # the growth of the effective variance where the window ends (2: r stops rising)
R_MIN = 0.2
S_MIN = 0.3  # the lowest end of the window (a 1-D line of sharp and wide modes read 0.26 and lost 4x there)
PILOT_WINDOW = 0.7  # the window the pilot runs with (the fixed default before this choice)
PILOT_END = 0.02
GUARDED = "guarded"  # "auto:guarded": the floor GUARD where the score shows a learned error, S_MIN where it shows none
GUARD = 0.7  # the window never ends below it on a network's score (1.2-1.7x on 7 of 9 learned runs, "A guard ...")


def variance_growth(sigmas, r) -> list[float]:
    """kappa = d log v / d log sigma at each level, v = sigma^2 (1 - r) / r (central differences in log sigma, one
    sided at the ends); r clipped into (0, 1)."""
    ls = [math.log(s) for s in sigmas]
    lv = [2 * a + math.log((1 - q) / q) for a, q in zip(ls, (min(max(q, 1e-6), 1 - 1e-6) for q in r))]
    n = len(ls)
    if n < 2:
        raise ValueError("variance_growth needs at least two levels.")
    return [(lv[min(i + 1, n - 1)] - lv[max(i - 1, 0)]) / (ls[min(i + 1, n - 1)] - ls[max(i - 1, 0)])
            for i in range(n)]


def window_floor(value) -> float | str | bool:
    """What a stochastic_below option asks of this module: False for a number or None (no choice to make); for
    "auto", S_MIN; for "auto:FLOOR", FLOOR (> 0, the lowest end the reading may give, e.g. "auto:0.7": the window
    only ever widens from 0.7); for "auto:guarded", GUARDED (the floor GUARD unless the score's noise share keeps
    falling to the stop ladder's bottom, ``stop.share_keeps_falling``, then S_MIN). Any other string is refused in
    one line."""
    if not isinstance(value, str):
        return False
    if value == f"auto:{GUARDED}":
        return GUARDED
    head, _, level = value.partition(":")
    try:
        floor = S_MIN if value == "auto" else float(level) if head == "auto" else None
    except ValueError:
        floor = None
    if floor is None or not 0 < floor < float("inf"):
        raise ValueError(f"stochastic_below must be a number > 0, None (stochastic on every step), 'auto' (the window "
                         f"read off the score), 'auto:FLOOR' (read, never below FLOOR, e.g. 'auto:0.7') or "
                         f"'auto:guarded' (never below {GUARD} unless the score shows no learned error); "
                         f"got {value!r}.")
    return floor


def _qualifies(sigmas, r, i: int) -> bool:
    """Whether level i has kappa > KAPPA and r > R_MIN; kappa from levels i - 1 .. i + 1 only, so that r need be
    known no further than level i + 1."""
    lo, hi = max(i - 1, 0), min(i + 2, len(sigmas))
    return variance_growth(sigmas[lo:hi], r[lo:hi])[i - lo] > KAPPA and r[i] > R_MIN


def window_from_share(sigmas, r, floor: float = S_MIN) -> float | None:
    """The first level with kappa > KAPPA and r > R_MIN, at least ``floor``; None where no level qualifies."""
    return next((max(float(sigmas[i]), floor) for i in range(len(sigmas)) if _qualifies(sigmas, r, i)), None)


def choose_stochastic_below(score_fn, sde, shape, method: str, nfe: int, options: dict, generator=None,
                            dtype: torch.dtype = torch.float32, device=None, floor: float | str = S_MIN,
                            memo: dict | None = None, fit=None) -> float | None:
    """The level below which ``method`` steps stochastically on this score (see the module's docstring), never below
    ``floor``; None: stochastic everywhere. ``floor`` GUARDED: GUARD, or S_MIN where the score's noise share keeps
    falling down the stop ladder on the same pilot, which then ends at the ladder's bottom. ``options`` are the
    method's other options; ``memo``, ``fit``: see ``stop.pilot_draws``."""
    from . import options_of

    known = options_of(method)
    if "stochastic_below" not in known:
        raise ValueError(f"stochastic_below='auto' needs a method with a stochastic window (dpm_solver with eta > 0, "
                         f"sde_dpm_solver); {method!r} has none.")
    if not options.get("eta", known.get("eta")):  # eta = 0: no step is stochastic, nothing to choose, no pilot
        return None
    sm = options.get("sigma_min", known.get("sigma_min"))
    end = pilot_end(sde, method, sm)  # the stop level's pilot where one is to run: one pilot serves both
    if end is None:
        end = max(PILOT_END, float(getattr(sde, "sigma_min", 0.0)), sm if isinstance(sm, (int, float)) else 0.0)
    guarded = floor == GUARDED and reaches_bottom(sde)
    if guarded:  # the check reads the share down to the ladder's bottom, on a pilot denoised there
        end = STOP_LADDER[-1]
    elif floor == GUARDED:  # a process that stops above the ladder's bottom cannot show the error: guarded
        floor = GUARD
    pilot = {**options, "stochastic_below": PILOT_WINDOW, "sigma_min": end}
    x0, eps = pilot_draws(score_fn, sde, shape, method, nfe, pilot, end, generator, dtype, device, memo, fit)
    if guarded:
        floor = S_MIN if share_keeps_falling(score_fn, sde, x0, eps) else GUARD
    top = float(sigma_of(sde, sde.T))
    sigmas = [s for s in LADDER if s < top]
    if len(sigmas) < 2:
        return None
    r: list[float] = []
    with torch.no_grad():  # level by level up the ladder, stopping one level above the first that qualifies
        for j, s in enumerate(sigmas):
            r.append(noise_share(score_fn, sde, x0, s, eps=eps))
            for i in ([j - 1] if j else []) + ([j] if j == len(sigmas) - 1 else []):
                if _qualifies(sigmas, r, i):
                    return max(float(sigmas[i]), floor)
    return None
