"""What every sampler shares: the result, the counted score, a method's declaration (``@method``: what a step
costs, the default grid and its ends, read by ``sample``), the option checks and the float64 ``Schedule``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..tweedie import posterior_mean


@dataclass
class SampleResult:
    x: torch.Tensor  # [B, *dims] final samples
    nfe: int  # score evaluations actually used (never above the budget)
    steps: int = 0  # steps of the time grid taken
    method: str = ""  # the method that ran: sample()'s choice where none was named
    options: dict = field(default_factory=dict)  # its options as run, the levels read off the score for "auto"
    times: torch.Tensor | None = None  # the grid it ran on (float64 times, decreasing)

    def describe(self, sde) -> str:
        """What ran, in one line: "METHOD, N steps, sigma HI to LO[, then x0_hat]" (the grid's noise levels in data
        units; a grid ending at t = 0 ends at sigma 0; x0_hat: ``denoise_to_zero``'s final step)."""
        if self.times is None or len(self.times) == 0:
            return self.method or "?"
        hi, lo = (float(sigma_of(sde, self.times[i].double().cpu())) for i in (0, -1))
        g = self.options.get("final_blend", 0.0)
        end = (f", then x0_hat blended {g:g} with the sample" if g else ", then x0_hat") \
            if self.options.get("denoise_to_zero") else ""
        return f"{self.method}, {len(self.times) - 1} steps, sigma {hi:.3g} to {lo:.3g}{end}"


class BudgetExceeded(RuntimeError):
    """Raised by CountedScore when a sampler asks for more evaluations than its budget."""


class CountedScore:
    """score_fn(x, t) with a call counter (a Python int), a hard budget and an output-shape check on every call
    (a comparison of sizes: no host round trip)."""

    def __init__(self, score_fn, budget: float = math.inf):
        self.fn, self.budget, self.count = score_fn, budget, 0
        self.last = None  # the last output (a reference: the final step of order 2 reads the one before it)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.count >= self.budget:
            raise BudgetExceeded(f"the sampler needs more than nfe={self.budget} score evaluations")
        out = self.fn(x, t)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"score_fn(x, t) must return a tensor shaped like x {tuple(x.shape)}, got {got}.")
        self.count += 1
        self.last = out
        return out


def method(cost: int | Callable = 1, reserve: int | Callable = 0, grid: str | None = "uniform",
           end: str | float = "eps", steps: Callable | None = None, start: Callable | None = None,
           begin: str | None = None, deterministic: bool | Callable = False, noisy_end: bool | Callable = False):
    """Declare a method: ``cost`` evaluations per step, ``reserve`` for a final step (numbers or functions of the
    options), default ``grid`` (None: all at the option ``t``), the options giving its ``end`` (time "eps" or
    level "sigma_min") and ``begin`` (a level; default T), ``steps(nfe, options)``, ``start(sde, options)``;
    ``deterministic`` (or a function of the given options): it draws no noise after x_T (inpainting then noises
    the known entries with one z, so that they follow one smooth path); ``noisy_end`` (or a function of the
    options): it returns the process's state at the grid's last noise level sigma_min, not denoised, which
    ``sample()`` hands back in data units, x / m(t_N) (the data plus noise sigma_min; VE: m = 1)."""
    def by_cost(nfe, o):
        c, r = value(cost, o), value(reserve, o)
        n = (nfe - r) // c
        if n < (0 if r else 1):
            raise ValueError(f"nfe={nfe} is too small for this method with these options: one step costs {c} score "
                             f"evaluations{f' and the final step {r}' if r else ''}; pass nfe >= {c + r}.")
        return n

    def wrap(fn):
        fn.grid, fn.end, fn.begin, fn.start, fn.deterministic = grid, end, begin, start, deterministic
        fn.noisy_end = noisy_end
        fn.steps = steps or by_cost
        return fn
    return wrap


def value(v, options):
    return v(options) if callable(v) else v


# ---- option checks by name, shared by every method and by ``inpaint``'s smc (choice tables added by the package) --

POSITIVE = ("snr", "step_size", "init_std", "rho", "rtol", "atol", "sigma_max", "stochastic_below",
            "stochastic_above")
INTEGERS = {"order": (1, 4), "corrector_steps": (0, None), "resample": (1, None), "n_levels": (1, None),
            "steps_per_level": (1, None), "particles": (1, None)}
# (low, high, low allowed, high allowed); "T": the process's T, "sigma(T)": its noise level s(T) / m(T)
BOUNDED = {"eps": (0, "T", False, False), "t": (0, "T", True, True), "sigma_min": (0, "sigma(T)", False, False),
           "eta": (0, None, True, False), "ess": (0, 1, True, True)}
