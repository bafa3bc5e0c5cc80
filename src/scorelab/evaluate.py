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
import math
from pathlib import Path

import torch

from .metrics import mixture_error, mmd, sliced_wasserstein

MMD_MAX = 2000  # MMD is quadratic in the number of points
# rtol = atol of the image bits/dim solve. Song et al. 2021 use 1e-5; on 100 digits test images (same noise and
# probes) 1e-4 moved bits/dim by +0.0004 (a sixtieth of the standard error over the images) at half the
# evaluations (368 vs 770), 1e-3 by +0.0024 at a fifth (docs/likelihood.md).
TOL = 1e-4
FLOOR_DRAWS = 10  # train subsets averaged for the Frechet distance's floor


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
             seed: int = 0, divergence: str = "hutchinson", tol: float = TOL, batch_size: int = 100,
             progress: bool = False, cache=None, classifier_steps: int | None = None, **options) -> dict:
    """Measure ``run`` (a Run or a run directory) against held-out ``data`` (a path, a tensor, or None for fresh
    draws of a built-in synthetic set, or the test split of a built-in image set). n: held-out points used
    (vectors: samples drawn, n // 2; images: samples drawn, at most the test set's size); nll_n: points whose
    likelihood is computed (0 skips it); method/nfe/options: the sampler (default: scorelab's).
    Images [C, H, W] only: ``divergence`` of the bits/dim ("hutchinson" or "exact"), ``tol`` the ODE solver's
    rtol = atol, ``batch_size`` images per likelihood solve, ``cache`` the reference classifier's folder,
    ``classifier_steps`` its training steps, ``progress`` progress bars (see ``evaluate_images``)."""
    from .data import toy_mixture
    from .likelihood import log_likelihood
    from .run import Run, load
    from .samplers import DEFAULT_NFE, default_method, sample

    if not isinstance(run, Run):
        run = load(run)
    if len(run.data_shape) == 3:
        return evaluate_images(run, data, n=n, nll_n=nll_n, method=method, nfe=nfe, seed=seed, divergence=divergence,
                               tol=tol, batch_size=batch_size, progress=progress, cache=cache,
                               classifier_steps=classifier_steps, **options)
    if len(run.data_shape) != 1:
        raise ValueError(f"evaluate works on vector data [N, d] and images [N, C, H, W]; this run's examples have "
                         f"shape {list(run.data_shape)}.")
    x, label = _held_out(run, data, n, seed)
    g = torch.Generator().manual_seed(seed)
    x = x[torch.randperm(len(x), generator=g)[:n]]
    half = len(x) // 2
    a, b = x[:half], x[half:2 * half]
    nfe = DEFAULT_NFE if nfe is None else nfe
    kw = {"method": method, "nfe": nfe}  # None: sample()'s default at the budget, the user's options over it
    sampler = default_method(nfe) if method is None else method
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
            "sampler": sampler, "nfe": res.nfe, "nonfinite_samples": int((~finite).sum()),
            "rows": rows}


# ---------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------

def _image_sets():
    from .data import _IMAGE_SETS

    return _IMAGE_SETS


def _test_images(run, data) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """(x [N, C, H, W] in data units, labels or None, label) of the test data of an image run."""
    from .data import load_array

    name = run.config["data"].get("name")
    if data is None:
        if run.config["data"].get("path") is not None or name not in _image_sets():
            source = run.config["data"].get("path") or name
            raise ValueError(f"the run in {str(run.run_dir)!r} was trained on {source!r}, which has no built-in test "
                             "split; give held-out images with --data TEST.npy [N, C, H, W] in data units.")
        test = _image_sets()[name](split="test")
        return test.x, test.y, f"{name} (test split)"
    if isinstance(data, torch.Tensor):
        x, label = data, "tensor"
    else:
        x, label = torch.as_tensor(load_array(data)), str(data)
    return x.float(), None, label


def quantize(x: torch.Tensor, value_range: tuple[float, float], levels: int | None,
             dequantized: bool = False) -> torch.Tensor:
    """Clip x to ``value_range`` and round it to the nearest of ``levels`` equally spaced values (no rounding
    when levels is None): samples made comparable with quantised data. ``dequantized``: x models v = k + U
    (a run trained with data.dequantize), whose level is floor(v), i.e. the nearest level to v - step / 2."""
    lo, hi = value_range
    if levels is None:
        return x.clamp(lo, hi)
    step = (hi - lo) / (levels - 1)
    x = (x - step / 2 if dequantized else x).clamp(lo, hi)
    return lo + torch.round((x - lo) / step) * step


