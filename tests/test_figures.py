"""The figures report: every experiment runs (quick mode), draws a readable PNG, and measures what its caption
claims; the captions quote the measured numbers."""

import html

import pytest
import torch
from PIL import Image

from scorelab import figures


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    return out, figures.run_all(out, quick=True, seed=0)


def test_every_figure_is_a_png(run):
    out, res = run
    assert set(res["figures"]) == set(figures.FIGURES)
    for fig in res["figures"].values():
        assert fig.path.parent == out and fig.path.suffix == ".png"
        with Image.open(fig.path) as im:
            im.verify()
        with Image.open(fig.path) as im:
            assert im.size[0] > 200 and im.size[1] > 100


def test_report_holds_every_caption(run):
    out, res = run
    md = (out / "report.md").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")
    for fig in res["figures"].values():
        assert fig.caption in md
        assert fig.caption in page or html.escape(fig.caption, quote=False) in page or html.escape(fig.caption) in page
        assert fig.path.name in md


def test_captions_quote_measured_numbers(run):
    f = run[1]["figures"]
    n = f["langevin_weights"].numbers
    assert f"{n['langevin_error']:.3g}" in f["langevin_weights"].caption
    assert f"{n['annealed_error']:.3g}" in f["langevin_weights"].caption
    n = f["tweedie"].numbers
    assert f"{n['psnr_noisy']:.2f}" in f["tweedie"].caption and f"{n['psnr_denoised']:.2f}" in f["tweedie"].caption
    n = f["learned_score"].numbers
    assert f"{n['err_low']:.3g}" in f["learned_score"].caption
    n = f["manifold"].numbers
    assert f"{n['clean_std']:.3g}" in f["manifold"].caption and f"{n['noisy_std']:.3g}" in f["manifold"].caption


def test_learned_score_is_worse_in_low_density(run):
    n = run[1]["figures"]["learned_score"].numbers
    assert n["err_low"] > 3 * n["err_high"]


def test_ssm_unstable_without_noise(run):
    n = run[1]["figures"]["manifold"].numbers
    assert n["clean_std"] > 3 * n["noisy_std"]
    assert n["clean_final"] < n["noisy_final"]  # the noise-free objective runs off to -infinity
    assert n["clean_frac_out"] >= n["noisy_frac_out"]


def test_langevin_ignores_weights_annealed_recovers_them(run):
    n = run[1]["figures"]["langevin_weights"].numbers
    assert n["langevin_error"] > 0.15
    assert n["annealed_error"] < 0.07


def test_sigma_ladder_merges_modes(run):
    n = run[1]["figures"]["sigma_ladder"].numbers
    assert n["n_modes"][0] == 2 and n["n_modes"][-1] == 1
    assert n["gap_drop"] == sorted(n["gap_drop"], reverse=True)
    assert 2.0 < n["peak_at"][-1] < 4.0  # near the weighted mean 0.8 * 5 - 0.2 * 5 = 3


def test_sde_reaches_prior_and_samplers_recover_ring(run):
    n = run[1]["figures"]["sde_trajectories"].numbers
    assert abs(n["prior_std"] - 1) < 0.1 and n["prior_mean_norm"] < 0.2
    assert n["pc_mode_tv"] < 0.1 and n["ode_mode_tv"] < 0.1
    assert n["pc_moment_kl"] < 0.5 and n["ode_moment_kl"] < 0.5


def test_ebm_energy_tracks_log_density(run):
    n = run[1]["figures"]["ebm"].numbers
    assert n["corr_energy_logp"] > 0.8
    assert n["weight_error"] < 0.1


def test_tweedie_denoising_raises_psnr(run):
    n = run[1]["figures"]["tweedie"].numbers
    assert n["psnr_denoised"] > n["psnr_noisy"] + 3


def test_digits_mixture_is_exact_class_gaussians():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1, 2, 2, generator=g, dtype=torch.float64)
    y = torch.arange(300) % 3
    gmm = figures.digits_mixture(x, y, ridge=1e-3)
    assert torch.allclose(gmm.weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert torch.allclose(gmm.means[1], x[y == 1].reshape(100, 4).mean(0))
    cov = torch.cov(x[y == 2].reshape(100, 4).T) + 1e-3 * torch.eye(4, dtype=torch.float64)
    assert torch.allclose(gmm.covs[2], cov)


def test_same_seed_same_numbers(tmp_path):
    a = figures.fig_langevin_weights(tmp_path, quick=True, seed=3).numbers
    b = figures.fig_langevin_weights(tmp_path, quick=True, seed=3).numbers
    assert a == b


def test_run_all_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="unknown figure"):
        figures.run_all(tmp_path, quick=True, names=["nope"])
