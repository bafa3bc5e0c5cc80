"""Sampling from a score: ``sample`` checks the options against the method's signature, draws x_T (or takes
``x_init``), builds the grid (any grid for any method) and the counted score, then calls
``METHODS[name](score, sde, x, times, generator, callback, **options)``; each method lives in the module named after its
mathematics (pc, ode, exponential, karras, langevin, multistep). ``scorelab.samplers()`` lists the methods.
"""

from __future__ import annotations

import inspect
import sys
import types

import torch

from .._checks import check_sampling_args, check_shape
from ..sde import SDE
from . import exponential, karras, langevin, multistep, ode, pc
from ._common import (
    CHOICES,
    BudgetExceeded,
    CountedScore,
    SampleResult,
    check_option,
    check_options,
    check_representable,
    sigma_of,
    value,
)
from .finish import FINISH_END, choose_finish
from .grid_search import optimized_grid
from .grids import GRIDS, end_time, make_grid
from .scale import choose_start
from .steps import CORRECTORS, PREDICTORS
from .stop import R_TARGET, WIDE_END, auto_start, choose_sigma_min, pilot_size
from .window import PILOT_WINDOW, choose_stochastic_below, window_floor

# the modules keep their names (``scorelab.samplers.ode`` is the module); the table holds the functions
METHODS = {f.__name__: f for f in (langevin.langevin, langevin.annealed_langevin, langevin.mala, pc.ancestral,
                                    pc.euler_maruyama, pc.reverse_diffusion, pc.pc, ode.ode, exponential.dpm_solver,
                                    exponential.sde_dpm_solver, karras.edm_heun, multistep.lms, multistep.ipndm,
                                    multistep.unipc, multistep.deis)}
DEFAULT_NFE = 400  # the budget of sample() when none is named

# the default of ``sample()`` by budget, the first row whose smallest nfe the budget reaches: (nfe, method, options)
BY_BUDGET = ((100, "ancestral", {}),
             (32, "sde_dpm_solver", {"denoise_to_zero": True, "sigma_min": "auto", "calibrate": True}),
             (20, "sde_dpm_solver", {"denoise_to_zero": True, "sigma_min": "auto", "calibrate": True,
                                     "stochastic_below": "auto:guarded", "corrector_order": 3}),
             (13, "sde_dpm_solver", {"denoise_to_zero": True, "sigma_min": "auto:0.03", "calibrate": True,
                                     "stochastic_below": "auto:guarded", "corrector_order": 3}),
             (8, "unipc", {"sigma_min": "auto:0.03", "grid": "auto"}),
             (1, "ipndm", {"order": 2, "rho": 10.0, "sigma_min": "auto:0.01", "sigma_max": "auto"}))
# at these budgets, on data that read wide (the stop level read on the default's pilot with the climb of the next
# row, stop.R_TARGET, at least stop.WIDE_END), ``sample()`` with no method, options or grid runs the next row's
# method on DDPM's levels (its grid on wide data, grid="auto") from the same start to that level (docs/samplers.md,
# "Wide data below 8 evaluations": at 5 evaluations 0.05-0.78x the moment KL of iPNDM's row on all 12 wide
# mixtures of 141 and 0.07-0.60x on wide Gaussians; at 3 worse on Gaussians of std 1 and 5, 1.5-2.2x)
WIDE_BUDGETS = range(4, 8)
# at these budgets (of the UniPC row), on data whose stop level read is at least finish.FINISH_END, ``sample()`` with no
# method, options or grid ends on DDPM's levels with x0_hat blended with the sample it was read at, where a pilot
# shows that nearer the probability-flow ODE's endpoint than the plain run (``samplers/finish.py``; docs/samplers.md,
# "The finish chosen by the flow": gm 0.95 over the 188 mixtures at 10, 0.76 and 0.73 over the 47 that read wide at
# 11 and 12; at 8 and 9 it lost up to 2.1x on 8 of those 47, all in 3-6 dimensions, so the row's first two budgets
# keep the plain run)
FINISH_BUDGETS = range(10, 13)


