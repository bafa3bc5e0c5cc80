"""Plotting primitives for the notes' figures: score fields, perturbed densities, samples, paths, images.

Every function takes tensors or arrays (torch or numpy) and plain callables, draws one matplotlib Figure,
saves it as a PNG when ``path`` is given, and returns it. Nothing here trains or samples: the caller runs the
experiment and hands over the numbers. Callables follow the library's seams:

    score_fn(x [B, 2], t [B]) -> [B, 2]        a score, e.g. gmm.score_fn(sde) or a trained network
    log_prob_fn(x [B, 2], t [B]) -> [B]        a log-density of p_t, e.g. lambda x, t: gmm.log_prob(x, t, sde)
    energy_fn(x [B, 2]) -> [B]                 an energy E(x), density proportional to exp(-E(x))

Figures are built with ``matplotlib.figure.Figure`` directly (not pyplot), so none is kept alive in pyplot's
global registry and no display is ever needed.

    vector_field        quiver of a 2-D score at time t, optionally over the density p_t
    score_error_map     data score | learned score | |s_theta - s| with density contours, plus the error numbers
    density_panels      p_t (and optionally its score) along a noise ladder, one panel per time
    samples_scatter     a grid of 2-D scatter plots (several samplers vs the true samples)
    trajectories        particle paths in the plane and one coordinate against time
    image_grid          a batch [n, C, H, W] tiled into one image; save_image_grid writes it with Pillow
    loss_curves         training curves (step, loss) of several runs
    bar_weights         measured mixture weights of several samplers beside the true weights
    energy_landscape    contours of an energy, optionally with samples on top
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ._extras import require

matplotlib = require("matplotlib", "plots", "scorelab.plots (figures, the demo, .png output)")

# Files only. Leave a backend alone that a user's session (e.g. a notebook) already chose through pyplot.
if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LogProbFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DPI = 100
TITLE_SIZE = 12
LABEL_SIZE = 10

__all__ = [
    "vector_field",
    "score_error_map",
    "density_panels",
    "samples_scatter",
    "trajectories",
    "grid_array",
    "image_grid",
    "save_image_grid",
    "save_images",
    "loss_curves",
    "bar_weights",
    "energy_landscape",
]


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------

def _np(a, name: str) -> np.ndarray:
    """A tensor, array or nested sequence as a float64 numpy array (detached, on the CPU)."""
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a torch tensor or numpy array of numbers, got {type(a).__name__}.") from e


def _points2d(a, name: str) -> np.ndarray:
    x = _np(a, name)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"{name} must have shape [n, 2] (2-D points), got {tuple(x.shape)}; "
                         f"project higher-dimensional data to two coordinates first, e.g. x[:, :2].")
    return x


def _lim(lim, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in lim)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a pair (low, high), got {lim!r}.") from e
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name} must be finite with low < high, got {lim!r}.")
    return lo, hi


def _grid(xlim, ylim, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """An n x n grid over the box: points [n*n, 2] (row-major over y, then x) and the meshgrids X, Y [n, n]."""
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"grid resolution must be an integer >= 2, got {n!r}.")
    (x0, x1), (y0, y1) = _lim(xlim, "xlim"), _lim(ylim, "ylim")
    X, Y = np.meshgrid(np.linspace(x0, x1, n), np.linspace(y0, y1, n))
    pts = torch.as_tensor(np.stack([X.ravel(), Y.ravel()], axis=1), dtype=dtype)
    return pts, X, Y


def _time(t, B: int, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(t, torch.Tensor) and t.ndim > 0:
        if t.numel() != 1:
            raise ValueError(f"t must be one time (a float or a 1-element tensor), got shape {tuple(t.shape)}.")
        t = t.reshape(())
    return torch.full((B,), float(t), dtype=dtype)


@torch.no_grad()
def _field(score_fn: ScoreFn, pts: torch.Tensor, t, name: str = "score_fn") -> np.ndarray:
    """score_fn on the grid points, [B, 2] as numpy; checks the shape the callable returned."""
    out = score_fn(pts, _time(t, pts.shape[0], pts.dtype))
    out = _np(out, name)
    if out.shape != (pts.shape[0], 2):
        raise ValueError(f"{name}(x, t) must return a tensor shaped like x, [B, 2] = [{pts.shape[0]}, 2], "
                         f"got {tuple(out.shape)}.")
    return out


@torch.no_grad()
def _scalar(fn, pts: torch.Tensor, t, name: str) -> np.ndarray:
    """A scalar function (log-density or energy) on the grid points, [B] as numpy."""
    out = fn(pts) if t is None else fn(pts, _time(t, pts.shape[0], pts.dtype))
    out = _np(out, name).reshape(-1)
    if out.shape != (pts.shape[0],):
        raise ValueError(f"{name} must return one number per point, [B] = [{pts.shape[0]}], "
                         f"got {out.size} values.")
    return out


def _density(log_prob_fn: LogProbFn, pts: torch.Tensor, t) -> np.ndarray:
    """p_t on the grid, scaled to max 1 (only its shape is drawn; scaling avoids under/overflow)."""
    lp = _scalar(log_prob_fn, pts, t, "log_prob_fn")
    lp = np.where(np.isfinite(lp), lp, -np.inf)
    top = np.max(lp)
    if not np.isfinite(top):
        raise ValueError("log_prob_fn returned no finite value on the plotting box; widen xlim/ylim.")
    return np.exp(lp - top)


def _new_figure(nrows: int, ncols: int, panel: tuple[float, float] = (4.6, 4.2), squeeze: bool = False):
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=squeeze)
    return fig, axes


def _finish(fig: Figure, path, suptitle: str | None = None) -> Figure:
    if suptitle:
        fig.suptitle(suptitle, fontsize=TITLE_SIZE + 1)
    if path is not None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=DPI)
    return fig


def _quiver(ax, X, Y, S: np.ndarray, normalize: bool, color="k"):
    """Arrows of the field S [n*n, 2]. Scores blow up near the data at small t, so ``normalize`` draws unit
    arrows coloured by magnitude, which keeps the direction readable everywhere."""
    U, V = S[:, 0].reshape(X.shape), S[:, 1].reshape(X.shape)
    if normalize:
        mag = np.hypot(U, V)
        safe = np.where(mag > 0, mag, 1.0)
        q = ax.quiver(X, Y, U / safe, V / safe, mag, cmap="magma", angles="xy", pivot="mid")
    else:
        q = ax.quiver(X, Y, U, V, color=color, angles="xy", pivot="mid")
    return q


def _box(ax, xlim, ylim, title: str | None):
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE)
    ax.tick_params(labelsize=LABEL_SIZE - 1)


# ---------------------------------------------------------------------------------------------------------
# score fields and densities
# ---------------------------------------------------------------------------------------------------------

def vector_field(score_fn: ScoreFn, t, xlim, ylim, n: int = 25, ax=None, log_prob_fn: LogProbFn | None = None,
                 res: int = 150, normalize: bool = False, title: str | None = None, path=None,
                 dtype: torch.dtype = torch.float32) -> Figure:
    """Quiver of a 2-D score s(x, t) on an n x n grid, over the density p_t (heat map) if ``log_prob_fn``.

    score_fn(x [B, 2], t [B]) -> [B, 2]; t is one time. With ``ax`` the plot goes there and its figure is
    returned (and saved if ``path``); otherwise a new figure. ``dtype``: what the grid is fed to the callables in.
    """
    xlim, ylim = _lim(xlim, "xlim"), _lim(ylim, "ylim")
    if ax is None:
        ax = _new_figure(1, 1, (5.2, 4.8))[1][0, 0]
    fig = ax.figure
    if log_prob_fn is not None:
        dpts, DX, DY = _grid(xlim, ylim, res, dtype)
        ax.pcolormesh(DX, DY, _density(log_prob_fn, dpts, t).reshape(DX.shape), cmap="Blues", shading="auto")
    pts, X, Y = _grid(xlim, ylim, n, dtype)
    _quiver(ax, X, Y, _field(score_fn, pts, t), normalize)
    _box(ax, xlim, ylim, title if title is not None else f"score at t = {float(t):.3g}")
    return _finish(fig, path)


def score_error_map(score_fn: ScoreFn, true_score_fn: ScoreFn, log_prob_fn: LogProbFn, t, xlim, ylim,
                    n: int = 21, res: int = 100, low_density: float = 1e-2, normalize: bool = True,
                    titles: Sequence[str] = ("data score", "learned score", "|s_theta - s|"),
                    path=None, dtype: torch.dtype = torch.float32) -> tuple[Figure, dict[str, float]]:
    """Data score vs learned score, and where they disagree: the learned score is poor where data are scarce.

    Three panels: the true field s(x) = grad log p_t(x) and the learned s_theta(x) over p_t, then the error
    e(x) = |s_theta(x) - s(x)| (Euclidean) as a heat map with contours of p_t. On a res x res grid:

        density_weighted_error = sum_x p_t(x) e(x) / sum_x p_t(x)       (about E_{p_t} |s_theta - s|)
        low_density_error      = mean of e(x) over  {x : p_t(x) < low_density * max p_t}
        high_density_error     = mean of e(x) over  {x : p_t(x) >= low_density * max p_t}
        low_density_fraction   = share of the box that is low-density

    (a mean over an empty region is NaN). Returns (figure, numbers) so a caption can quote the numbers.
    """
    if not 0.0 < low_density < 1.0:
        raise ValueError(f"low_density is a fraction of the peak density in (0, 1), got {low_density!r}.")
    if len(titles) != 3:
        raise ValueError(f"titles needs three strings (true, learned, error), got {len(titles)}.")
    xlim, ylim = _lim(xlim, "xlim"), _lim(ylim, "ylim")

    dpts, DX, DY = _grid(xlim, ylim, res, dtype)
    p = _density(log_prob_fn, dpts, t)
    err = np.linalg.norm(_field(score_fn, dpts, t) - _field(true_score_fn, dpts, t, "true_score_fn"), axis=1)
    low = p < low_density
    numbers = {
        "density_weighted_error": float(np.sum(p * err) / np.sum(p)),
        "low_density_error": float(err[low].mean()) if low.any() else float("nan"),
        "high_density_error": float(err[~low].mean()) if (~low).any() else float("nan"),
        "low_density_fraction": float(low.mean()),
    }

    fig, axes = _new_figure(1, 3, (5.0, 4.6))
    pts, X, Y = _grid(xlim, ylim, n, dtype)
    P = p.reshape(DX.shape)
    for ax, fn, title in zip(axes[0, :2], (true_score_fn, score_fn), titles[:2], strict=True):
        ax.pcolormesh(DX, DY, P, cmap="Blues", shading="auto")
        _quiver(ax, X, Y, _field(fn, pts, t), normalize)
        _box(ax, xlim, ylim, title)
    ax = axes[0, 2]
    im = ax.pcolormesh(DX, DY, err.reshape(DX.shape), cmap="inferno", shading="auto")
    fig.colorbar(im, ax=ax, shrink=0.85)
    ax.contour(DX, DY, P, levels=[low_density, 0.1, 0.5, 0.9], colors="w", linewidths=0.8)
    _box(ax, xlim, ylim, titles[2])
    ax.set_xlabel(f"weighted by p_t: {numbers['density_weighted_error']:.3g}   "
                  f"low density: {numbers['low_density_error']:.3g}", fontsize=LABEL_SIZE)
    return _finish(fig, path), numbers


def density_panels(log_prob_fn: LogProbFn, times: Sequence[float], labels: Sequence[str] | None = None,
                   xlim=(-3, 3), ylim=(-3, 3), res: int = 120, score_fn: ScoreFn | None = None, n: int = 15,
                   suptitle: str | None = None, path=None, dtype: torch.dtype = torch.float32) -> Figure:
    """The perturbed density p_t (and its score, if ``score_fn``) at each time of a noise ladder, in a row.

    ``times``: one time per panel (e.g. the times whose marginal std is each sigma of a ladder);
    ``labels``: one panel title each (default "t = ..."), e.g. "sigma = 0.5".
    """
    times = [float(v) for v in _np(times, "times").reshape(-1)]
    if not times:
        raise ValueError("times is empty; give at least one time to draw.")
    labels = [f"t = {v:.3g}" for v in times] if labels is None else list(labels)
    if len(labels) != len(times):
        raise ValueError(f"labels must have one entry per time: {len(times)} times, {len(labels)} labels.")
    xlim, ylim = _lim(xlim, "xlim"), _lim(ylim, "ylim")
    fig, axes = _new_figure(1, len(times), (4.0, 3.9))
    dpts, DX, DY = _grid(xlim, ylim, res, dtype)
    if score_fn is not None:
        pts, X, Y = _grid(xlim, ylim, n, dtype)
    for ax, t, label in zip(axes[0], times, labels, strict=True):
        ax.pcolormesh(DX, DY, _density(log_prob_fn, dpts, t).reshape(DX.shape), cmap="viridis", shading="auto")
        if score_fn is not None:
            _quiver(ax, X, Y, _field(score_fn, pts, t), normalize=False, color="w")
        _box(ax, xlim, ylim, label)
    return _finish(fig, path, suptitle)


# ---------------------------------------------------------------------------------------------------------
# samples and paths
# ---------------------------------------------------------------------------------------------------------

def _auto_limits(arrays: list[np.ndarray], pad: float = 0.1) -> tuple[tuple[float, float], tuple[float, float]]:
    """A box holding the bulk (0.5 to 99.5 percent) of all points, so one diverged sampler does not zoom out
    every panel."""
    allp = np.concatenate([a[np.isfinite(a).all(axis=1)] for a in arrays])
    if allp.size == 0:
        return (-1.0, 1.0), (-1.0, 1.0)
    lo, hi = np.percentile(allp, 0.5, axis=0), np.percentile(allp, 99.5, axis=0)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad * span, hi + pad * span
    return (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))


def samples_scatter(samples: Mapping[str, object], reference=None, subtitles: Mapping[str, str] | None = None,
                    xlim=None, ylim=None, ncols: int | None = None, s: float = 3.0, suptitle: str | None = None,
                    path=None) -> Figure:
    """A grid of scatter plots, one per entry of ``samples`` (name -> points [n, 2]); ``reference`` points
    [m, 2] (e.g. true samples) are drawn in grey behind each panel. ``subtitles`` (name -> text, e.g. numbers
    the caller measured) go under each panel's title. Limits default to the bulk of all points."""
    if not isinstance(samples, Mapping) or not samples:
        raise ValueError("samples must be a non-empty dict name -> points [n, 2].")
    pts = {str(k): _points2d(v, f"samples[{k!r}]") for k, v in samples.items()}
    ref = None if reference is None else _points2d(reference, "reference")
    subtitles = dict(subtitles or {})
    unknown = set(map(str, subtitles)) - set(pts)
    if unknown:
        raise ValueError(f"subtitles name panels that are not in samples: {sorted(unknown)}.")
    if xlim is None or ylim is None:
        ax_, ay_ = _auto_limits(list(pts.values()) + ([ref] if ref is not None else []))
        xlim, ylim = xlim or ax_, ylim or ay_
    xlim, ylim = _lim(xlim, "xlim"), _lim(ylim, "ylim")
    k = len(pts)
    ncols = min(k, 4) if ncols is None else int(ncols)
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}.")
    nrows = math.ceil(k / ncols)
    fig, axes = _new_figure(nrows, ncols, (4.0, 4.0))
    flat = axes.ravel()
    for ax, (name, x) in zip(flat, pts.items(), strict=False):
        if ref is not None:
            ax.scatter(ref[:, 0], ref[:, 1], s=s, c="0.75", linewidths=0, label="reference")
        ax.scatter(x[:, 0], x[:, 1], s=s, c="C0", linewidths=0, alpha=0.8)
        sub = subtitles.get(name)
        _box(ax, xlim, ylim, name if not sub else f"{name}\n{sub}")
    for ax in flat[k:]:
        ax.axis("off")
    return _finish(fig, path, suptitle)


