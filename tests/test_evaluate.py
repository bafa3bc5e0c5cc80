"""`scorelab evaluate`: NLL, sample-vs-data distances with their floors, mixture errors; and its bad input."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from scorelab.cli import main
from scorelab.metrics import mmd, sliced_wasserstein


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "toy"
    res = CliRunner().invoke(main, ["train", "toy", "--set", "train.steps=30", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    return out


def test_distances_see_a_shift_and_sit_at_their_floor_for_the_same_law():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(600, 3, generator=g), torch.randn(800, 3, generator=g)
    z = torch.randn(600, 3, generator=g) + torch.tensor([0.5, 0.0, 0.0])
    same, shifted = sliced_wasserstein(x, y, generator=g), sliced_wasserstein(x, z, generator=g)
    assert same < 0.15 < shifted
    assert abs(mmd(x, y)) < 0.01 < mmd(x, z)
    # one projection direction on 1-D data is the exact W2 of the two sorted samples
    a, b = torch.randn(50, 1, generator=g), torch.randn(50, 1, generator=g) + 2
    exact = float(((a.sort(0).values - b.sort(0).values) ** 2).mean().sqrt())
    assert sliced_wasserstein(a, b, n_projections=3, generator=g) == pytest.approx(exact)


def test_evaluate_writes_json_with_floors(run_dir, tmp_path):
    out = tmp_path / "ev.json"
    res = CliRunner().invoke(main, ["evaluate", str(run_dir), "-n", "400", "--nll-n", "20", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = {r["metric"]: r for r in json.loads(out.read_text())["rows"]}
    assert {"nll (nats/dim)", "sliced W2", "MMD^2", "moment KL", "mode TV"} <= set(rows)
    assert rows["sliced W2"]["floor"] > 0 and np.isfinite(rows["nll (nats/dim)"]["model"])
    assert rows["nll (nats/dim)"]["floor"] is not None  # the ring's exact log-density
    assert "sliced W2" in res.output and "floor" in res.output


def test_evaluate_bad_input_is_one_line(run_dir, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((10, 3), dtype=np.float32))
    res = CliRunner().invoke(main, ["evaluate", str(run_dir), "--data", str(bad)])
    assert res.exit_code == 2 and "shape" in res.output and res.output.strip().count("\n") == 0
    data = tmp_path / "d.npy"
    np.save(data, np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32))
    file_run = tmp_path / "filerun"
    res = CliRunner().invoke(main, ["train", "toy", "--set", f"data.path={data}", "--set", "train.steps=5",
                                    "--out", str(file_run), "--quiet"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["evaluate", str(file_run)])
    assert res.exit_code == 2 and "--data HELDOUT.npy" in res.output and res.output.strip().count("\n") == 0


def test_evaluate_passes_method_options_and_refuses_unknown_ones(run_dir, tmp_path):
    """``--opt`` reaches the sampler (a different grid, different samples and distances) and is checked against the
    method before anything runs: an unknown key is one line naming the method's options."""
    def sliced(extra):
        out = tmp_path / f"ev{len(extra)}.json"
        res = CliRunner().invoke(main, ["evaluate", str(run_dir), "-n", "300", "--nll-n", "0", "--method", "unipc",
                                        "--nfe", "8", "--out", str(out), *extra])
        assert res.exit_code == 0, res.output
        return {r["metric"]: r["model"] for r in json.loads(out.read_text())["rows"]}["sliced W2"]

    own, uniform = sliced([]), sliced(["--opt", "grid=uniform"])
    assert np.isfinite(own) and np.isfinite(uniform) and own != uniform
    res = CliRunner().invoke(main, ["evaluate", str(run_dir), "--method", "unipc", "--opt", "ordr=3"])
    assert res.exit_code == 2 and "ordr" in res.output and "order" in res.output
    assert res.output.strip().count("\n") == 0
    res = CliRunner().invoke(main, ["evaluate", str(run_dir), "--nfe", "10", "--opt", "variant=bh9"])
    assert res.exit_code == 2 and "bh9" in res.output and res.output.strip().count("\n") == 0  # the default at 10