def histogram_bpd(train: torch.Tensor, test: torch.Tensor, levels: int) -> float:
    """Bits/dim of integer test images under independent per-pixel categorical distributions fitted on the
    train images (add-one smoothing): the baseline a model of pixel correlations must beat."""
    tr, te = train.long().flatten(1), test.long().flatten(1)
    counts = torch.nn.functional.one_hot(tr, levels).sum(0).double() + 1.0  # [D, levels]
    logp = torch.log2(counts / counts.sum(1, keepdim=True))
    return float(-logp.gather(1, te.T).mean())


def image_bits_per_dim(run, x: torch.Tensor, *, divergence: str = "hutchinson", tol: float = TOL,
                       batch_size: int = 100, seed: int = 0, eps: float = 1e-5, progress: bool = False) -> dict:
    """Bits/dim of quantised images x [N, C, H, W] (integers 0..levels-1 in data units) under the run, by the
    probability-flow ODE (scorelab.likelihood) in batches of ``batch_size``, with uniform dequantisation
    v = x + U (docs/likelihood.md). The dequantisation noise and the Hutchinson probes come from two
    generators seeded by ``seed``, so an exact and a Hutchinson evaluation see the same U. Returns
    {"bpd", "se" (standard error over the images), "per_image" [N], "seconds", "nfe", "divergence"}."""
    import time

    from tqdm.auto import tqdm

    from .likelihood import dequantize, log_likelihood, nll_to_bpd

    levels = run.data_levels()
    if levels is None:
        raise ValueError("bits/dim needs quantised data; this run's data has no recorded number of levels.")
    if run.scaler is None:
        a, b = 1.0, 0.0
    else:
        zero = torch.zeros((1, *run.data_shape), dtype=torch.float64)
        b = run.scaler.forward(zero)[0]
        a = run.scaler.forward(zero + 1)[0] - b
    dev = run.device
    g_deq = torch.Generator().manual_seed(seed)
    g_probe = torch.Generator(device=dev).manual_seed(seed + 1)
    scaler = (torch.as_tensor(a, dtype=torch.float32) * levels, torch.as_tensor(b, dtype=torch.float32))
    D = x[0].numel()
    out, nfe = [], 0
    start = time.perf_counter()
    T = float(run.sde.T)
    with tqdm(total=len(x), desc=f"bits/dim ({divergence})", unit="img", disable=not progress or None,
              leave=False) as bar:
        for lo in range(0, len(x), batch_size):
            xb = x[lo:lo + batch_size]
            y, log_jac = dequantize(xb, scaler=scaler, generator=g_deq, levels=levels)
            done, size = bar.n, len(xb)

            def advance(t, done=done, size=size):
                target = done + size * min(max((t - eps) / (T - eps), 0.0), 1.0)
                if target > bar.n:
                    bar.update(target - bar.n)

            res = log_likelihood(run.score, run.sde, y.to(dev), generator=g_probe, divergence=divergence,
                                 rtol=tol, atol=tol, eps=eps, callback=advance if progress else None)
            out.append(nll_to_bpd(res.nll.double().cpu(), log_jac.double(), D))
            nfe += res.nfe
            bar.update(done + size - bar.n)
    bpd = torch.cat(out)
    se = float(bpd.std() / len(bpd) ** 0.5) if len(bpd) > 1 else float("nan")
    return {"bpd": float(bpd.mean()), "se": se, "per_image": bpd.tolist(), "n": len(bpd),
            "seconds": time.perf_counter() - start, "nfe": nfe, "divergence": divergence, "tol": tol}


