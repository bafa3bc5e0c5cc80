"""Data splits, the data's known range (data_info) and the channels-last refusal, at the data and config layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scorelab.config import build_data, load_config, load_data
from scorelab.data import channels_last_hint, digits, fashion_mnist, load_dataset
from test_data import fake_fashion


def digits_section(**kw):
    return load_config({"data": {"name": "digits", "scale": [-1, 1], **kw}})["data"]


def test_load_dataset_digits_splits_and_info():
    x, info = load_dataset("digits")
    assert x.shape == (1498, 1, 8, 8)
    assert info == {"shape": [1, 8, 8], "range": [0.0, 16.0], "levels": 17, "source": "digits", "split": "train"}
    xt, it = load_dataset("digits", split="test")
    assert xt.shape[0] == 299 and it["split"] == "test"
    assert torch.equal(xt, digits("test").x)
    xa, _ = load_dataset("digits", split="all")
    assert xa.shape[0] == 1797
    # train and test are disjoint parts of all: every image of all is in exactly one of them
    assert x.shape[0] + xt.shape[0] == xa.shape[0]


def test_known_range_survives_a_subset():
    """A subset's own min/max is not the data's range: a few dark images must still map 16 -> +1, 0 -> -1."""
    section = digits_section(n=3, seed=1)
    x, scaler, info = load_data(section)
    raw = scaler.inverse(x)
    assert info["range"] == [0.0, 16.0] and info["levels"] == 17
    assert torch.allclose(scaler.forward(torch.tensor([0.0, 16.0])), torch.tensor([-1.0, 1.0]))
    assert float(raw.max()) <= 16 and float(x.min()) >= -1 - 1e-6
    # the sample min/max fit would have stretched the subset's own range onto [-1, 1] instead
    dark = digits("train").x[:3] * 0.5
    _, scaler2, info2 = load_data(section, x=dark)
    assert info2["levels"] is None and info2["range"] == [float(dark.min()), float(dark.max())]
    assert torch.allclose(scaler2.forward(dark).amax(), torch.tensor(1.0))


def test_files_and_toys_record_their_own_range(tmp_path):
    arr = np.arange(24, dtype=np.float32).reshape(6, 4) - 5
    np.save(tmp_path / "x.npy", arr)
    x, info = load_dataset(str(tmp_path / "x.npy"))
    assert info == {"shape": [4], "range": [-5.0, 18.0], "levels": None, "source": str(tmp_path / "x.npy"),
                    "split": None}
    _, info = load_dataset("ring", n=50, generator=torch.Generator().manual_seed(0))
    assert info["levels"] is None and info["shape"] == [2]


@pytest.mark.parametrize("source", ["ring", "FILE"])
def test_split_refused_for_sources_without_one(tmp_path, source):
    if source == "FILE":
        np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
        source = str(tmp_path / "x.npy")
    with pytest.raises(ValueError, match="have splits; .* has none") as e:
        load_dataset(source, split="test")
    assert "\n" not in str(e.value)
    key = "path" if source.endswith(".npy") else "name"
    with pytest.raises(ValueError, match=r"data.split='test', but data\.\w+ .* has no splits") as e:
        load_config({"data": {key: source, "split": "test"}})
    assert "--set data.split=null" in str(e.value) and "\n" not in str(e.value)


def test_config_split_choices_and_path_override_clears_split():
    assert load_config({"data": {"name": "digits"}})["data"]["split"] is None  # None: the set's default, train
    assert load_config({"data": {"name": "digits", "split": "all"}})["data"]["split"] == "all"
    with pytest.raises(ValueError, match=r"data.split must be one of \['train', 'test', 'all'\]"):
        load_config({"data": {"name": "digits", "split": "valid"}})
    cfg = load_config({"data": {"name": "digits", "split": "test"}}, ["data.path=x.npy"])
    assert cfg["data"]["split"] is None and cfg["data"]["name"] is None


def test_fashion_mnist_all_is_train_then_test(tmp_path):
    tr, _ = fake_fashion(tmp_path, n=3, split="train")
    te, _ = fake_fashion(tmp_path, n=2, split="test")
    d = fashion_mnist("all", root=tmp_path)
    assert d.x.shape == (5, 1, 28, 28) and d.levels == 256
    assert np.array_equal(d.x[:3, 0].numpy(), tr) and np.array_equal(d.x[3:, 0].numpy(), te)


def test_channels_last_refused_with_one_line(tmp_path):
    x = np.random.default_rng(0).random((5, 8, 8, 3)).astype(np.float32)
    np.save(tmp_path / "nhwc.npy", x)
    cfg = load_config({"data": {"path": str(tmp_path / "nhwc.npy")}})
    with pytest.raises(ValueError, match=r"channels-last.*transpose.*data.layout=nchw") as e:
        build_data(cfg["data"])
    assert "\n" not in str(e.value)
    # the escape hatch: 8 channels of 8 x 3 images, as the user says
    cfg = load_config({"data": {"path": str(tmp_path / "nhwc.npy"), "layout": "nchw"}})
    assert build_data(cfg["data"])[0].shape == (5, 8, 8, 3)
    # images already channels-first, and shapes that are not images, pass
    assert channels_last_hint((5, 3, 8, 8)) is None and channels_last_hint((5, 1, 28, 28)) is None
    assert channels_last_hint((5, 8, 8)) is None and channels_last_hint((5, 16)) is None
    assert channels_last_hint((5, 28, 28, 1)) is not None and channels_last_hint((5, 32, 32, 4)) is not None
    with pytest.raises(ValueError, match="data.layout must be one of"):
        load_config({"data": {"name": "digits", "layout": "nhwc"}})


def test_a_path_named_like_a_builtin_set_is_the_path(tmp_path, monkeypatch):
    from PIL import Image

    (tmp_path / "digits").mkdir()
    for k in range(2):
        Image.fromarray(np.full((5, 5), 40 * k, np.uint8), mode="L").save(tmp_path / "digits" / f"{k}.png")
    monkeypatch.chdir(tmp_path)
    x, _, info = load_data(load_config({"data": {"path": "digits", "scale": [-1, 1]}})["data"])
    assert x.shape == (2, 1, 5, 5) and info["levels"] == 256 and info["range"] == [0.0, 255.0]
    assert info["source"] == "digits" and info["split"] is None