def trajectories(paths, times, log_prob_fn: LogProbFn | None = None, background_t: float | None = None,
                 xlim=None, ylim=None, coord: int = 0, view: str = "both", max_particles: int = 20,
                 title: str | None = None, res: int = 120, path=None,
                 dtype: torch.dtype = torch.float32) -> Figure:
    """Paths of a few particles: in the plane (over p_t at ``background_t`` if ``log_prob_fn``) and/or one
    coordinate x[coord] against t (the classic picture of SDE paths).

    ``paths``: [steps, n, d] (d = 2 for the planar view, any d >= 1 for the 1-D view) or a dict name -> such
    array, one column of panels each (e.g. forward SDE, reverse SDE, probability-flow ODE); ``times``: [steps]
    or a dict with the same names. ``view``: "both", "2d" or "1d". Start points are circles, end points crosses.
    """
    if view not in ("both", "2d", "1d"):
        raise ValueError(f"view must be 'both', '2d' or '1d', got {view!r}.")
    if isinstance(paths, Mapping):
        if not isinstance(times, Mapping) or set(times) != set(paths):
            raise ValueError("with a dict of paths, times must be a dict with the same names.")
        entries = [(str(k), paths[k], times[k]) for k in paths]
    else:
        entries = [(title or "", paths, times)]
    if not entries:
        raise ValueError("paths is empty.")
    data = []
    for name, p, tt in entries:
        p, tt = _np(p, "paths"), _np(tt, "times").reshape(-1)
        if p.ndim != 3:
            raise ValueError(f"paths must have shape [steps, n, d], got {tuple(p.shape)} ({name or 'paths'}).")
        if view != "1d" and p.shape[2] != 2:
            raise ValueError(f"the planar view needs 2-D points, paths [steps, n, 2]; got d = {p.shape[2]}. "
                             "Use view='1d' for other dimensions.")
        if not 0 <= coord < p.shape[2]:
            raise ValueError(f"coord must index a dimension in [0, {p.shape[2]}), got {coord}.")
        if tt.shape[0] != p.shape[0]:
            raise ValueError(f"times must have one entry per step: paths has {p.shape[0]} steps, "
                             f"times has {tt.shape[0]}.")
        data.append((name, p[:, :max_particles], tt))

    rows = ["2d", "1d"] if view == "both" else [view]
    fig, axes = _new_figure(len(rows), len(data), (4.6, 4.0))
    if view != "1d" and (xlim is None or ylim is None):
        ax_, ay_ = _auto_limits([p.reshape(-1, 2) for _, p, _ in data])
        xlim, ylim = xlim or ax_, ylim or ay_
    for j, (name, p, tt) in enumerate(data):
        colours = [f"C{i % 10}" for i in range(p.shape[1])]
        for r, kind in enumerate(rows):
            ax = axes[r, j]
            if kind == "2d":
                if log_prob_fn is not None:
                    bt = float(tt.min()) if background_t is None else float(background_t)
                    dpts, DX, DY = _grid(xlim, ylim, res, dtype)
                    ax.pcolormesh(DX, DY, _density(log_prob_fn, dpts, bt).reshape(DX.shape), cmap="Greys",
                                  shading="auto")
                for i, c in enumerate(colours):
                    ax.plot(p[:, i, 0], p[:, i, 1], color=c, lw=0.9, alpha=0.9)
                ax.scatter(p[0, :, 0], p[0, :, 1], s=18, c=colours, marker="o", zorder=3)
                ax.scatter(p[-1, :, 0], p[-1, :, 1], s=28, c=colours, marker="x", zorder=3)
                _box(ax, _lim(xlim, "xlim"), _lim(ylim, "ylim"), name)
            else:
                for i, c in enumerate(colours):
                    ax.plot(tt, p[:, i, coord], color=c, lw=0.9)
                ax.set_xlabel("t", fontsize=LABEL_SIZE)
                ax.set_ylabel(f"x[{coord}]", fontsize=LABEL_SIZE)
                if name:
                    ax.set_title(name if view == "1d" else f"{name}: x[{coord}] vs t", fontsize=TITLE_SIZE)
    return _finish(fig, path, title if len(data) > 1 else None)