def default_sampler(nfe: int) -> tuple[str, dict]:
    """The method and options of ``sample()`` when no method is named, at the budget ``nfe`` (``BY_BUDGET``): from 100
    evaluations the ancestral sampler; from 20 ``sde_dpm_solver`` (SDE-DPM-Solver++(2M), Lu et al. 2022b, eta = 1)
    with its weights calibrated to be exact in variance on Gaussian data (``samplers/calibrate.py``) and its last
    evaluation spent on x0_hat, below 32 evaluations stochastic only from a noise level down, the ODE above it: the
    level where the data's modes part, read off the score, never below 0.7 on a score that shows a network's error
    near its smallest noise (``stochastic_below="auto:guarded"``; docs/samplers.md, "A floor under the window": the
    reading alone, ``"auto"``, wins on exact mixtures but loses on learned ones; "A guard on the window": the noise
    share of every exact score falls down the stop ladder, every trained network's turns up; 0.7 is the fixed
    window it replaced, "The stochastic window") and after each step the SA-Solver corrector of order 3 (Xue et al.
    2023; ``corrector_order=3``, no extra evaluation), the calibration made with it in the variance recursion
    ("The calibrated corrector"); from 13 to 19 the same step with the stop level read as below 20 (``"auto:0.03"``;
    docs/samplers.md, "The SDE row from 13 evaluations": UniPC's error grows from 10 to 15 evaluations; this row's
    moment KL is 0.33x UniPC's at 13 and 0.23x at 16, geometric mean over 115 mixtures); from 8 to 12 UniPC
    (Zhao et al. 2023) on its log-SNR grid, or on DDPM's time-uniform levels where the stop level chosen is 0.2 or
    above (``grid="auto"``: wide data, docs/samplers.md, "Wide data: DDPM's grid from 8 to 12 evaluations"), and from
    10 to 12, where that level is 0.1 or above on a score trusted down to 0.002, ending instead on DDPM's levels to
    its last level before 0 with x0_hat blended with the sample, where a pilot finds that nearer the flow
    (``FINISH_BUDGETS``, ``samplers/finish.py``: "The finish chosen by the flow"); all
    of these end at the noise level chosen for the score (``samplers/stop.py``: 0.03 unless
    the data are sharper; from 20 evaluations ``sigma_min="auto"``, whose pilot runs to the ladder's bottom, from 8
    to 19 ``"auto:0.03"``, whose pilot ends at 0.03 and reads data narrower than that as a little wider, so it stops
    higher, as a short grid needs: "The pilot's end"; data wide at 0.03 stop higher, up to 0.5: "Wide data end
    higher"); below 8 iPNDM (Zhang & Chen 2023) of order 2 on the Karras grid with rho = 10 from the start read
    off the score, max(3, 2.5 std, the lowest level where the noised data are within 0.03 nats of their noised
    Gaussian fit), x_T drawn from that fit (``sigma_max="auto"``, ``samplers/scale.py``; "Where a short grid
    starts", "The start drawn from the data's fit") to the level chosen for the score
    from 0.01 (``sigma_min="auto:0.01"``, down on sharp data, up on wide; docs/samplers.md, "Default sampling by
    budget", "The default at 5 evaluations", "Where to stop", "The stop level below 8 evaluations"); from 4 to 7
    evaluations, on data that read wide on the same pilot, ``sample()`` runs UniPC on DDPM's levels instead, from
    that start (``WIDE_BUDGETS``; the options returned here are the iPNDM row's)."""
    _, name, options = next((row for row in BY_BUDGET if nfe >= row[0]), BY_BUDGET[-1])
    return name, dict(options)


def default_method(nfe: int) -> str:
    """The name of ``default_sampler(nfe)``'s method."""
    return default_sampler(nfe)[0]


DEFAULT_METHOD = default_method(DEFAULT_NFE)
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_ARGS = 6  # score, sde, x, times, generator, callback

__all__ = ["sample", "samplers", "SampleResult", "METHODS", "DEFAULT_METHOD", "DEFAULT_NFE", "default_method",
           "default_sampler", "BY_BUDGET", "WIDE_BUDGETS", "FINISH_BUDGETS", "optimized_grid"]


def samplers() -> list[str]:
    """Every method name accepted by ``sample``."""
    return list(METHODS)


