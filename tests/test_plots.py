"""Every plot runs on tiny synthetic inputs and writes a PNG; score_error_map's numbers are exact for known
fields; image grids have the right pixel layout; bad shapes give clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure
from PIL import Image

from scorelab import plots

SIGMA = 0.5


def gauss_score(x, t):
    """Score of N(0, (1 + sigma(t)^2) I) with sigma(t) = SIGMA * t: s(x) = -x / (1 + sigma^2)."""
    v = 1.0 + (SIGMA * t) ** 2
    return -x / v[:, None]


def gauss_logp(x, t):
    v = 1.0 + (SIGMA * t) ** 2
    return -0.5 * (x**2).sum(1) / v - torch.log(2 * math.pi * v)


def check_png(path, min_size=(50, 50)):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        assert im.width >= min_size[0] and im.height >= min_size[1]
        return im.size


def test_vector_field(tmp_path):
    fig = plots.vector_field(gauss_score, 0.5, (-3, 3), (-3, 3), n=9, log_prob_fn=gauss_logp, res=30,
                             path=tmp_path / "vf.png")
    assert isinstance(fig, Figure)
    check_png(tmp_path / "vf.png")
    # on a caller's axes, with unit arrows
    fig2, axes = plots._new_figure(1, 2)
    out = plots.vector_field(gauss_score, torch.tensor([0.2]), (-2, 2), (-2, 2), n=7, ax=axes[0, 1],
                             normalize=True)
    assert out is fig2


def test_score_error_map_identical_fields_zero(tmp_path):
    fig, num = plots.score_error_map(gauss_score, gauss_score, gauss_logp, 0.3, (-3, 3), (-3, 3), n=7, res=40,
                                     path=tmp_path / "err.png")
    check_png(tmp_path / "err.png")
    assert num["density_weighted_error"] == 0.0
    assert num["low_density_error"] == 0.0
    assert num["high_density_error"] == 0.0
    assert 0.0 < num["low_density_fraction"] < 1.0


def test_score_error_map_constant_offset():
    c = torch.tensor([0.3, -0.4], dtype=torch.float64)  # |c| = 0.5 everywhere

    def shifted(x, t):
        return gauss_score(x, t) + c

    _, num = plots.score_error_map(shifted, gauss_score, gauss_logp, 0.3, (-3, 3), (-3, 3), n=5, res=30,
                                   dtype=torch.float64)
    for k in ("density_weighted_error", "low_density_error", "high_density_error"):
        assert num[k] == pytest.approx(0.5, abs=1e-12)


def test_score_error_map_low_density_region_is_worse():
    """An error that grows with |x| is larger in the tails: the point of the figure."""
    def learned(x, t):
        return gauss_score(x, t) + x * (x**2).sum(1, keepdim=True) * 0.1

    _, num = plots.score_error_map(learned, gauss_score, gauss_logp, 0.0, (-4, 4), (-4, 4), n=5, res=60,
                                   dtype=torch.float64)
    assert num["low_density_error"] > 5 * num["density_weighted_error"]
    # the density-weighted error is E|e| under the (grid-discretised) density: compare with a direct sum
    pts, X, Y = plots._grid((-4, 4), (-4, 4), 60, torch.float64)
    p = torch.exp(gauss_logp(pts, torch.zeros(len(pts), dtype=torch.float64)))
    e = 0.1 * pts.norm(dim=1) ** 3
    assert num["density_weighted_error"] == pytest.approx(float((p * e).sum() / p.sum()), rel=1e-9)


def test_score_error_map_bad_field_shape():
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        plots.score_error_map(lambda x, t: x[:, :1], gauss_score, gauss_logp, 0.3, (-1, 1), (-1, 1), n=3, res=5)


def test_density_panels(tmp_path):
    times = [0.0, 0.5, 1.0]
    plots.density_panels(gauss_logp, times, [f"sigma = {SIGMA * t:.2f}" for t in times], (-3, 3), (-3, 3),
                         res=25, score_fn=gauss_score, n=5, suptitle="ladder", path=tmp_path / "d.png")
    w, h = check_png(tmp_path / "d.png")
    assert w > 2 * h  # a row of panels
    with pytest.raises(ValueError, match="one entry per time"):
        plots.density_panels(gauss_logp, times, ["a"], (-3, 3), (-3, 3), res=5)


def test_samples_scatter(tmp_path):
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(200, 2, generator=g)
    samples = {"euler": torch.randn(100, 2, generator=g), "pc": np.random.default_rng(0).normal(size=(100, 2)),
               "ode": torch.randn(100, 2, generator=g) * 1.5, "diverged": torch.full((100, 2), float("nan"))}
    fig = plots.samples_scatter(samples, reference=ref, subtitles={"euler": "err 0.031", "pc": "err 0.012"},
                                ncols=3, path=tmp_path / "s.png")
    check_png(tmp_path / "s.png")
    assert len(fig.axes) == 6


def test_samples_scatter_bad_shape():
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        plots.samples_scatter({"a": torch.zeros(10, 3)})
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        plots.samples_scatter({"a": torch.zeros(10, 2)}, reference=torch.zeros(10))
    with pytest.raises(ValueError, match="not in samples"):
        plots.samples_scatter({"a": torch.zeros(10, 2)}, subtitles={"b": "x"})


def test_trajectories(tmp_path):
    g = torch.Generator().manual_seed(1)
    steps, n = 30, 5
    times = torch.linspace(0, 1, steps)
    fwd = torch.cumsum(torch.randn(steps, n, 2, generator=g) * 0.1, 0)
    plots.trajectories(fwd, times, log_prob_fn=gauss_logp, res=20, title="forward", path=tmp_path / "t1.png")
    check_png(tmp_path / "t1.png")
    plots.trajectories({"forward SDE": fwd, "reverse SDE": fwd.flip(0), "ODE": fwd * 0.5},
                       {"forward SDE": times, "reverse SDE": times.flip(0), "ODE": times},
                       view="both", path=tmp_path / "t2.png")
    w, h = check_png(tmp_path / "t2.png")
    assert w > h
    # the 1-D view takes any dimension
    plots.trajectories(torch.randn(10, 4, 7, generator=g), np.linspace(1, 0, 10), view="1d", coord=6)


def test_trajectories_bad_input():
    with pytest.raises(ValueError, match=r"\[steps, n, d\]"):
        plots.trajectories(torch.zeros(10, 2), torch.zeros(10))
    with pytest.raises(ValueError, match="2-D points"):
        plots.trajectories(torch.zeros(10, 3, 3), torch.zeros(10))
    with pytest.raises(ValueError, match="one entry per step"):
        plots.trajectories(torch.zeros(10, 3, 2), torch.zeros(9))


@pytest.mark.parametrize("n,nrow,C", [(10, 4, 1), (3, 8, 3), (8, 8, 1), (1, 1, 3)])
def test_grid_layout(tmp_path, n, nrow, C):
    H, W, pad = 6, 5, 2
    imgs = torch.rand(n, C, H, W, generator=torch.Generator().manual_seed(n))
    rows, cols = math.ceil(n / nrow), min(n, nrow)
    size = (cols * W + (cols + 1) * pad, rows * H + (rows + 1) * pad)  # (width, height)
    g = plots.grid_array(imgs, nrow=nrow, value_range=(0, 1), padding=pad)
    assert g.shape == (size[1], size[0], C) and g.dtype == np.uint8
    p = plots.save_image_grid(imgs, tmp_path / "g.png", nrow=nrow, value_range=(0, 1), padding=pad)
    with Image.open(p) as im:
        assert im.size == size
        assert im.mode == ("L" if C == 1 else "RGB")
    p = plots.save_image_grid(imgs, tmp_path / "g2.png", nrow=nrow, padding=pad, upscale=3)
    with Image.open(p) as im:
        assert im.size == (3 * size[0], 3 * size[1])
    # image k sits at row k // nrow, column k % nrow
    k = n - 1
    r, c = divmod(k, nrow)
    y0, x0 = pad + r * (H + pad), pad + c * (W + pad)
    expect = np.round(imgs[k].permute(1, 2, 0).double().numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(g[y0:y0 + H, x0:x0 + W], expect)


def test_grid_value_range_clipping():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 1, 5)
    g = plots.grid_array(x, value_range=(-1, 1), padding=0)
    np.testing.assert_array_equal(g[0, :, 0], [0, 0, 128, 255, 255])
    # default range: the batch's own min and max
    g = plots.grid_array(x, padding=0)
    assert g[0, 0, 0] == 0 and g[0, -1, 0] == 255
    # a constant batch does not divide by zero
    assert plots.grid_array(torch.ones(2, 1, 3, 3), padding=0).max() == 0


def test_image_grid_figure(tmp_path):
    imgs = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fig = plots.image_grid(imgs, nrow=6, value_range=(-1, 1), title="samples", path=tmp_path / "ig.png")
    assert isinstance(fig, Figure)
    check_png(tmp_path / "ig.png")
    plots.image_grid(torch.rand(4, 3, 8, 8), nrow=2)


def test_image_grid_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"\[n, C, H, W\]"):
        plots.grid_array(torch.zeros(4, 8, 8))
    with pytest.raises(ValueError, match="channels"):
        plots.save_image_grid(torch.zeros(4, 8, 8, 3), tmp_path / "x.png")
    with pytest.raises(ValueError, match="nrow"):
        plots.grid_array(torch.zeros(4, 1, 8, 8), nrow=0)


def test_loss_curves(tmp_path):
    steps = np.arange(1, 101)
    curves = {
        "SSM, no noise": [(s, -s * 0.5) for s in steps[:60]] + [(60, float("nan"))],
        "SSM, sigma = 0.01": np.stack([steps, -1.0 - np.exp(-steps / 20)], 1),
    }
    fig = plots.loss_curves(curves, smooth=5, path=tmp_path / "l.png")
    check_png(tmp_path / "l.png")
    ax = fig.axes[0]
    assert ax.get_yscale() == "symlog"
    assert "non-finite from step 60" in ax.get_legend().get_texts()[0].get_text()
    fig = plots.loss_curves({"dsm": [(1, 2.0), (2, 1.0), (3, 0.5)]})
    assert fig.axes[0].get_yscale() == "log"
    with pytest.raises(ValueError, match=r"\(step, loss\)"):
        plots.loss_curves({"a": [1.0, 2.0]})


def test_bar_weights(tmp_path):
    plots.bar_weights({"Langevin": [0.51, 0.49], "annealed Langevin": torch.tensor([0.21, 0.79])}, [0.2, 0.8],
                      component_labels=["left", "right"], path=tmp_path / "b.png")
    check_png(tmp_path / "b.png")
    with pytest.raises(ValueError, match="one weight per mixture component"):
        plots.bar_weights({"a": [0.3, 0.3, 0.4]}, [0.2, 0.8])


def test_energy_landscape(tmp_path):
    g = torch.Generator().manual_seed(0)
    plots.energy_landscape(lambda x: 0.5 * (x**2).sum(1, keepdim=True), (-3, 3), (-3, 3),
                           samples=torch.randn(50, 2, generator=g), res=30, path=tmp_path / "e.png")
    check_png(tmp_path / "e.png")
    with pytest.raises(ValueError, match="one number per point"):
        plots.energy_landscape(lambda x: x, (-1, 1), (-1, 1), res=5)
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        plots.energy_landscape(lambda x: x[:, 0], (-1, 1), (-1, 1), samples=torch.zeros(5, 3), res=5)


def test_bad_limits():
    with pytest.raises(ValueError, match="xlim"):
        plots.vector_field(gauss_score, 0.5, (3, -3), (-3, 3), n=5)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), nrow=st.integers(1, 6), C=st.sampled_from([1, 3]), H=st.integers(1, 5),
       W=st.integers(1, 5), pad=st.integers(0, 3))
def test_grid_shape_property(n, nrow, C, H, W, pad):
    g = plots.grid_array(np.zeros((n, C, H, W)), nrow=nrow, value_range=(-1, 1), padding=pad, pad_value=1.0)
    rows, cols = -(-n // nrow), min(n, nrow)
    assert g.shape == (rows * H + (rows + 1) * pad, cols * W + (cols + 1) * pad, C)
    # every image pixel (0 in [-1, 1]) maps to mid-grey; the border stays white
    assert int((g == 128).sum()) == n * C * H * W
    assert int((g == 255).sum()) == g.size - n * C * H * W