FLAGS = ("multistep", "lower_order_final", "denoise_to_zero", "denoise", "use_corrector", "midpoint")
CHOICES: dict = {}  # option name -> table of allowed names


def check_options(who: str, options: dict, known: dict, sde, hint: str = "") -> dict:
    """``options`` checked against the ``known`` {name: default} of ``who`` and, by name, for range (one
    ``TypeError``/``ValueError`` line); returns them completed with the defaults."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"{who} has no option {', '.join(map(repr, unknown))}; its options are "
                        f"{', '.join(known) or 'none'}{hint}.")
    opts = {**known, **options}
    for name, v in opts.items():
        check_option(name, v, sde, known[name])
    return opts


def check_option(name, v, sde, default) -> None:
    """One ``ValueError``/``TypeError`` line for an option out of range; options not listed pass unchecked
    (``eps`` may be 0 where its default is: the ancestral sampler ends at t = 0)."""
    if v is None and default is None:
        return
    if name in FLAGS and not isinstance(v, bool):
        raise TypeError(f"{name} must be True or False, got {v!r}.")
    if name in CHOICES and (not isinstance(v, str) or v not in CHOICES[name]):
        raise ValueError(f"unknown {name} {v!r}; choose one of {list(CHOICES[name])}.")
    if name in INTEGERS:
        lo, hi = INTEGERS[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise ValueError(f"{name} must be an integer {f'in [{lo}, {hi}]' if hi else f'>= {lo}'}, got {v!r}.")
    if name == "sigma_min" and isinstance(v, str):  # "auto" is resolved by sample() before the options get here
        from .stop import auto_start

        auto_start(v)  # refuses a string that is not "auto" or "auto:LEVEL" in one line
        raise ValueError(f"sigma_min={v!r} is resolved by sample() and optimized_grid(); pass a number here.")
    if name == "stochastic_below" and isinstance(v, str):
        from .window import window_floor

        window_floor(v)  # refuses a string that is not "auto" or "auto:FLOOR" in one line
        raise ValueError(f"stochastic_below={v!r} is resolved by sample(); pass a number here.")
    if name == "sigma_max" and isinstance(v, str):
        if v != "auto":
            raise ValueError(f"sigma_max must be a number > 0 or 'auto' (3 times the data's std read off the score, "
                             f"at least 10); got {v!r}.")
        raise ValueError("sigma_max='auto' is resolved by sample(); pass a number here.")
    if name in POSITIVE or name in BOUNDED:
        lo, hi, lo_in, hi_in = BOUNDED.get(name, (0, None, False, False))
        lo_in = lo_in or (name == "eps" and default == 0)
        hi = {"T": sde.T, "sigma(T)": float(sigma_of(sde, sde.T))}.get(hi, hi)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo or (
                v == lo and not lo_in) or (hi is not None and (v > hi or (v == hi and not hi_in))):
            top = "" if hi is None else f" and {'<=' if hi_in else 'below'} {hi:.4g}"
            raise ValueError(f"{name} must be a finite number {'>=' if lo_in else '>'} {lo}{top}, got {v!r}.")


def sigma_of(sde, t):
    """The noise level s(t) / m(t) at a time t (float64)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return sde.marginal_std(t) / sde.marginal_scale(t)


# ---- the schedule of a grid: float64 coefficients, cast once ----------------------------------------------

