"""Image runs end to end: Frechet distance against closed forms, Run.check_data, bits/dim (exact vs Hutchinson),
``scorelab evaluate`` on an image run with its reference classifier, grids and individual PNGs."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from scorelab.cli import main
from scorelab.metrics import frechet_distance, frechet_gaussians

TINY_UNET = ["--set", "model.base_channels=8", "--set", "model.channel_mults=[1]", "--set",
             "model.attn_at_lowest=false", "--set", "model.embed_dim=16", "--set", "train.warmup=0", "--set",
             "train.threads=1", "--set", "train.batch_size=32"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("img") / "digits"
    res = CliRunner().invoke(main, ["train", "digits", "--set", "train.steps=3", *TINY_UNET, "--out", str(out),
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    return out


# ---------------------------------------------------------------- Frechet distance
def _spd(d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_gaussians_matches_closed_forms():
    # 2x2: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for PSD M = A^(1/2) B A^(1/2) (tr M = tr AB, det M = det A det B)
    a, b = _spd(2, 0), _spd(2, 1)
    m1, m2 = torch.tensor([0.3, -1.0], dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64)
    cross = math.sqrt(float(torch.trace(a @ b)) + 2 * math.sqrt(float(torch.det(a) * torch.det(b))))
    truth = float((m1 - m2).pow(2).sum() + torch.trace(a) + torch.trace(b)) - 2 * cross
    assert frechet_gaussians(m1, a, m2, b) == pytest.approx(truth, rel=1e-10)
    # commuting (diagonal) covariances: |m1 - m2|^2 + sum (sqrt a_i - sqrt b_i)^2; and symmetry
    da, db = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 0.25])
    z = torch.zeros(3)
    assert frechet_gaussians(z, torch.diag(da), z + 1, torch.diag(db)) == pytest.approx(3 + 1 + 1 + 2.5**2)
    a5, b5 = _spd(5, 2), _spd(5, 3)
    z5 = torch.zeros(5, dtype=torch.float64)
    assert frechet_gaussians(z5, a5, z5, b5) == pytest.approx(frechet_gaussians(z5, b5, z5, a5), rel=1e-9)
    assert frechet_gaussians(z5, a5, z5, a5) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_samples():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 4, generator=g) @ torch.tensor([[1.0, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, .5]])
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    y = torch.randn(3000, 4, generator=g) + torch.tensor([1.0, 0, 0, 0])  # N(e1, I)
    cov = torch.tensor([[1.0, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, .5]])
    truth = frechet_gaussians(torch.zeros(4), cov.T @ cov, torch.tensor([1.0, 0, 0, 0]), torch.eye(4))
    assert frechet_distance(x, y) == pytest.approx(truth, rel=0.1)
    with pytest.raises(ValueError, match="same number of features"):
        frechet_distance(x, y[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(x, torch.full((5, 4), float("nan")))


# ---------------------------------------------------------------- data checks
def test_check_data_refuses_other_shapes_and_ranges(digits_run):
    from scorelab.run import load

    run = load(digits_run)
    assert run.data_range() == pytest.approx((0.0, 16.0)) and run.data_levels() == 17
    ok = torch.randint(0, 17, (4, 1, 8, 8), generator=torch.Generator().manual_seed(0)).float()
    assert run.check_data(ok) is ok
    with pytest.raises(ValueError, match="28x28"):
        run.check_data(torch.zeros(4, 1, 28, 28))
    with pytest.raises(ValueError, match="channel axis is last"):
        run.check_data(torch.zeros(4, 8, 8, 1))
    with pytest.raises(ValueError, match=r"\[0, 255\].*\[0, 16\]"):
        run.check_data(torch.cat([ok, torch.full((1, 1, 8, 8), 255.0)]))
    run.check_data(ok + 3.0, noise=1.0)  # noisy data: a margin of 5 noise stds (model units)
    nan = ok.clone()
    nan[0, 0, 0, 0] = float("nan")
    run.check_data(nan, noise=None)  # inpainting: NaN marks unknown entries
    with pytest.raises(ValueError, match="NaN"):
        run.check_data(nan)


@pytest.mark.parametrize("verb", ["denoise", "likelihood", "evaluate"])
def test_cli_refuses_foreign_data_in_one_line(digits_run, tmp_path, verb):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.random.default_rng(0).integers(0, 256, (6, 1, 8, 8)).astype(np.float32))
    args = {"denoise": ["--sigma", "0.1", "--out", str(tmp_path / "o.npy")], "likelihood": ["--bits-per-dim"],
            "evaluate": []}[verb]
    res = CliRunner().invoke(main, [verb, str(digits_run), "--data", str(bad), "--device", "cpu", *args])
    assert res.exit_code == 2 and "[0, 16]" in res.output and res.output.strip().count("\n") == 0, res.output
    np.save(bad, np.zeros((6, 8, 8, 1), dtype=np.float32))
    res = CliRunner().invoke(main, [verb, str(digits_run), "--data", str(bad), "--device", "cpu", *args])
    assert res.exit_code == 2 and "channel axis" in res.output, res.output


# ---------------------------------------------------------------- bits/dim
def test_exact_and_hutchinson_bits_per_dim_agree(digits_run):
    from scorelab.data import digits
    from scorelab.evaluate import image_bits_per_dim
    from scorelab.run import load

    run = load(digits_run)
    x = digits("test").x[:8]
    h = image_bits_per_dim(run, x, divergence="hutchinson", tol=1e-3, batch_size=8, seed=0)
    e = image_bits_per_dim(run, x, divergence="exact", tol=1e-3, batch_size=8, seed=0)
    diff = torch.tensor(h["per_image"]) - torch.tensor(e["per_image"])
    se = float(diff.std() / math.sqrt(len(diff)))
    assert 0 < se and abs(float(diff.mean())) < 4 * se  # unbiased: within the paired error bar
    assert float(diff.abs().max()) > 0  # the probes do make a difference (not the same computation twice)
    assert 0 < e["bpd"] < 20 and e["se"] > 0 and h["n"] == 8


def test_dequantize_levels_and_histogram_baseline():
    from scorelab.evaluate import histogram_bpd, quantize
    from scorelab.likelihood import dequantize

    x = torch.randint(0, 17, (5, 1, 2, 2), generator=torch.Generator().manual_seed(0)).float()
    x[0, 0, 0, 0] = 16
    y, log_jac = dequantize(x, levels=17, scaler=(1.0, 0.0), generator=torch.Generator().manual_seed(0))
    assert bool(((y * 17 >= x) & (y * 17 < x + 1)).all())
    assert torch.allclose(log_jac, torch.full((5,), -4 * math.log(17)))
    with pytest.raises(ValueError, match="16"):
        dequantize(x + 1, levels=17)
    g = torch.Generator().manual_seed(0)
    uniform_train = torch.arange(17.0).repeat(200).reshape(-1, 1, 1, 1)[torch.randperm(3400, generator=g)]
    assert histogram_bpd(uniform_train, x[:, :, :1, :1], 17) == pytest.approx(math.log2(17), abs=1e-3)
    assert quantize(torch.tensor([-3.0, 0.2, 7.6, 40.0]), (0.0, 16.0), 17).tolist() == [0.0, 0.0, 8.0, 16.0]


# ---------------------------------------------------------------- evaluate on an image run
def test_evaluate_image_run(digits_run, tmp_path, monkeypatch):
    monkeypatch.setenv("SCORELAB_CACHE", str(tmp_path / "cache"))
    from scorelab.evaluate import evaluate

    res = evaluate(digits_run, n=40, nll_n=6, nfe=10, tol=1e-3, batch_size=3, classifier_steps=15)
    rows = {r["metric"].split(" (")[0]: r for r in res["rows"]}
    assert {"bits/dim", "Frechet distance", "classifier confidence", "class-share TV vs test"} <= set(rows)
    fd = rows["Frechet distance"]
    assert fd["model"] > 0 and fd["floor"] > 0 and fd["baseline"] > 0 and fd["vs floor"] == fd["model"] / fd["floor"]
    b = res["bits_per_dim"]
    assert b["n"] == 6 and b["se"] > 0 and b["uniform"] == pytest.approx(math.log2(17)) and 0 < b["histogram"] < 4.1
    assert 0 <= res["classifier"]["test_accuracy"] <= 1 and res["classifier"]["steps"] == 15
    cached = list((tmp_path / "cache").glob("classifier-digits-*.safetensors"))
    assert len(cached) == 1
    again = evaluate(digits_run, n=40, nll_n=0, nfe=10, classifier_steps=15)  # the cached classifier, same numbers
    assert {r["metric"]: r["model"] for r in again["rows"]} == {r["metric"]: r["model"] for r in res["rows"][1:]}
    out = tmp_path / "ev.json"
    cli = CliRunner().invoke(main, ["evaluate", str(digits_run), "-n", "20", "--nll-n", "2", "--nfe", "5", "--tol",
                                    "1e-2", "--classifier-steps", "15", "--device", "cpu", "--quiet",
                                    "--out", str(out)])
    assert cli.exit_code == 0, cli.output
    js = json.loads(out.read_text())
    assert js["bits_per_dim"]["divergence"] == "hutchinson" and "Frechet" in cli.output
    assert "test accuracy" in cli.output and "histogram" in cli.output


def test_reference_classifier_is_deterministic_and_cached(tmp_path):
    pytest.importorskip("sklearn")
    from scorelab.classifier import features, reference_classifier
    from scorelab.data import digits

    a, info = reference_classifier("digits", steps=5, cache=tmp_path / "a")
    b, _ = reference_classifier("digits", steps=5, cache=tmp_path / "b")
    x = digits("test").x[:10]
    assert torch.equal(features(a, x), features(b, x))
    c, info_c = reference_classifier("digits", steps=5, cache=tmp_path / "a")  # loaded from the file
    assert info_c == info and torch.equal(features(c, x), features(a, x))
    (tmp_path / "a" / next((tmp_path / "a").iterdir()).name).write_bytes(b"junk")
    with pytest.raises(ValueError, match="Remove the damaged cache file"):
        reference_classifier("digits", steps=5, cache=tmp_path / "a")
    with pytest.raises(ValueError, match="built-in labelled image set"):
        reference_classifier("ring")


# ---------------------------------------------------------------- grids
def test_sample_grid_and_individual_images(digits_run, tmp_path):
    from PIL import Image

    grid, folder = tmp_path / "g.png", tmp_path / "each"
    res = CliRunner().invoke(main, ["sample", str(digits_run), "-n", "5", "--nfe", "4", "--device", "cpu", "--out",
                                    str(grid), "--individual", str(folder), "--quiet"])
    assert res.exit_code == 0, res.output
    with Image.open(grid) as im:
        assert im.size == (7 * (3 * 8 + 4 * 2), 7 * (2 * 8 + 3 * 2))  # 3 columns, 2 rows, 2 px padding, 7x >= 56
    files = sorted(folder.glob("sample-*.png"))
    assert len(files) == 5
    with Image.open(files[0]) as im:
        assert im.size == (56, 56) and len(set(np.asarray(im).ravel().tolist())) <= 17  # quantised to 17 levels
    before = files[0].read_bytes()
    res = CliRunner().invoke(main, ["sample", str(digits_run), "-n", "5", "--nfe", "4", "--device", "cpu", "--seed",
                                    "1", "--out", str(grid), "--individual", str(folder), "--quiet"])
    assert res.exit_code == 2 and "already holds" in res.output and files[0].read_bytes() == before


def test_grid_quantises_to_levels_and_save_images_never_overwrites(tmp_path):
    from scorelab import plots

    x = torch.tensor([0.0, 0.4, 8.2, 16.0, 30.0]).reshape(1, 1, 1, 5)
    g = plots.grid_array(x, value_range=(0, 16), padding=0, levels=17)
    np.testing.assert_array_equal(g[0, :, 0], np.round(np.array([0, 0, 8, 16, 16]) / 16 * 255).astype(np.uint8))
    g = torch.Generator().manual_seed(0)
    paths = plots.save_images(torch.rand(3, 1, 4, 4, generator=g), tmp_path / "imgs", min_size=10)
    assert [p.name for p in paths] == ["sample-00000.png", "sample-00001.png", "sample-00002.png"]
    with pytest.raises(ValueError, match="already exists"):
        plots.save_images(torch.rand(2, 1, 4, 4, generator=g), tmp_path / "imgs")
    p = plots.save_image_grid(torch.rand(4, 1, 8, 8, generator=g), tmp_path / "g.png", nrow=2, padding=1, min_size=56)
    from PIL import Image

    with Image.open(p) as im:
        assert im.size == (7 * 19, 7 * 19)


def test_corrupt_or_missing_png_is_one_line(digits_run, tmp_path):
    bad, trunc = tmp_path / "bad.png", tmp_path / "trunc.png"
    bad.write_bytes(b"not a png")
    from scorelab import plots

    good = plots.save_image_grid(torch.zeros(1, 1, 8, 8), tmp_path / "good.png", padding=0)
    trunc.write_bytes(good.read_bytes()[:40])
    for path in (bad, trunc, tmp_path / "missing.png"):
        res = CliRunner().invoke(main, ["inpaint", str(digits_run), "--input", str(path), "--mask", str(good),
                                        "--out", str(tmp_path / "o.npy"), "--device", "cpu"])
        assert res.exit_code == 2 and res.output.startswith("error: --input"), res.output
        assert res.output.strip().count("\n") == 0
