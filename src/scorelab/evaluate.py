"""How close a trained run is to its data: ``evaluate(run, data)`` and ``scorelab evaluate RUN --data HELDOUT.npy``.

For vector data [N, d] (held out from training; for a built-in synthetic data set, fresh draws when no file is
given):

    nll        -log p_eps(x) of the held-out points by the probability-flow ODE (nats/dim, in data units: the
               log-determinant of the run's data scaler is added back)
    sw, mmd    sliced Wasserstein-2 and MMD^2 (scorelab.metrics) between model samples and half of the held-out
               points, each with its floor: the same distance between the two halves of the held-out data,
               so a model at its floor is as close as a second data set of that size would be
    moment_kl, mode_tv   when the run's data set is a built-in Gaussian-mixture toy (ring, grid, two_modes):
               against the exact mixture, with the floor of an exact sample set of the same size

The samples come from ``scorelab.samplers.sample`` with the default method unless ``method`` is given.
Returns a dict of rows ``{"metric", "model", "floor", "vs floor"}`` plus the settings (``vs floor`` is
model / floor for the distances and model - floor, the gap in nats/dim, for the NLL, whose floor is the exact
-log p_eps when the data set is a built-in mixture); ``write_json`` saves it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .metrics import mixture_error, mmd, sliced_wasserstein

MMD_MAX = 2000  # MMD is quadratic in the number of points


def _held_out(run, data, n_default: int, seed: int) -> tuple[torch.Tensor, str]:
    from .data import TOYS, get_dataset, load_array

    if data is None:
        name = run.config["data"].get("name")
        if name not in TOYS:
            source = run.config["data"].get("path") or name
            raise ValueError(f"the run in {str(run.run_dir)!r} was trained on {source!r}, which has no held-out "
                             "split; give held-out data with --data HELDOUT.npy (same shape as the training data).")
        # fresh draws of the synthetic generator: a seed the training data did not use
        g = torch.Generator().manual_seed(int(run.config["data"].get("seed", 0)) + 1 + seed)
        return get_dataset(name, n=n_default, generator=g).float(), f"{name} (fresh draws)"
    if isinstance(data, torch.Tensor):
        x, label = data, "tensor"
    else:
        x, label = torch.as_tensor(load_array(data)), str(data)
    x = x.float()
    if x.ndim < 2 or tuple(x.shape[1:]) != tuple(run.data_shape):
        raise ValueError(f"held-out data {label!r} has shape {list(x.shape)}; the run was trained on examples of "
                         f"shape {list(run.data_shape)}, so give an array [N, {', '.join(map(str, run.data_shape))}].")
    if x.shape[0] < 4:
        raise ValueError(f"held-out data {label!r} has {x.shape[0]} examples; give at least 4 (two halves of 2).")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"held-out data {label!r} contains NaN/inf; drop those rows first.")
    return x, label


def evaluate(run, data=None, *, n: int = 4000, nll_n: int = 500, method: str | None = None, nfe: int | None = None,
             seed: int = 0, **options) -> dict:
    """Measure ``run`` (a Run or a run directory) against held-out ``data`` (a path, a tensor, or None for fresh
    draws of a built-in synthetic set). n: held-out points used (and samples drawn, n // 2); nll_n: points
    whose likelihood is computed (0 skips the NLL); method/nfe/options: the sampler (default: scorelab's)."""
    from .data import toy_mixture
    from .likelihood import log_likelihood
    from .run import Run, load
    from .samplers import DEFAULT_NFE, default_method, sample

    if not isinstance(run, Run):
        run = load(run)
    if len(run.data_shape) != 1:
        raise ValueError(f"evaluate works on vector data [N, d]; this run's examples have shape "
                         f"{list(run.data_shape)} (images: use scorelab likelihood --bits-per-dim).")
    x, label = _held_out(run, data, n, seed)
    g = torch.Generator().manual_seed(seed)
    x = x[torch.randperm(len(x), generator=g)[:n]]
    half = len(x) // 2
    a, b = x[:half], x[half:2 * half]
    nfe = DEFAULT_NFE if nfe is None else nfe
    kw = {"method": default_method(nfe) if method is None else method, "nfe": nfe}
    res = sample(run.score, run.sde, (half, *run.data_shape), generator=torch.Generator().manual_seed(seed + 1),
                 **kw, **options)
    samples = run.to_data(res.x)
    finite = torch.isfinite(samples).all(1)
    rows = []

    def row(metric, model, floor):
        rows.append({"metric": metric, "model": model, "floor": floor,
                     "vs floor": model / floor if floor and floor > 0 else float("nan")})

    if nll_n:
        xs = x[:nll_n]
        y = run.to_model(xs)
        ll = log_likelihood(run.score, run.sde, y, eps=1e-3, rtol=1e-4, atol=1e-4)
        nll = ll.nll.double()
        if run.scaler is not None:
            nll = nll - run.scaler.log_abs_det(xs.shape)
        nll_dim = float(nll.mean()) / xs[0].numel()
        name = run.config["data"].get("name")
        truth = _true_nll(name, xs, run.sde) if name is not None and run.scaler is None else None
        rows.append({"metric": "nll (nats/dim)", "model": nll_dim, "floor": truth,
                     "vs floor": float("nan") if truth is None else nll_dim - truth})
    gs = torch.Generator().manual_seed(seed + 2)
    sw_model = sliced_wasserstein(samples[finite], b, generator=gs)
    sw_floor = sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(seed + 2))
    row("sliced W2", sw_model, sw_floor)
    m = min(half, MMD_MAX)
    row("MMD^2", mmd(samples[finite][:m], b[:m]), mmd(a[:m], b[:m]))
    name = run.config["data"].get("name")
    try:
        gmm = toy_mixture(name) if name is not None else None
    except ValueError:
        gmm = None
    if gmm is not None:
        err = mixture_error(samples, gmm)
        fl = mixture_error(gmm.sample(half, generator=torch.Generator().manual_seed(seed + 3)).float(), gmm)
        row("moment KL", err.moment_kl, fl.moment_kl)
        row("mode TV", err.mode_tv, fl.mode_tv)
    return {"run": str(run.run_dir), "data": label, "n_heldout": len(x), "n_samples": half,
            "sampler": kw["method"], "nfe": res.nfe, "nonfinite_samples": int((~finite).sum()),
            "rows": rows}


def _true_nll(name, xs, sde):
    """The exact -log p_eps (nats/dim) when the data set is a built-in mixture, else None."""
    from .data import toy_mixture

    try:
        gmm = toy_mixture(name)
    except (ValueError, KeyError, TypeError):
        return None
    t = torch.full((len(xs),), 1e-3, dtype=torch.float64)
    return float(-gmm.log_prob(xs.double(), t, sde).mean()) / xs[0].numel()


def write_json(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float))
    return path