class Schedule:
    """What a step needs on a grid t_0 > ... > t_N, computed once in float64 and kept as Python floats (kernel
    arguments: no per-step device copy or host sync): t, m, s; for step i (t_i -> t_{i+1}, dt) the forward
    kernel's r = m_i / m_{i+1} and std G (``SDE.transition``), em = -a(t_i) dt, gn = g(t_i) sqrt(dt); ``t_d``
    the times as a tensor for the score; ``coef(fn)`` caches more, fn(schedule) -> float64 tensors."""

    def __init__(self, sde, times: torch.Tensor, like: torch.Tensor):
        t = times.to(torch.float64)
        m, s = sde.marginal_scale(t), sde.marginal_std(t)
        r, G = sde.transition(t[1:], t[:-1])
        dt = t[:-1] - t[1:]
        self.sde, self.n, self.t64, self.m64, self.s64, self.r64, self.G64 = sde, len(t) - 1, t, m, s, r, G
        self.t, self.m, self.s, self.r, self.G = (v.tolist() for v in (t, m, s, r, G))
        self.em, self.gn = (-sde.drift_coeff(t[:-1]) * dt).tolist(), (sde.diffusion(t[:-1]) * dt.sqrt()).tolist()
        self.t_d = t.to(dtype=like.dtype, device=like.device)
        self._cache: dict = {}

    def __len__(self) -> int:
        return self.n

    def tb(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Time t_i as the [B] tensor a score function takes (a view)."""
        return self.t_d[i].expand(x.shape[0])

    def coef(self, fn):
        if fn not in self._cache:
            self._cache[fn] = [v.tolist() for v in fn(self)]
        return self._cache[fn]


def to_zero(score, x, S, final_order: int = 1, blend: float = 0.0):
    """``denoise_to_zero``'s final step, from the grid's last level sigma_N = s_N / m_N to sigma = 0, spending one
    evaluation at x_N. ``final_order`` 1: x0_hat = D_N (Tweedie), the first-order step. 2: the probability-flow ODE in
    sigma, dy/dsigma = eps (y = x / m, eps = -s score), integrated from sigma_N to 0 with eps linear in sigma through
    the last two evaluations (Adams-Bashforth 2 in sigma; in log-SNR the step is infinite, which is why the
    multistep solvers take order 1 there):

        y(0) = D_N + sigma_N^2 / 2 * (eps_N - eps_{N-1}) / (sigma_N - sigma_{N-1}),

    eps_{N-1} the score's last output before this one (``CountedScore.last``, the evaluation at t_{N-1}): a local
    error O(sigma_N^3) in place of O(sigma_N^2) (tests/test_multistep.py).

    ``blend`` g (order 1 only): D_N + g (y_N - D_N), y_N = x_N / m_N the sample at sigma_N in data units: g = 0 is
    x0_hat, g = 1 leaves the noise sigma_N on, g = 1/2 is Euler's step in sigma^2 to 0, the flow's own step for data
    much wider than sigma_N (on N(mu, v) the flow's gain from sigma_N to 0, over x0_hat's, is reached at
    g = sqrt(k) / (1 + sqrt(k)), k = v / (v + sigma_N^2)). Away from 0 and 1/2 it calibrates: ``finish.py`` chooses
    g where the sampler's output is nearest the flow's."""
    N = len(S)
    prev = score.last
    sc = score(x, S.tb(N, x))
    x0 = posterior_mean(x, sc, S.m[N], S.s[N])
    if blend:
        return x0 + blend * (x / S.m[N] - x0)
    if final_order == 1 or N == 0:  # no step before it (nfe = 1): x0_hat
        return x0
    sig, sig_prev = S.s[N] / S.m[N], S.s[N - 1] / S.m[N - 1]
    c = sig * sig / (2 * (sig - sig_prev))
    return x0 - c * (S.s[N] * sc - S.s[N - 1] * prev)  # eps_N - eps_{N-1} = -(s_N score_N - s_{N-1} score_{N-1})


def check_final_blend(blend, denoise_to_zero: bool, final_order: int) -> None:
    """One error line for a ``final_blend`` that is not a number in [-1, 1], or not 0 without ``denoise_to_zero`` or
    with ``final_order=2``."""
    if isinstance(blend, bool) or not isinstance(blend, (int, float)) or not -1.0 <= blend <= 1.0:
        raise ValueError(f"final_blend must be a number in [-1, 1] (0: x0_hat, 1: the sample at the last level); "
                         f"got {blend!r}.")
    if blend and (not denoise_to_zero or final_order != 1):
        raise ValueError(f"final_blend blends x0_hat, the final step of denoise_to_zero=True with final_order=1, "
                         f"with the sample it was read at; got final_blend={blend}, denoise_to_zero={denoise_to_zero}, "
                         f"final_order={final_order}.")


def check_final_order(final_order: int, denoise_to_zero: bool, eta: float = 0.0):
    if final_order not in (1, 2) or (final_order == 2 and (not denoise_to_zero or eta > 0)):
        raise ValueError(f"final_order must be 1 or 2, and 2 (the second-order step to sigma = 0) needs "
                         f"denoise_to_zero=True and eta = 0 (it extrapolates eps along the probability-flow ODE); got "
                         f"final_order={final_order}, denoise_to_zero={denoise_to_zero}, eta={eta}.")


def check_representable(sde, dtype):
    """Refuse a dtype that cannot hold x_T (six prior standard deviations), e.g. float16 with sigma_max = 1e5."""
    if 6 * sde.prior_std > torch.finfo(dtype).max:
        raise ValueError(f"{dtype} cannot represent this process: x_T has std {sde.prior_std:.3g}, near the dtype's "
                         f"largest value {torch.finfo(dtype).max:.3g}; sample in float32 or float64.")


def gaussian(like: torch.Tensor, generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


__all__ = ["SampleResult", "BudgetExceeded", "CountedScore", "method", "value", "check_options", "check_option",
           "Schedule", "gaussian", "posterior_mean", "check_representable"]