CHOICES.update(predictor=PREDICTORS, corrector=CORRECTORS, solver=(*ode.SOLVERS, *ode.ADAPTIVE),
               variant=("bh1", "bh2"), grid=tuple(GRIDS))  # grid: an option of inpaint's smc


def options_of(name: str) -> dict:
    """The options of method ``name`` with their defaults."""
    return {p.name: p.default for p in list(inspect.signature(METHODS[name]).parameters.values())[_ARGS:]}


def _bind(name: str, sde: SDE, options: dict) -> dict:
    """Options checked against the method's signature and, by name, for range; returns them with defaults."""
    return check_options(f"method {name!r}", options, options_of(name), sde,
                         f" (see help({METHODS[name].__module__}.{name}))")


def _grid(fn, sde, steps, opts, grid):
    if isinstance(grid, torch.Tensor):
        times = grid.detach().to("cpu", torch.float64).reshape(-1)
        if times.numel() < 1 or not bool(torch.isfinite(times).all()) or bool((times[1:] >= times[:-1]).any()) \
                or float(times[0]) > sde.T or float(times[-1]) < 0:
            raise ValueError(f"grid must be a strictly decreasing 1-D tensor of times in [0, T = {sde.T}].")
        return times
    if fn.grid is None and grid is None:
        return torch.full((steps + 1,), float(opts["t"]), dtype=torch.float64)
    t_min = end_time(sde, opts["sigma_min"]) if fn.end == "sigma_min" else float(opts.get(fn.end, fn.end))
    begin = None if fn.begin is None else opts[fn.begin]
    if begin is not None and fn.end == "sigma_min" and begin <= opts["sigma_min"]:
        raise ValueError(f"{fn.begin}={begin} must be above sigma_min={opts['sigma_min']}: the grid runs from the "
                         "first noise level down to the second.")
    t_max = end_time(sde, begin) if begin is not None and begin < float(sigma_of(sde, sde.T)) else None
    name = grid or fn.grid
    rho = {"rho": opts.get("rho", 7.0)} if name == "karras" else {}
    if t_min == 0 and name != "uniform" and steps > 1:  # a noise-level grid to sigma = 0.002 (EDM), then t = 0
        times = make_grid(name, sde, steps - 1, end_time(sde, 0.002), t_max=t_max, **rho)
        return torch.cat([times, times.new_zeros(1)])
    return make_grid(name, sde, steps, t_min, t_max=t_max, **rho)


def _start(sde, fn, opts, times, fit, shape, generator, dtype, device) -> torch.Tensor:
    """x_T [shape] at times[0]: from the data's fit noised to that level where one was read (``scale.DataFit.draw``);
    else the prior at T, on a grid that starts at t0 < T scaled by the ratio of the marginal stds of unit-variance
    data, sqrt((m^2 + s^2)(t0) / (m^2 + s^2)(T)) (1 for VP); or with the method's own std (``fn.start``)."""
    if fit is not None and fn.start is None:
        return fit.draw(sde, float(times[0]), shape, generator, dtype, device)
    if fn.start is not None:
        std = fn.start(sde, opts)
    else:
        ends = torch.tensor([float(times[0]), sde.T], dtype=torch.float64)
        v = sde.marginal_scale(ends) ** 2 + sde.marginal_std(ends) ** 2
        std = sde.prior_std * float((v[0] / v[1]).sqrt())
    return std * torch.randn(shape, generator=generator, dtype=dtype, device=device)


class _Hook:
    """After each step: the constraint ``project(x, t)``, the user's ``callback(i, t, x)``, the progress bar."""

    def __init__(self, project, callback, bar):
        self.project_fn, self.callback, self.bar, self.steps = project, callback, bar, 0

    def project(self, x, t):
        return x if self.project_fn is None else self.project_fn(x, t.expand(x.shape[0]))

    def __call__(self, i, t, x):
        x, self.steps = self.project(x, t), self.steps + 1
        if self.callback is not None:
            self.callback(i, t, x)
        if self.bar is not None:
            self.bar.update(1)
        return x