def evaluate_images(run, data=None, *, n: int = 4000, nll_n: int = 500, method: str | None = None,
                    nfe: int | None = None, seed: int = 0, divergence: str = "hutchinson", tol: float = TOL,
                    batch_size: int = 100, sample_batch: int = 500, progress: bool = False, cache=None,
                    classifier_steps: int | None = None, **options) -> dict:
    """An image run against its test split (or ``data``):

        bits/dim    of nll_n test images (``image_bits_per_dim``), with its standard error; baselines: the
                    per-pixel histogram fitted on the train split, and the uniform distribution (log2 levels)
        Frechet distance   between Gaussian fits of the pooled features of the data set's reference classifier
                    (``scorelab.classifier.reference_classifier``: trained on the train split, cached, its test
                    accuracy recorded) on m = min(n, test size) samples and m test images; floor: m train
                    images vs the same test images, the mean over FLOOR_DRAWS train subsets (spread in
                    ``frechet_floor_draws``; a model can score below it by chance); baseline: m draws of a
                    Gaussian with the train images' mean and covariance. Samples and baseline are clipped to
                    the data's range and quantised like it.
        confidence, entropy   the classifier's mean top probability and mean predictive entropy (nats) on the
                    samples, beside the same on the test images (floor column)
        class TV    total variation between the predicted-class shares of the samples and of the test images;
                    floor: train images vs test images
    """
    from tqdm.auto import tqdm

    from .classifier import features, predict, reference_classifier
    from .metrics import frechet_distance
    from .samplers import DEFAULT_NFE, default_method, sample

    x_test, y_test, label = _test_images(run, data)
    run.check_data(x_test, "test data")
    if x_test.shape[0] < 2:
        raise ValueError(f"test data {label!r} has {x_test.shape[0]} image(s); give at least 2.")
    for v, what in ((n, "n"), (batch_size, "batch_size"), (sample_batch, "sample_batch")):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{what} must be a positive integer, got {v!r}.")
    if divergence not in ("hutchinson", "exact"):
        raise ValueError(f"divergence must be 'hutchinson' or 'exact', got {divergence!r}.")
    name = run.config["data"].get("name") if run.config["data"].get("path") is None else None
    levels, rng = run.data_levels(), run.data_range()
    if rng is None:
        rng = (float(x_test.min()), float(x_test.max()))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x_test), generator=g)
    train = _image_sets()[name](split="train") if name in _image_sets() else None
    rows, result = [], {"run": str(run.run_dir), "data": label, "n_test": int(len(x_test))}
    info = getattr(run, "data_info", None)
    if data is None and isinstance(info, dict) and info.get("split") not in (None, "train"):
        result["warning"] = (f"the run was trained on the {info['split']!r} split, which holds the test images: "
                             "these numbers are not held out (train with data.split=train)")

    # ---- bits/dim
    if nll_n:
        xs = x_test[order[:nll_n]]
        integer = levels is not None and bool((xs == xs.round()).all() & (xs >= 0).all() & (xs <= levels - 1).all())
        if not integer:
            raise ValueError(f"bits/dim needs the test images as integers 0..{(levels or 256) - 1} in data units; "
                             f"{label!r} is not (or pass nll_n=0 / --nll-n 0 to skip bits/dim).")
        bpd = image_bits_per_dim(run, xs, divergence=divergence, tol=tol, batch_size=batch_size, seed=seed,
                                 progress=progress)
        hist = histogram_bpd(train.x, xs, levels) if train is not None else None
        uniform = math.log2(levels)
        result["bits_per_dim"] = {**{k: v for k, v in bpd.items() if k != "per_image"}, "histogram": hist,
                                  "uniform": uniform}
        result["bits_per_dim_per_image"] = bpd["per_image"]
        rows.append({"metric": f"bits/dim ({divergence}, n={bpd['n']})", "model": bpd["bpd"], "+-": bpd["se"],
                     "floor": None, "baseline": hist, "vs floor": float("nan")})

    # ---- samples
    m = min(n, len(x_test))
    nfe = DEFAULT_NFE if nfe is None else nfe
    kw = {"method": method, "nfe": nfe}  # None: sample()'s default at the budget, the user's options over it
    sampler = default_method(nfe) if method is None else method
    gs = torch.Generator(device=run.device).manual_seed(seed + 1)
    parts, used = [], 0
    with tqdm(total=m, desc=f"sample {sampler}", unit="img", disable=not progress or None, leave=False) as bar:
        for lo in range(0, m, sample_batch):
            k = min(sample_batch, m - lo)
            res = sample(run.score, run.sde, (k, *run.data_shape), generator=gs, **kw, **options)
            parts.append(run.to_data(res.x).float().cpu())
            used += res.nfe
            bar.update(k)
    raw = torch.cat(parts)
    finite = torch.isfinite(raw).flatten(1).all(1)
    samples = quantize(torch.nan_to_num(raw, nan=rng[0]), rng, levels, dequantized=run.dequantized)
    result.update({"n_samples": m, "sampler": sampler, "nfe": used, "nonfinite_samples": int((~finite).sum())})
    result["samples_range"] = [float(raw[finite].min()), float(raw[finite].max())] if bool(finite.any()) else None

    # ---- the reference classifier's view
    if train is None:
        result["classifier"] = None
        result["note"] = ("no Frechet distance: the run's data is not a built-in labelled image set "
                          f"({sorted(_image_sets())}), so there is no reference classifier")
    else:
        clf, info = reference_classifier(name, steps=classifier_steps, cache=cache, progress=progress)
        result["classifier"] = info
        test_m = x_test[order[:m]]
        # the floor is itself a noisy estimate (one train subset of m gave 0.39 to 1.19 on digits, m = 299):
        # average it over FLOOR_DRAWS subsets and report their spread
        subsets = [torch.randperm(len(train.x), generator=g)[:m] for _ in range(FLOOR_DRAWS)]
        train_m = train.x[subsets[0]]
        flat = train.x.flatten(1).double()
        mean, cov = flat.mean(0), torch.cov(flat.T)
        w, v = torch.linalg.eigh(cov)
        z = torch.randn(m, flat.shape[1], generator=g, dtype=torch.float64)
        gauss = (mean + (z * w.clamp_min(0).sqrt()) @ v.T).float().reshape(m, *run.data_shape)
        gauss = quantize(gauss, rng, levels)
        used = torch.unique(torch.cat(subsets))
        f_used = features(clf, train.x[used])
        where = torch.full((len(train.x),), -1, dtype=torch.long)
        where[used] = torch.arange(len(used))
        f_test = features(clf, test_m)
        f_model, f_base = features(clf, samples), features(clf, gauss)
        floors = torch.tensor([frechet_distance(f_used[where[idx]], f_test) for idx in subsets], dtype=torch.float64)
        fd_model, fd_floor = frechet_distance(f_model, f_test), float(floors.mean())
        result["frechet_floor_draws"] = {"n_draws": FLOOR_DRAWS, "mean": fd_floor, "std": float(floors.std()),
                                         "min": float(floors.min()), "max": float(floors.max())}
        rows.append({"metric": f"Frechet distance (classifier, n={m})", "model": fd_model, "+-": None,
                     "floor": fd_floor, "baseline": frechet_distance(f_base, f_test), "vs floor": fd_model / fd_floor})
        p_model, p_test, p_train = predict(clf, samples).cpu(), predict(clf, test_m).cpu(), predict(clf, train_m).cpu()

        def entropy(p):
            return float(-(p * torch.log(p.clamp_min(1e-12))).sum(1).mean())

        def shares(p):
            return torch.bincount(p.argmax(1), minlength=p.shape[1]).double() / len(p)

        conf = (float(p_model.max(1).values.mean()), float(p_test.max(1).values.mean()))
        ent = (entropy(p_model), entropy(p_test))
        tv = (0.5 * float((shares(p_model) - shares(p_test)).abs().sum()),
              0.5 * float((shares(p_train) - shares(p_test)).abs().sum()))
        rows.append({"metric": "classifier confidence (test: floor)", "model": conf[0], "+-": None, "floor": conf[1],
                     "baseline": float(predict(clf, gauss).max(1).values.mean()), "vs floor": conf[0] / conf[1]})
        rows.append({"metric": "classifier entropy, nats (test: floor)", "model": ent[0], "+-": None, "floor": ent[1],
                     "baseline": entropy(predict(clf, gauss).cpu()),
                     "vs floor": ent[0] / ent[1] if ent[1] > 0 else float("nan")})
        rows.append({"metric": "class-share TV vs test", "model": tv[0], "+-": None, "floor": tv[1],
                     "baseline": 0.5 * float((shares(predict(clf, gauss).cpu()) - shares(p_test)).abs().sum()),
                     "vs floor": tv[0] / tv[1] if tv[1] > 0 else float("nan")})
        if y_test is not None:
            result["classifier"] = {**info, "accuracy_on_evaluated_test": float(
                (p_test.argmax(1) == y_test[order[:m]]).double().mean())}
    result["rows"] = rows
    return result


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
