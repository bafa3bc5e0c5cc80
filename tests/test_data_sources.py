"""Data from the PyTorch stack and from class-per-subfolder image trees; bundled configs before ./configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from scorelab.config import find_config, load_config
from scorelab.data import from_dataset, get_dataset, load_image_folder, load_labeled_image_folder


def _tree(root, sizes=(5, 4), classes=("cat", "dog", "emu"), per=(2, 3, 1), mode="L", seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    want = {}
    for c, k in zip(classes, per):
        (root / c).mkdir(parents=True)
        for i in range(k):
            shape = sizes if mode == "L" else (*sizes, 3)
            a = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(a, mode=mode).save(root / c / f"{i}.png")
            want.setdefault(c, []).append(a)
    return want


def test_labeled_image_folder_returns_images_labels_and_classes(tmp_path):
    want = _tree(tmp_path / "data")
    (tmp_path / "data" / ".hidden").mkdir()
    (tmp_path / "data" / "notes").mkdir()  # no images: not a class
    res = load_labeled_image_folder(tmp_path / "data")
    assert res.classes == ["cat", "dog", "emu"]
    assert res.x.shape == (6, 1, 5, 4) and res.x.dtype == torch.float32
    assert res.y.tolist() == [0, 0, 1, 1, 1, 2]
    for k, c in enumerate(res.classes):
        got = res.x[res.y == k][:, 0].numpy().astype(np.uint8)
        assert np.array_equal(got, np.stack(want[c]))
    # the unlabeled loaders accept the same tree (training through data.path)
    assert torch.equal(load_image_folder(tmp_path / "data"), res.x)
    assert get_dataset(str(tmp_path / "data")).shape == (6, 1, 5, 4)


def test_labeled_image_folder_rgb_and_errors(tmp_path):
    _tree(tmp_path / "rgb", mode="RGB", per=(1, 1, 1))
    assert load_labeled_image_folder(tmp_path / "rgb").x.shape == (3, 3, 5, 4)
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="class subfolders"):
        load_labeled_image_folder(tmp_path / "flat")
    with pytest.raises(ValueError, match="no image files"):
        load_image_folder(tmp_path / "flat")


def test_from_dataset_and_dataloader():
    x = torch.randn(10, 3)
    y = torch.arange(10)
    for source in (TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=3)):
        gx, gy = from_dataset(source)
        assert torch.equal(gx, x) and torch.equal(gy, y)
    gx, gy = from_dataset(TensorDataset(x), n=4)
    assert torch.equal(gx, x[:4]) and gy is None
    gx, _ = from_dataset([x[:5], x[5:]])  # any iterable of batches
    assert torch.equal(gx, x)
    with pytest.raises(ValueError, match="empty"):
        from_dataset(TensorDataset(torch.zeros(0, 2)))


def test_bundled_configs_come_before_local_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "toy.yaml").write_text("train: {steps: 7}\ndata: {name: moons}\n")
    (tmp_path / "configs" / "mine.yaml").write_text("train: {steps: 9}\ndata: {name: moons}\n")
    assert find_config("toy").parent.name == "configs" and find_config("toy").parent != tmp_path / "configs"
    assert load_config("toy")["train"]["steps"] != 7  # the bundled toy, not the local copy
    assert load_config("configs/toy.yaml")["train"]["steps"] == 7  # a path is taken as given
    assert load_config("mine")["train"]["steps"] == 9  # names the bundle lacks are found in ./configs


def test_train_from_a_dataloader_equals_training_from_the_same_file(tmp_path):
    from scorelab.run import load
    from scorelab.train import train

    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "x.npy", x.numpy())
    tiny = ["train.steps=4", "model.hidden=8", "model.depth=1", "model.embed_dim=4", "train.batch_size=8",
            "train.device=cpu", "data.scale=[-1, 1]"]
    train("toy", tmp_path / "file", overrides=[*tiny, f"data.path={tmp_path / 'x.npy'}"], progress=False)
    res = train("toy", tmp_path / "loader", overrides=tiny, progress=False,
                data=DataLoader(TensorDataset(x, torch.zeros(40)), batch_size=16))
    a, b = load(tmp_path / "file"), load(tmp_path / "loader")
    assert res.step == 4 and b.config["data"]["name"] == "external" and b.data_shape == (2,)
    for (k, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(va, vb), k  # the same data in memory: the same training, bit for bit
    torch.testing.assert_close(b.scaler.inverse(b.scaler.forward(x)), x)
    with pytest.raises(ValueError, match="NaN"):
        train("toy", tmp_path / "bad", overrides=tiny, progress=False, data=torch.full((8, 2), float("nan")))