def sample(score_fn, sde: SDE, shape, method: str | None = None, nfe: int = DEFAULT_NFE,
           generator: torch.Generator | None = None, callback=None, dtype: torch.dtype = torch.float32,
           device=None, x_init: torch.Tensor | None = None, grid: str | torch.Tensor | None = None,
           project=None, progress: bool = False, **options) -> SampleResult:
    """Draw ``shape`` = (B, *dims) samples with ``method`` (None: ``default_sampler(nfe)``'s method and options, the
    choice at that budget) using at most ``nfe`` score evaluations.

    score_fn(x [B, *dims], t [B]) -> [B, *dims] is any score (trained or exact); ``callback(i, t, x)`` is called
    after every step with the step index, the (0-d) time reached and the current x. ``x_init`` replaces the
    draw of x_T (shape may then be None); ``grid`` overrides the method's time grid ("uniform", "log_snr",
    "karras", "ddpm" (the noise levels of equal steps in DDPM's time, on any process), "optimized"
    (``optimized_grid``, searched for this score once and cached), "auto" ("ddpm" where the method's sigma_min,
    given or chosen for the score, is at least ``stop.WIDE_END``, else the method's own), or a decreasing tensor
    of times);
    ``project(x, t [B]) -> x`` imposes a constraint after every step (see ``scorelab.conditional``); ``progress``
    shows a progress bar on a terminal. ``options`` go to the method (``options_of(method)`` lists them). Returns
    SampleResult(x [B, *dims], nfe = evaluations used, steps, method and options as run (the default's choice, the
    levels read off the score in place of "auto"), times = the grid run on). A method that stops at a noise level
    sigma_min on its own grid returns x / m(t_N), the data plus that noise in data units (on a VP process m < 1
    there); on a ``grid`` tensor, the process's state at its last time, to be continued with ``x_init``.
    """
    check_sampling_args(score_fn, sde, generator, nfe)
    as_default = method is None and not options and grid is None  # may take the wide branch (WIDE_BUDGETS)
    if method is None:
        method, defaults = default_sampler(nfe)
        default_grid = defaults.pop("grid", None)  # an argument of sample(), not an option of the method
        grid = default_grid if grid is None else grid
        options = {**defaults, **options}
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {samplers()}; got {type(method).__name__}.")
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; choose one of {samplers()}.")
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be a floating-point torch dtype, got {dtype}.")
    for name, f in (("callback", callback), ("project", project)):
        if f is not None and not callable(f):
            raise TypeError(f"{name} must be callable or None.")
    if x_init is not None and not isinstance(x_init, torch.Tensor):
        raise TypeError(f"x_init must be a tensor [B, *dims] or None, got {type(x_init).__name__}.")
    shape = tuple(x_init.shape) if shape is None and x_init is not None else check_shape(shape)
    pilot_device = generator.device if device is None and generator is not None else device
    fit = None  # the data's fit read off the score, x_T's law under sigma_max="auto"
    if isinstance(options.get("sigma_max"), str):  # "auto": from the data's scale read off the score, first
        if options["sigma_max"] != "auto":
            check_option("sigma_max", options["sigma_max"], sde, None)  # refused in one line
        level, fit = choose_start(score_fn, sde, shape[1:], generator, dtype, pilot_device, n=pilot_size(shape))
        options = {**options, "sigma_max": level}
    pilots: dict = {}  # the pilot runs of this call, so that the window's pilot is also the stop level's
    floor = window_floor(options.get("stochastic_below"))  # refuses a string that is not "auto[:FLOOR]" in one line
    pilot = options
    if floor is not False and options.get("stochastic_above") is not None:
        raise ValueError("stochastic_above sets a band's lower edge, and the window read off the score "
                         "(stochastic_below='auto') is read without one; pass a number for stochastic_below.")
    if floor is not False:  # read off the score; the stop level is then read on the same pilot (the window's
        # PILOT_WINDOW, not the window read: the same level on 480 of 486 mixtures and draws, docs/samplers.md,
        # "A floor under the window")
        pilot = {**options, "stochastic_below": PILOT_WINDOW}
        options = {**options, "stochastic_below": choose_stochastic_below(
            score_fn, sde, shape, method, nfe, options, generator, dtype, pilot_device, floor=floor, memo=pilots,
            fit=fit)}
    start = auto_start(options.get("sigma_min"))
    if start is not False:  # chosen for this score
        options = {**options, "sigma_min": choose_sigma_min(
            score_fn, sde, shape, method, nfe, pilot, generator, dtype, pilot_device, start=start, memo=pilots,
            fit=fit)}
    if as_default and nfe in WIDE_BUDGETS and start is not False:  # wide: the next row's method, same pilot
        wide = choose_sigma_min(score_fn, sde, shape, method, nfe, pilot, generator, dtype, pilot_device, start=start,
                                memo=pilots, fit=fit, climb=R_TARGET)
        if wide >= WIDE_END:
            method, grid = default_method(WIDE_BUDGETS.stop), "ddpm"
            options = {"sigma_max": options["sigma_max"], "sigma_min": wide}
    if isinstance(grid, str) and grid == "auto":  # wide data end high: there DDPM's levels win (stop.WIDE_END)
        stop = options.get("sigma_min", options_of(method).get("sigma_min"))
        if stop is None:
            raise ValueError(f"grid='auto' picks the grid by the level a method stops at; {method!r} has no "
                             "sigma_min: name a grid ('uniform', 'log_snr', 'karras', 'ddpm').")
        grid = "ddpm" if stop >= WIDE_END else None
    if as_default and nfe in FINISH_BUDGETS and start is not False and method == "unipc" \
            and options["sigma_min"] >= FINISH_END and x_init is None:  # wide: the finish chosen by the flow
        finish = choose_finish(score_fn, sde, shape, nfe, options, grid, generator, dtype, pilot_device)
        if finish is not None:
            options, grid = finish, "ddpm"
    return _run(score_fn, sde, shape, method, nfe, options, generator, dtype, device, x_init, grid, project, progress,
                callback, fit)


