"""A time grid optimised for one score, process, method and budget (``sample(..., grid="optimized")``), in the spirit
of "Align Your Steps" (Sabour et al. 2024) but minimising the global error of the method's own trajectories. From a
probe batch of x_T (drawn with ``seed``), a reference solution of the probability-flow ODE between the same ends is
computed once (DPM-Solver++(3M), ``reference_nfe`` steps, log-SNR grid); the interior times of the method's default grid
are then moved, one at a time in log sigma (sigma = s/m), towards a neighbour by a fraction h of the gap (h = 1/2, 1/4,
... over ``sweeps`` sweeps), keeping a move when the mean distance E||x - x_ref|| between the method's samples and the
reference drops (``_distance``). The ends (the method's sigma_max and sigma_min) are kept, so the result never loses to
the default grid on the probe batch; it is deterministic given ``seed``.

The search costs about 2 ``sweeps`` (steps - 1) runs of the method on the probe batch plus the reference, evaluations
not counted in ``sample``'s budget: the grid is computed once per (score, process, method, nfe, options, ends) and
cached in memory (per score owner: a function, or the object of a bound method such as a ``Run``) and, with
``cache_dir``, in a small JSON file written atomically (an existing file is read, never overwritten). Only deterministic
methods whose grid ends above t = 0 are supported (the ODE solvers but ``edm_heun``). Measured in docs/samplers.md,
"Optimised time grids".
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import weakref
from pathlib import Path

import torch

from .grids import log_snr_uniform

ODE_METHODS = ("dpm_solver", "unipc", "deis", "ipndm", "lms", "ode")
_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """E ||a - b||: under the coupling by a common x_T an upper bound on W1 between the two sample laws; the mean
    squared distance (W2^2) was dominated by the few trajectories that end in another mode (docs/samplers.md)."""
    return float((a - b).double().flatten(1).norm(dim=1).mean())


def optimized_grid(score_fn, sde, nfe: int, method: str | None = None, *, dims, probe: int = 256, seed: int = 0,
                   sweeps: int = 3, reference_nfe: int = 200, cache_dir: str | Path | None = None, device=None,
                   dtype: torch.dtype = torch.float32, fit=None, **options) -> torch.Tensor:
    """The grid (float64 times, decreasing) for ``sample(score_fn, sde, (B, *dims), method, nfe, grid=..., **options)``
    that minimises the distance to the exact flow on ``probe`` draws of x_T (see the module docstring); ``fit``: the
    data's fit x_T is drawn from (``scale.DataFit``; read on the probe where sigma_max is "auto")."""
    from . import METHODS, _bind, _grid, _start, default_sampler, sample
    from ._common import sigma_of

    if method is None:
        method, defaults = default_sampler(nfe)
        defaults.pop("grid", None)  # the grid searched here replaces the default's
        options = {**defaults, **options}
    if method not in ODE_METHODS or options.get("eta", 0.0) > 0 or options.get("solver") == "dopri5":
        raise ValueError(f"an optimized grid needs a deterministic fixed-step method, one of {list(ODE_METHODS)} "
                         f"(dpm_solver with eta=0), got {method!r}; pass grid='log_snr' or 'karras' for the others.")
    if not all(isinstance(v, int) and v >= 1 for v in (probe, sweeps, reference_nfe)) or not isinstance(seed, int):
        raise ValueError("probe, sweeps and reference_nfe must be positive integers and seed an integer.")
    from .scale import choose_start
    from .stop import PILOT, auto_start, choose_sigma_min

    if options.get("sigma_max") == "auto":  # resolved once, on the probe
        g = torch.Generator(device or "cpu").manual_seed(seed)
        level, fit = choose_start(score_fn, sde, tuple(dims), g, dtype, device, n=min(probe, PILOT))
        options = {**options, "sigma_max": level}
    start = auto_start(options.get("sigma_min"))
    if start is not False:  # resolved once, on the probe
        g = torch.Generator(device or "cpu").manual_seed(seed)
        options = {**options, "sigma_min": choose_sigma_min(score_fn, sde, (probe, *dims), method, nfe, options, g,
                                                            dtype, device, start=start, fit=fit)}
    fn = METHODS[method]
    opts = _bind(method, sde, options)
    base = _grid(fn, sde, fn.steps(nfe, opts), opts, None)
    if float(base[-1]) <= 0:
        raise ValueError(f"method {method!r} with these options ends at t = 0; an optimized grid needs an end "
                         "above 0 (e.g. method='ode' with eps > 0).")
    dims = tuple(int(d) for d in dims)
    # the ends of the grid the search starts from are part of the key: a changed default (e.g. a method's sigma_max)
    # makes a new entry rather than reusing a grid searched between other ends
    # version 3: dpm_solver's 2M step took the midpoint form by default (a default the options below do not name);
    # 4: x_T drawn from the data's fit where one was read ("fit": its mean's norm and its std)
    spec = json.dumps({"version": 4, "ends": [float(base[0]), float(base[-1])], "method": method, "nfe": nfe,
                       "fit": None if fit is None else [float(fit.mean.norm()), fit.std],
                       "sde": repr(sde), "dims": dims, "probe": probe,
                       "seed": seed, "sweeps": sweeps, "reference_nfe": reference_nfe, "dtype": str(dtype),
                       "score": getattr(score_fn, "__qualname__", type(score_fn).__name__),
                       "options": {k: repr(v) for k, v in sorted(options.items())}}, sort_keys=True)
    owner = getattr(score_fn, "__self__", score_fn)
    try:
        memo = _MEMO.setdefault(owner, {})
    except TypeError:  # not weak-referenceable: no memory cache
        memo = {}
    if spec in memo:
        return memo[spec].clone()
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"grid-{method}-nfe{nfe}-{hashlib.sha1(spec.encode()).hexdigest()[:12]}.json"
        if path.exists():
            stored = json.loads(path.read_text())
            if stored.get("spec") == spec:
                memo[spec] = torch.tensor(stored["times"], dtype=torch.float64)
                return memo[spec].clone()
            path = None  # someone else's file under our name: leave it alone

    g = torch.Generator().manual_seed(seed)
    x_T = _start(sde, fn, opts, base, fit, (probe, *dims), g, dtype, None).to(device)
    ref_grid = log_snr_uniform(sde, reference_nfe, float(base[-1]), float(base[0]))
    x_ref = sample(score_fn, sde, None, "dpm_solver", reference_nfe, x_init=x_T, grid=ref_grid, order=3,
                   lower_order_final=False).x

    def error(times):
        return _distance(sample(score_fn, sde, None, method, nfe, x_init=x_T, grid=times, **options).x, x_ref)

    u = sigma_of(sde, base).log()  # log sigma, decreasing; the ends stay
    best, h = error(base), 0.5
    for _ in range(sweeps):
        for i in range(1, len(u) - 1):
            for j in (i - 1, i + 1):
                trial = u.clone()
                trial[i] = u[i] + h * (u[j] - u[i])
                times = torch.cat([base[:1], sde.t_from_std_ratio(trial[1:-1].exp()), base[-1:]])
                if bool((times[1:] < times[:-1]).all()) and (e := error(times)) < best:
                    best, u = e, trial
                    break
        h /= 2
    times = torch.cat([base[:1], sde.t_from_std_ratio(u[1:-1].exp()), base[-1:]])
    memo[spec] = times
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".grid-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"spec": spec, "times": times.tolist(), "probe_distance": best}, f)
        try:
            os.link(tmp, path)  # atomic, and fails rather than replace a file that appeared meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return times.clone()