# ---------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------

def grid_array(images, nrow: int = 8, value_range: tuple[float, float] | None = None, padding: int = 2,
               pad_value: float = 1.0, levels: int | None = None) -> np.ndarray:
    """Tile images [n, C, H, W] (C = 1 or 3) into one uint8 array [H', W', C], ``nrow`` images per row.

    Values are mapped from ``value_range`` (default: the batch's min and max; pass the data's range, e.g. the
    run's, so the contrast is the data's and not the batch's) to 0..255, clipped outside it; with ``levels``
    they are first rounded to that many equally spaced values in the range (17 for the 0..16 digits), as the
    data is quantised. NaN is drawn at the bottom of the range.
    With r = ceil(n / nrow) rows and c = min(n, nrow) columns: H' = r H + (r + 1) padding,
    W' = c W + (c + 1) padding. ``pad_value`` in [0, 1] is the border's grey level (1 = white).
    """
    x = _np(images, "images")
    if x.ndim != 4:
        raise ValueError(f"images must have shape [n, C, H, W], got {tuple(x.shape)}; "
                         "add a channel axis for grayscale, e.g. x[:, None].")
    n, C, H, W = x.shape
    if n == 0:
        raise ValueError("images is empty.")
    if C not in (1, 3):
        raise ValueError(f"images need 1 (grayscale) or 3 (RGB) channels in axis 1, got C = {C} "
                         f"(shape {tuple(x.shape)}); is the channel axis last? Use x.permute(0, 3, 1, 2).")
    if not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow (images per row) must be an integer >= 1, got {nrow!r}.")
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an integer >= 0, got {padding!r}.")
    if value_range is None:
        finite = x[np.isfinite(x)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    else:
        lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        hi = lo + 1.0  # a constant image: draw it at the bottom of the range rather than divide by zero
    if levels is not None and (not isinstance(levels, int) or isinstance(levels, bool) or levels < 2):
        raise ValueError(f"levels must be an integer >= 2 (quantisation levels of the data), got {levels!r}.")
    x = np.clip(np.nan_to_num((x - lo) / (hi - lo), nan=0.0), 0.0, 1.0)
    if levels is not None:
        x = np.round(x * (levels - 1)) / (levels - 1)
    cols, rows = min(n, nrow), math.ceil(n / nrow)
    out = np.full((rows * H + (rows + 1) * padding, cols * W + (cols + 1) * padding, C), float(pad_value))
    for k in range(n):
        r, c = divmod(k, nrow)
        y0, x0 = padding + r * (H + padding), padding + c * (W + padding)
        out[y0:y0 + H, x0:x0 + W] = x[k].transpose(1, 2, 0)
    return np.round(out * 255.0).astype(np.uint8)


def image_grid(images, nrow: int = 8, value_range: tuple[float, float] | None = None, padding: int = 2,
               title: str | None = None, scale: float = 0.04, path=None) -> Figure:
    """A figure showing ``grid_array(images, nrow, value_range, padding)`` (grayscale or RGB), axes off.
    ``scale``: inches per pixel of the grid."""
    g = grid_array(images, nrow, value_range, padding)
    h, w = g.shape[:2]
    fig = Figure(figsize=(max(2.0, w * scale), max(2.0, h * scale) + (0.4 if title else 0.0)), dpi=DPI,
                 layout="constrained")
    ax = fig.subplots()
    if g.shape[2] == 1:
        ax.imshow(g[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(g, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE)
    return _finish(fig, path)


def _upscale_for(images, upscale: int, min_size: int | None) -> int:
    if not isinstance(upscale, int) or isinstance(upscale, bool) or upscale < 1:
        raise ValueError(f"upscale must be an integer >= 1, got {upscale!r}.")
    if min_size is None:
        return upscale
    if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 1:
        raise ValueError(f"min_size must be a positive number of pixels, got {min_size!r}.")
    h, w = np.shape(images)[-2:]
    return max(upscale, math.ceil(min_size / max(1, min(h, w))))


def _png(g: np.ndarray, upscale: int):
    Image = require("PIL.Image", "plots", "writing image grids")
    img = Image.fromarray(g[..., 0], mode="L") if g.shape[2] == 1 else Image.fromarray(g, mode="RGB")
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    return img


def save_image_grid(images, path, nrow: int = 8, value_range: tuple[float, float] | None = None,
                    padding: int = 2, upscale: int = 1, levels: int | None = None,
                    min_size: int | None = None) -> Path:
    """Write ``grid_array(images, nrow, value_range, padding, levels=levels)`` to a PNG with Pillow at native
    pixel size times ``upscale`` (nearest neighbour), or larger so that each image is at least ``min_size``
    pixels on its short side (``scorelab sample --out x.png`` asks for 56). Returns the path."""
    factor = _upscale_for(images, upscale, min_size)
    img = _png(grid_array(images, nrow, value_range, padding, levels=levels), factor)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    img.save(p, format="PNG")
    return p


def save_images(images, folder, prefix: str = "sample", value_range: tuple[float, float] | None = None,
                levels: int | None = None, upscale: int = 1, min_size: int | None = None) -> list[Path]:
    """Write each image of [n, C, H, W] as its own PNG ``folder/<prefix>-00000.png``, ... (mapped and quantised
    like ``grid_array``, one ``value_range`` for all: default the batch's min and max). ``folder`` is created;
    a file that already exists there is never overwritten: a ValueError before anything is written."""
    x = _np(images, "images")
    if x.ndim != 4:
        raise ValueError(f"images must have shape [n, C, H, W], got {tuple(x.shape)}.")
    if value_range is None:
        finite = x[np.isfinite(x)]
        value_range = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} exists and is not a folder; name a folder for the images.")
    digits = max(5, len(str(len(x) - 1)))
    paths = [folder / f"{prefix}-{k:0{digits}d}.png" for k in range(len(x))]
    taken = [p for p in paths if p.exists()]
    if taken:
        raise ValueError(f"{str(taken[0])!r} already exists ({len(taken)} of the {len(paths)} image files do); "
                         "choose an empty or new folder, nothing is overwritten.")
    factor = _upscale_for(x, upscale, min_size)
    folder.mkdir(parents=True, exist_ok=True)
    for k, p in enumerate(paths):
        img = _png(grid_array(x[k:k + 1], 1, value_range, 0, levels=levels), factor)
        with open(p, "xb") as fh:  # exclusive create: a file that appeared meanwhile is not overwritten
            img.save(fh, format="PNG")
    return paths


# ---------------------------------------------------------------------------------------------------------
# curves, bars, energies
# ---------------------------------------------------------------------------------------------------------

def loss_curves(curves: Mapping[str, object], title: str = "training loss", yscale: str | None = None,
                smooth: int = 1, xlabel: str = "step", ylabel: str = "loss", path=None) -> Figure:
    """Loss against step for several runs: ``curves`` is name -> list of (step, loss) or an array [k, 2].

    ``yscale`` defaults to "log" when every loss is positive and "symlog" otherwise (sliced score matching
    losses are negative). ``smooth``: a moving-average window. Non-finite losses (a diverged run) are not drawn;
    the legend says at which step the run first went non-finite.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty dict name -> list of (step, loss).")
    if not isinstance(smooth, int) or smooth < 1:
        raise ValueError(f"smooth must be an integer window >= 1, got {smooth!r}.")
    fig, axes = _new_figure(1, 1, (6.4, 4.2))
    ax = axes[0, 0]
    finite_all = []
    for name, c in curves.items():
        a = _np(c, f"curves[{name!r}]")
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"curves[{name!r}] must be a list of (step, loss) pairs, shape [k, 2], "
                             f"got {tuple(a.shape)}.")
        step, loss = a[:, 0], a[:, 1]
        ok = np.isfinite(loss)
        label = str(name)
        if not ok.all():
            label += f" (non-finite from step {step[~ok][0]:g})"
        step, loss = step[ok], loss[ok]
        if smooth > 1 and loss.size >= smooth:
            loss = np.convolve(loss, np.ones(smooth) / smooth, mode="valid")
            step = step[smooth - 1:]
        finite_all.append(loss)
        ax.plot(step, loss, lw=1.2, label=label)
    vals = np.concatenate(finite_all) if finite_all else np.zeros(0)
    ax.set_yscale(yscale or ("log" if vals.size and (vals > 0).all() else "symlog"))
    ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    ax.set_title(title, fontsize=TITLE_SIZE)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=LABEL_SIZE - 1)
    return _finish(fig, path)


def bar_weights(measured: Mapping[str, object], true_weights, component_labels: Sequence[str] | None = None,
                title: str = "mixture weights", path=None) -> Figure:
    """Grouped bars: for each mixture component, the weight each sampler produced (``measured``: name ->
    weights [K]) beside the true weight (hatched), with the numbers written on the bars."""
    if not isinstance(measured, Mapping) or not measured:
        raise ValueError("measured must be a non-empty dict name -> weights [K].")
    truth = _np(true_weights, "true_weights").reshape(-1)
    K = truth.shape[0]
    rows = {}
    for name, w in measured.items():
        w = _np(w, f"measured[{name!r}]").reshape(-1)
        if w.shape[0] != K:
            raise ValueError(f"measured[{name!r}] has {w.shape[0]} weights, true_weights has {K}; "
                             "give one weight per mixture component.")
        rows[str(name)] = w
    labels = [f"component {k}" for k in range(K)] if component_labels is None else list(component_labels)
    if len(labels) != K:
        raise ValueError(f"component_labels needs {K} entries, got {len(labels)}.")
    groups = list(rows.items()) + [("truth", truth)]
    width = 0.8 / len(groups)
    fig, axes = _new_figure(1, 1, (max(5.0, 1.6 * K * len(groups) ** 0.5 + 2), 4.2))
    ax = axes[0, 0]
    idx = np.arange(K)
    for g, (name, w) in enumerate(groups):
        is_truth = g == len(groups) - 1
        bars = ax.bar(idx + (g - (len(groups) - 1) / 2) * width, w, width, label=name,
                      color="0.85" if is_truth else f"C{g}", edgecolor="k", hatch="//" if is_truth else None)
        ax.bar_label(bars, fmt="%.2f", fontsize=LABEL_SIZE - 2)
    ax.set_xticks(idx, labels)
    ax.set_ylim(0, max(1.0, float(max(np.max(w) for _, w in groups))) * 1.12)
    ax.set_ylabel("weight", fontsize=LABEL_SIZE)
    ax.set_title(title, fontsize=TITLE_SIZE)
    ax.legend(fontsize=LABEL_SIZE - 1)
    return _finish(fig, path)


def energy_landscape(energy_fn: Callable[[torch.Tensor], torch.Tensor], xlim, ylim, samples=None,
                     res: int = 150, levels: int = 20, title: str = "energy E(x)", path=None,
                     dtype: torch.dtype = torch.float32) -> Figure:
    """Filled contours of an energy E(x) (density proportional to exp(-E)), optionally with samples [n, 2].
    energy_fn(x [B, 2]) -> [B] (or [B, 1]); wrap a time-conditioned network as lambda x: net(x, t)."""
    xlim, ylim = _lim(xlim, "xlim"), _lim(ylim, "ylim")
    pts = None if samples is None else _points2d(samples, "samples")
    dpts, DX, DY = _grid(xlim, ylim, res, dtype)
    E = _scalar(energy_fn, dpts, None, "energy_fn").reshape(DX.shape)
    fig, axes = _new_figure(1, 1, (5.4, 4.6))
    ax = axes[0, 0]
    cs = ax.contourf(DX, DY, E, levels=levels, cmap="viridis_r")
    ax.contour(DX, DY, E, levels=levels, colors="k", linewidths=0.3)
    fig.colorbar(cs, ax=ax, shrink=0.85)
    if pts is not None:
        ax.scatter(pts[:, 0], pts[:, 1], s=4, c="r", linewidths=0, alpha=0.7)
    _box(ax, xlim, ylim, title)
    return _finish(fig, path)