def _run(score_fn, sde, shape, method, nfe, options, generator, dtype, device, x_init, grid, project, progress,
         callback, fit=None) -> SampleResult:
    """``sample()`` once its options are resolved (no "auto" left; the pilots call it too): the grid, x_T (from
    ``fit``, a ``scale.DataFit``, where one was read), the loop, the result in data units."""
    fn = METHODS[method]
    opts = _bind(method, sde, options)
    steps = fn.steps(nfe, opts)
    device = generator.device if device is None and generator is not None else device
    own_grid = not isinstance(grid, torch.Tensor)  # a tensor of the caller's: the state at its last time, as it is
    if isinstance(grid, str) and grid == "optimized":  # searched once per (score, sde, method, nfe), cached
        grid = optimized_grid(score_fn, sde, nfe, method, dims=shape[1:], dtype=dtype, device=device, fit=fit,
                              **options)
    times = _grid(fn, sde, steps, opts, grid)
    check_representable(sde, dtype)
    if x_init is not None:
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {shape}.")
        x = x_init.to(dtype=dtype, device=device)
    else:
        x = _start(sde, fn, opts, times, fit, shape, generator, dtype, device)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(times) - 1, desc=method, disable=not sys.stderr.isatty(), leave=False)
    hook = _Hook(project, callback, bar)
    counted = CountedScore(score_fn, nfe)
    try:
        with torch.no_grad():
            x = fn(counted, sde, hook.project(x, times[0].to(dtype=dtype, device=x.device)), times, generator, hook,
                   **opts)
    except BudgetExceeded:
        raise ValueError(f"method {method!r} with options {options} needs more than nfe={nfe} score evaluations"
                         " (an adaptive solver: raise nfe or loosen rtol/atol).") from None
    finally:
        if bar is not None:
            bar.close()
    if own_grid and value(fn.noisy_end, opts) and float(times[-1]) > 0:  # in data units: x0 + sigma_min eps
        m_end = float(sde.marginal_scale(times[-1]))
        x = x if m_end == 1.0 else x / m_end
    if not bool(torch.isfinite(x).all()):  # one check at the end, never inside the loop
        raise ValueError(f"sampling with {method!r} in {dtype} produced non-finite values: the score returned NaN "
                         "or inf, or a step size or the process is too large for this dtype (try float32/64).")
    return SampleResult(x=x, nfe=counted.count, steps=hook.steps, method=method, options=dict(options), times=times)


class _CallableModule(types.ModuleType):
    """``scorelab.samplers()`` lists the methods while ``scorelab.samplers.grids`` stays importable."""

    def __call__(self) -> list[str]:
        return samplers()


sys.modules[__name__].__class__ = _CallableModule
