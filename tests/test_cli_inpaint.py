"""``scorelab inpaint``: completes masked data with a run; bad input is one line with exit code 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import TINY, invoke, one_line_error
from scorelab import cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inpaint")
    np.save(d / "pts.npy", np.random.default_rng(2).standard_normal((64, 2)).astype(np.float32))
    res = invoke("train", "toy", "--set", f"data.path={d / 'pts.npy'}", "--set", "train.steps=3", *TINY,
                 "--out", d / "run")
    assert res.exit_code == 0, res.output
    x = np.array([[0.5, np.nan], [-1.0, np.nan], [2.0, 0.0]], dtype=np.float32)  # unknown entries may be NaN
    np.save(d / "x.npy", x)
    np.save(d / "mask.npy", np.array([1.0, 0.0], dtype=np.float32))  # one mask for every example
    np.save(d / "bad_mask.npy", np.ones((3, 3), dtype=np.float32))
    return d


def test_inpaint_keeps_the_known_entries_and_repeats_with_the_seed(files):
    outs = []
    for name in ("a.npy", "b.npy"):
        res = invoke("inpaint", files / "run", "--input", files / "x.npy", "--mask", files / "mask.npy",
                     "--out", files / name, "--nfe", 10, "--particles", 4)
        assert res.exit_code == 0, res.output
        outs.append(np.load(files / name))
    a = outs[0]
    assert a.shape == (3, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a[:, 0], [0.5, -1.0, 2.0])
    np.testing.assert_array_equal(outs[0], outs[1])
    res = invoke("inpaint", files / "run", "--input", files / "x.npy", "--mask", files / "mask.npy",
                 "--out", files / "c.npy", "--nfe", 10, "--method", "replacement", "--quiet")
    assert res.exit_code == 0 and res.output == "", res.output
    np.testing.assert_array_equal(np.load(files / "c.npy")[:, 0], a[:, 0])


def test_inpaint_bad_input_is_one_line(files):
    common = ["--input", files / "x.npy", "--nfe", 5]
    one_line_error(invoke("inpaint", files / "run", *common, "--mask", files / "bad_mask.npy", "--out",
                          files / "o.npy"), "--mask has shape (3, 3)")
    one_line_error(invoke("inpaint", files / "run", *common, "--mask", files / "mask.npy", "--out",
                          files / "o.txt"), "--out must end in")
    one_line_error(invoke("inpaint", files / "run", *common, "--mask", files / "mask.npy", "--out",
                          files / "o.npy", "--method", "pc", "--particles", 3), "--particles")
    one_line_error(invoke("inpaint", files / "run", *common, "--mask", files / "missing.npy", "--out",
                          files / "o.npy"), "not found")
    one_line_error(invoke("inpaint", files / "run", *common, "--mask", files / "mask.npy", "--out",
                          files / "o.npy", "--method", "heun"), "Unknown method")
    np.save(files / "complex.npy", np.ones((3, 2), dtype=complex))  # would drop the imaginary part silently
    one_line_error(invoke("inpaint", files / "run", "--input", files / "complex.npy", "--mask", files / "mask.npy",
                          "--out", files / "o.npy", "--nfe", 5), "--input", "complex")
    assert not (files / "o.npy").exists()


def test_png_input_reads_pixels_over_255(tmp_path):
    from PIL import Image

    img = np.zeros((4, 5, 3), dtype=np.uint8)
    img[1, 2] = (255, 51, 0)
    Image.fromarray(img).save(tmp_path / "rgb.png")
    Image.fromarray(img[..., 0]).save(tmp_path / "gray.png")
    x = cli._read_inpaint_file(str(tmp_path / "rgb.png"), "--input")
    assert x.shape == (1, 3, 4, 5) and torch.equal(x[0, :, 1, 2], torch.tensor([1.0, 0.2, 0.0]))
    assert cli._read_inpaint_file(str(tmp_path / "gray.png"), "--mask").shape == (1, 1, 4, 5)
