"""Data sets: toys against their definitions and oracles, file loading, image parsing, scaling."""

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from scorelab.data import (
    TOYS,
    AffineScaler,
    dataset_names,
    digits,
    fashion_mnist,
    get_dataset,
    load_array,
    toy_mixture,
)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- toys ----

@pytest.mark.parametrize("name", sorted(TOYS))
def test_toy_shape_dtype_and_seeding(name):
    a, b, c = TOYS[name](500, gen(0)), TOYS[name](500, gen(0)), TOYS[name](500, gen(1))
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert bool(torch.isfinite(a).all())
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError):
        TOYS[name](0, gen(0))


# the definitions from the task: (weights, means, isotropic std) written out independently of data.py
_angles = [2 * math.pi * k / 8 for k in range(8)]
SPECS = {
    "ring": (list(range(1, 9)), [[4 * math.cos(a), 4 * math.sin(a)] for a in _angles], 0.15),
    "grid": ([1] * 25, [[i, j] for i in (-4, -2, 0, 2, 4) for j in (-4, -2, 0, 2, 4)], 0.1),
    "two_modes": ([0.2, 0.8], [[-5, -5], [5, 5]], 1.0),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_mixture_toys_match_their_definition_and_oracle(name):
    w, mu, std = SPECS[name]
    w = torch.tensor(w, dtype=torch.float64) / sum(w)
    mu = torch.tensor(mu, dtype=torch.float64)
    gmm = toy_mixture(name)
    order = torch.argsort(gmm.means[:, 0] * 100 + gmm.means[:, 1])
    ref = torch.argsort(mu[:, 0] * 100 + mu[:, 1])
    assert torch.allclose(gmm.means[order], mu[ref], atol=1e-12)
    assert torch.allclose(gmm.weights[order], w[ref], atol=1e-12)
    assert torch.allclose(gmm.covs, std**2 * torch.eye(2, dtype=torch.float64).expand(gmm.K, 2, 2))

    n = 20000
    x = TOYS[name](n, gen(5)).double()
    # moments of the mixture in closed form
    mean = (w[:, None] * mu).sum(0)
    cov = (w[:, None, None] * (std**2 * torch.eye(2, dtype=torch.float64) + mu[:, :, None] * mu[:, None, :])).sum(0)
    cov = cov - mean[:, None] * mean[None, :]
    se = (cov.diagonal() / n).sqrt()
    assert bool(((x.mean(0) - mean).abs() < 5 * se).all())
    assert torch.allclose(torch.cov(x.T), cov, rtol=0.05, atol=0.05 * float(cov.diagonal().max()))
    # E[log p(x)] = -H; for components this well separated H = H(weights) + H(N(0, std^2 I)) to ~1e-6
    H = -(w * w.log()).sum() + math.log(2 * math.pi * math.e * std**2)
    lp = gmm.log_prob(x).double()
    assert float(lp.mean()) == pytest.approx(-float(H), abs=5 * float(lp.std()) / math.sqrt(n))


def test_two_modes_weights():
    x = TOYS["two_modes"](20000, gen(2))
    frac = float((x.sum(1) > 0).double().mean())
    assert frac == pytest.approx(0.8, abs=4 * math.sqrt(0.16 / 20000))


def test_toy_mixture_rejects_other_toys():
    with pytest.raises(ValueError, match="two_modes"):
        toy_mixture("moons")


def test_checkerboard_is_uniform_on_the_black_squares():
    x = TOYS["checkerboard"](16000, gen(3)).double()
    assert bool((x.abs() <= 4).all())
    i, j = torch.floor((x[:, 0] + 4) / 2).long(), torch.floor((x[:, 1] + 4) / 2).long()
    assert bool(((i + j) % 2 == 0).all())
    black = [a * 4 + b for a in range(4) for b in range(4) if (a + b) % 2 == 0]
    counts = torch.bincount(i * 4 + j, minlength=16)[black]
    assert float((counts - 2000).abs().max()) < 5 * math.sqrt(2000)


def test_circles_radii():
    r = TOYS["circles"](10000, gen(4)).double().norm(dim=1)
    inner = r < 3
    assert float(inner.double().mean()) == pytest.approx(0.5, abs=0.03)
    assert float(r[inner].mean()) == pytest.approx(2.0, abs=0.01)
    assert float(r[~inner].mean()) == pytest.approx(4.0, abs=0.01)


# ---- files ----

def test_load_array_npy_round_trip(tmp_path):
    a = np.random.default_rng(0).normal(size=(7, 3, 2)).astype(np.float64)
    np.save(tmp_path / "a.npy", a)
    x = load_array(tmp_path / "a.npy")
    assert x.dtype == torch.float32 and x.shape == (7, 3, 2)
    assert np.allclose(x.numpy(), a, atol=1e-6)
    assert torch.equal(get_dataset(str(tmp_path / "a.npy")), x)
    sub = get_dataset(str(tmp_path / "a.npy"), n=3, generator=gen(0))
    assert sub.shape == (3, 3, 2)
    assert all(any(torch.equal(r, row) for row in x) for r in sub)


@pytest.mark.parametrize("header", [True, False])
def test_load_array_csv_round_trip(tmp_path, header):
    a = np.random.default_rng(1).normal(size=(5, 3))
    path = tmp_path / "a.csv"
    np.savetxt(path, a, delimiter=",", header="u,v,w" if header else "", comments="")
    if not header:  # savetxt writes an empty first line for header=""; write without it
        path.write_text("\n".join(",".join(repr(float(v)) for v in row) for row in a) + "\n")
    x = load_array(path)
    assert x.shape == (5, 3)
    assert np.allclose(x.numpy(), a, atol=1e-6)


def test_load_array_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="missing.npy"):
        load_array(tmp_path / "missing.npy")
    (tmp_path / "a.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"\.npy or \.csv"):
        load_array(tmp_path / "a.txt")
    np.save(tmp_path / "flat.npy", np.arange(5.0))
    with pytest.raises(ValueError, match=r"\[N, \*dims\]"):
        load_array(tmp_path / "flat.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"\[N, \*dims\]"):
        load_array(tmp_path / "empty.npy")
    bad = np.ones((6, 2))
    bad[1, 0] = np.nan
    bad[4, 1] = np.inf
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match=r"2 non-finite.*rows 1, 4"):
        load_array(tmp_path / "nan.npy")
    (tmp_path / "words.csv").write_text("a,b\n1,2\nx,y\n")
    with pytest.raises(ValueError, match="numeric"):
        load_array(tmp_path / "words.csv")
    np.save(tmp_path / "str.npy", np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="numeric"):
        load_array(tmp_path / "str.npy")


def test_get_dataset_names_and_errors():
    assert get_dataset("ring").shape == (10000, 2)
    assert torch.equal(get_dataset("moons", n=50, generator=gen(0)), TOYS["moons"](50, gen(0)))
    with pytest.raises(ValueError) as err:
        get_dataset("mnist")
    for name in ("ring", "digits", "fashion_mnist", ".npy"):
        assert name in str(err.value)
    assert set(TOYS) <= set(dataset_names())


# ---- images ----

def test_digits():
    d = digits("all")
    assert d.x.shape == (1797, 1, 8, 8) and d.x.dtype == torch.float32
    assert float(d.x.min()) == 0 and float(d.x.max()) == 16 and d.levels == 17
    assert torch.equal(d.x, d.x.round())
    assert d.y.shape == (1797,) and set(d.y.tolist()) == set(range(10))
    assert get_dataset("digits").shape == (1498, 1, 8, 8)  # the train split by default


def test_digits_split_is_fixed_disjoint_and_covers_every_class():
    train, test, full = digits("train"), digits("test"), digits("all")
    assert train.x.shape[0] == 1498 and test.x.shape[0] == 299
    assert torch.equal(test.x, full.x[5::6]) and torch.equal(test.y, full.y[5::6])
    assert torch.equal(torch.cat([train.x, test.x]).sort(0).values, full.x.sort(0).values)
    assert set(test.y.tolist()) == set(range(10)) and set(train.y.tolist()) == set(range(10))
    assert torch.equal(get_dataset("digits", split="test"), test.x)
    with pytest.raises(ValueError, match="split must be one of"):
        digits("validation")


def write_idx(path: Path, arr: np.ndarray, magic_type=0x08, truncate=0):
    header = bytes([0, 0, magic_type, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(data[: len(data) - truncate])


def fake_fashion(root: Path, n=4, split="train", **kw):
    rng = np.random.default_rng(0)
    prefix = "train" if split == "train" else "t10k"
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
    write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images, **kw)
    write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return images, labels


@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_parses_idx_files(tmp_path, split):
    images, labels = fake_fashion(tmp_path, split=split)
    d = fashion_mnist(split, root=tmp_path)
    assert d.x.shape == (4, 1, 28, 28) and d.levels == 256
    assert np.array_equal(d.x[:, 0].numpy(), images.astype(np.float32))
    assert np.array_equal(d.y.numpy(), labels)


def test_fashion_mnist_refuses_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist(root=tmp_path)
    fake_fashion(tmp_path, truncate=100)
    with pytest.raises(ValueError, match="truncated"):
        fashion_mnist(root=tmp_path)
    fake_fashion(tmp_path, magic_type=0x0D)  # float32 IDX: a different kind of file
    with pytest.raises(ValueError, match="magic"):
        fashion_mnist(root=tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="gzip"):
        fashion_mnist(root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        fashion_mnist("valid", root=tmp_path)


def test_fashion_mnist_real_data():
    root = Path("/usr/share/datasets/fashion-mnist")
    if not (root / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed: sudo apt-get install dataset-fashion-mnist")
    d = fashion_mnist("train")
    assert d.x.shape == (60000, 1, 28, 28)
    assert float(d.x.min()) == 0 and float(d.x.max()) == 255
    assert torch.bincount(d.y).tolist() == [6000] * 10
    assert fashion_mnist("test").x.shape == (10000, 1, 28, 28)


# ---- scaling ----

def scalers():
    x = torch.randn(50, 3, 2, generator=gen(0), dtype=torch.float64) * torch.tensor([1.0, 7.0]) + 3
    return x, [AffineScaler.from_range(0, 255), AffineScaler.fit(x, -1, 1), AffineScaler.standardize(x),
               AffineScaler(-2.5, 0.3)]


def test_scaler_inverse_and_log_det():
    x, ss = scalers()
    for s in ss:
        y = s.forward(x)
        fwd = s.forward
        assert torch.allclose(s.inverse(y), x, rtol=1e-12, atol=1e-12)
        jac = torch.autograd.functional.jacobian(lambda v, fwd=fwd: fwd(v.reshape(3, 2)).reshape(-1), x[0].reshape(-1))
        expected = torch.linalg.slogdet(jac)[1]
        lad = s.log_abs_det(x.shape)
        assert lad.shape == (50,)
        assert torch.allclose(lad, expected.expand(50), rtol=1e-12, atol=1e-12)
        assert torch.allclose(s.log_abs_det_per_dim((3, 2)), torch.log(jac.diagonal().abs()).reshape(3, 2))
        back = AffineScaler.from_state_dict(s.state_dict())
        assert torch.equal(back.forward(x), y)


def test_scaler_constructors_map_what_they_say():
    x, (pix, fit, std, _) = scalers()
    assert torch.allclose(pix.forward(torch.tensor([0.0, 255.0])), torch.tensor([-1.0, 1.0]))
    y = fit.forward(x)
    assert float(y.min()) == pytest.approx(-1) and float(y.max()) == pytest.approx(1)
    z = std.forward(x)
    assert torch.allclose(z.mean(0), torch.zeros(3, 2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(z.std(0), torch.ones(3, 2, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError):
        AffineScaler.from_range(1.0, 1.0)
    with pytest.raises(ValueError):
        AffineScaler(0.0, 1.0)


def test_image_folder_loads_gray_and_rgb_and_refuses_mixed_sizes(tmp_path):
    from PIL import Image

    from scorelab.data import get_dataset, load_image_folder

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (3, 5, 4), dtype=np.uint8)
    for i, a in enumerate(gray):
        Image.fromarray(a, mode="L").save(tmp_path / f"{i}.png")
    x = get_dataset(str(tmp_path))
    assert x.shape == (3, 1, 5, 4) and x.dtype == torch.float32
    assert np.array_equal(x[:, 0].numpy().astype(np.uint8), gray)
    rgb_dir = tmp_path / "rgb"
    rgb_dir.mkdir()
    rgb = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    for i, a in enumerate(rgb):
        Image.fromarray(a, mode="RGB").save(rgb_dir / f"{i}.png")
    y = load_image_folder(rgb_dir)
    assert y.shape == (2, 3, 4, 4) and np.array_equal(y.permute(0, 2, 3, 1).numpy().astype(np.uint8), rgb)
    Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8), mode="L").save(tmp_path / "9.png")
    with pytest.raises(ValueError, match="one size"):
        load_image_folder(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_image_folder(empty)
