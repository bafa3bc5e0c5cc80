"""Data sets and the explicit, invertible scaling between data space and model space.

Every data set is a float32 tensor [N, *dims]: 2-D toys [N, 2], tabular vectors [N, D], images [N, C, H, W].

- ``TOYS``: 2-D toy samplers ``toy(n, generator) -> [n, 2]``. The mixture toys ("ring", "grid",
  "two_modes") are exact Gaussian mixtures, so ``toy_mixture(name)`` gives their analytic oracle (exact score
  and log-density of every perturbed p_t).
- ``load_array``: any .npy / .csv file.
- ``digits``: scikit-learn's bundled 8x8 digits (17 grey levels); ``fashion_mnist``: the IDX files of Debian's
  ``dataset-fashion-mnist`` package (256 grey levels). Both return ``ImageData(x, y, levels)``.
- ``AffineScaler``: y = scale * x + shift (data -> model) with its inverse and log|dy/dx|, which turns a
  density in model space into one in data space (bits/dim).
- ``get_dataset``: the one entry point of the config layer (a name or a file path).
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .oracle import GaussianMixture

# ---------------------------------------------------------------------------------------------------------
# 2-D toys
# ---------------------------------------------------------------------------------------------------------


def ring_mixture() -> GaussianMixture:
    """8 isotropic Gaussians, std 0.15, evenly on the circle of radius 4, weights proportional to 1..8."""
    angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 4.0 * torch.stack([angle.cos(), angle.sin()], 1)
    return GaussianMixture(torch.arange(1, 9, dtype=torch.float64), means, torch.full((8,), 0.15**2))


def grid_mixture() -> GaussianMixture:
    """5 x 5 equally weighted Gaussians, std 0.1, centres on the grid {-4, -2, 0, 2, 4}^2."""
    c = torch.arange(-4.0, 4.5, 2.0, dtype=torch.float64)
    means = torch.cartesian_prod(c, c)
    return GaussianMixture(torch.ones(25, dtype=torch.float64), means, torch.full((25,), 0.1**2))


def two_modes_mixture() -> GaussianMixture:
    """p = 0.2 N((-5, -5), I) + 0.8 N((5, 5), I): the mixture of Song & Ermon 2019 (Fig. 3), the lecture
    notes' p = pi p_1 + (1 - pi) p_2 whose score ignores pi away from the gap between the modes."""
    means = torch.tensor([[-5.0, -5.0], [5.0, 5.0]], dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.2, 0.8], dtype=torch.float64), means, torch.ones(2, dtype=torch.float64))


_MIXTURES: dict[str, Callable[[], GaussianMixture]] = {
    "ring": ring_mixture,
    "grid": grid_mixture,
    "two_modes": two_modes_mixture,
}


def toy_mixture(name: str) -> GaussianMixture:
    """The exact GaussianMixture of a mixture toy ("ring", "grid", "two_modes")."""
    if name not in _MIXTURES:
        raise ValueError(f"{name!r} is not a Gaussian-mixture toy; the mixture toys (with an exact score) are "
                         f"{sorted(_MIXTURES)}.")
    return _MIXTURES[name]()


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (number of samples) must be a positive integer, got {n!r}.")
    return n


def _mixture_toy(name: str):
    def sample(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return toy_mixture(name).sample(_check_n(n), generator=generator, dtype=torch.float32)
    sample.__doc__ = f"n samples [n, 2] of the {name!r} mixture (``toy_mixture({name!r})``)."
    return sample


def _rand(n: int, generator, *shape) -> torch.Tensor:
    return torch.rand(n, *shape, generator=generator, dtype=torch.float64)


def _randn(n: int, generator, *shape) -> torch.Tensor:
    return torch.randn(n, *shape, generator=generator, dtype=torch.float64)


def swiss_roll(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """2-D Swiss roll: t ~ U[1.5 pi, 4.5 pi], x = (t cos t, t sin t) / 3 + 0.1 N(0, I); range about [-4.5, 4.5]."""
    n = _check_n(n)
    t = 1.5 * math.pi * (1 + 2 * _rand(n, generator))
    x = torch.stack([t * t.cos(), t * t.sin()], 1) / 3 + 0.1 * _randn(n, generator, 2)
    return x.float()


def moons(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Two interleaved half circles of radius 1 (each with probability 1/2), noise std 0.05, then centred
    and scaled by 2: upper (cos a, sin a), lower (1 - cos a, 1/2 - sin a), a ~ U[0, pi]."""
    n = _check_n(n)
    a = math.pi * _rand(n, generator)
    lower = _rand(n, generator) < 0.5
    upper_pts = torch.stack([a.cos(), a.sin()], 1)
    lower_pts = torch.stack([1 - a.cos(), 0.5 - a.sin()], 1)
    x = torch.where(lower[:, None], lower_pts, upper_pts) + 0.05 * _randn(n, generator, 2)
    return (2 * (x - torch.tensor([0.5, 0.25], dtype=torch.float64))).float()


def checkerboard(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform on the 8 black squares of a 4 x 4 board of side-2 squares covering [-4, 4]^2
    (square (i, j) is black when i + j is even)."""
    n = _check_n(n)
    i = torch.randint(0, 4, (n,), generator=generator)
    j = 2 * torch.randint(0, 2, (n,), generator=generator) + i % 2
    corner = torch.stack([i, j], 1).to(torch.float64) * 2 - 4
    return (corner + 2 * _rand(n, generator, 2)).float()


def circles(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Two concentric circles of radius 4 and 2 (each with probability 1/2), radial noise std 0.1."""
    n = _check_n(n)
    a = 2 * math.pi * _rand(n, generator)
    radius = torch.where(_rand(n, generator) < 0.5, 2.0, 4.0) + 0.1 * _randn(n, generator)
    return (radius[:, None] * torch.stack([a.cos(), a.sin()], 1)).float()


TOYS: dict[str, Callable[..., torch.Tensor]] = {
    "ring": _mixture_toy("ring"),
    "grid": _mixture_toy("grid"),
    "two_modes": _mixture_toy("two_modes"),
    "swiss_roll": swiss_roll,
    "moons": moons,
    "checkerboard": checkerboard,
    "circles": circles,
}

# ---------------------------------------------------------------------------------------------------------
# arrays on disk
# ---------------------------------------------------------------------------------------------------------


def _read_csv(path: Path) -> np.ndarray:
    # utf-8-sig: a byte-order mark (as spreadsheet programs write) is not part of the first value
    try:
        with open(path, encoding="utf-8-sig") as fh:
            lines = fh.read().splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}; Latin-1 or another encoding?); "
                         "save the CSV as UTF-8.") from None
    first = lines[0] if lines else ""
    try:
        [float(v) for v in first.strip().split(",")]
        skip = 0
    except ValueError:  # a non-numeric first row is a header
        skip = 1
    try:
        return np.loadtxt(lines, delimiter=",", skiprows=skip, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise ValueError(f"{path}: the CSV must be numeric, comma-separated, with at most one header row "
                         f"({' '.join(str(err).split())[:200]}).") from None


def _check_npy_header(p: Path) -> None:
    """Refuse, before reading, a .npy whose header announces more data than the file holds (or a dtype that is
    not plain numbers): loading it would try to allocate what the header claims."""
    from numpy.lib import format as npy_format

    try:
        with open(p, "rb") as f:
            version = npy_format.read_magic(f)
            read = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}.get(version)
            if read is None:
                return  # a newer format: np.load explains
            shape, _, dtype = read(f, max_header_size=10000)
            offset = f.tell()
    except (ValueError, OSError, SyntaxError, TypeError, EOFError) as err:
        raise ValueError(f"{p}: not a readable .npy file ({' '.join(str(err).split())[:200]}); save it with "
                         "np.save(path, array).") from None
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"{p}: the array is complex ({dtype}); data must be real: save x.real and x.imag as "
                         "separate columns if both matter.")
    if dtype.hasobject or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise ValueError(f"{p}: the array has dtype {dtype}; a numeric array [N, *dims] is needed.")
    need = math.prod(shape) * dtype.itemsize
    have = p.stat().st_size - offset
    if need > have:
        raise ValueError(f"{p}: the header announces shape {list(shape)} ({need} bytes) but only {have} bytes "
                         "follow; the file is truncated or corrupt.")


def read_npy(path) -> np.ndarray:
    """A real, numeric .npy array (any shape; NaN allowed), its header checked before anything is allocated."""
    p = Path(path)
    _check_npy_header(p)
    try:
        arr = np.load(p, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{p}: not a plain numeric .npy array ({err}); save it with np.save(path, array) "
                         "from a numeric array.") from None
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{p}: the array has dtype {arr.dtype}; a numeric array [N, *dims] is needed.")
    return arr


def load_array(path) -> torch.Tensor:
    """A .npy or .csv file -> float32 tensor [N, *dims] (N examples; a CSV gives [N, columns]).

    A CSV is numeric and comma-separated; a non-numeric first row is taken as a header and skipped.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".csv"):
        raise ValueError(f"{p}: unsupported file type {p.suffix or '(none)'!r}; give a .npy or .csv file "
                         "holding an array [N, *dims].")
    if not p.is_file():
        raise ValueError(f"data file not found: {p} (resolved to {p.resolve()}); check the path.")
    if suffix == ".npy":
        arr = read_npy(p)
    else:
        arr = _read_csv(p)
    if arr.ndim < 2 or arr.shape[0] == 0 or 0 in arr.shape:
        raise ValueError(f"{p}: expected an array [N, *dims] (N examples along the first axis, e.g. [N, 2] for "
                         f"2-D points or [N, C, H, W] for images), got shape {list(arr.shape)}; a single "
                         "vector of scalars should be reshaped to [N, 1].")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        rows = bad.reshape(x.shape[0], -1).any(1).nonzero().flatten()
        shown = ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if rows.numel() > 5 else "")
        raise ValueError(f"{p}: {int(bad.sum())} non-finite value(s) (NaN/inf, or beyond float32's range) in "
                         f"{rows.numel()} example(s) (rows {shown}); drop or impute those rows in the file.")
    return x


# ---------------------------------------------------------------------------------------------------------
# image data sets
# ---------------------------------------------------------------------------------------------------------


class ImageData(NamedTuple):
    """Quantised images: x float32 [N, C, H, W] holding integers in {0, ..., levels - 1}, y int64 labels [N]."""

    x: torch.Tensor
    y: torch.Tensor
    levels: int


DIGITS_SPLITS = ("train", "test", "all")


def digits(split: str = "train") -> ImageData:
    """scikit-learn's 8x8 handwritten digits (bundled, no download): x [N, 1, 8, 8] in {0, ..., 16}
    (levels = 17), y in {0, ..., 9}.

    The split is fixed and needs no random draw: every sixth image (index % 6 == 5) is the test split
    (299 images, every class present), the other 1498 the train split; ``"all"`` gives the 1797 images.
    """
    from ._extras import require

    if split not in DIGITS_SPLITS:
        raise ValueError(f"split must be one of {list(DIGITS_SPLITS)} for digits, got {split!r}.")
    d = require("sklearn.datasets", "data", "the digits data set (scikit-learn)").load_digits()
    x = torch.from_numpy(d.images.astype(np.float32)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(d.target.astype(np.int64))
    if split != "all":
        test = torch.arange(x.shape[0]) % 6 == 5
        keep = test if split == "test" else ~test
        x, y = x[keep], y[keep]
    return ImageData(x, y, 17)


FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist installs
_IDX_FILES = {"train": "train", "test": "t10k"}


def read_idx(path, ndim: int) -> np.ndarray:
    """An IDX file (gzip-compressed when the name ends in .gz) of unsigned bytes with ``ndim`` axes.

    Layout: two zero bytes, type code 0x08 (ubyte), the number of axes, one big-endian int32 per axis,
    then the data in C order.
    """
    p = Path(path)
    try:
        raw = gzip.open(p).read() if p.suffix == ".gz" else p.read_bytes()
    except (OSError, EOFError) as err:
        raise ValueError(f"{p}: not a readable gzip IDX file ({err}); the file is truncated or foreign, "
                         "reinstall it.") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        magic = raw[:4].hex() if len(raw) >= 4 else raw.hex()
        raise ValueError(f"{p}: bad IDX magic number 0x{magic} (expected 0x000008{ndim:02x}: unsigned bytes, "
                         f"{ndim} axes); not an IDX file of this kind.")
    shape = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    size = math.prod(shape)
    if len(raw) - header != size:
        raise ValueError(f"{p}: the header announces shape {list(shape)} ({size} bytes) but {len(raw) - header} "
                         "bytes follow; the file is truncated or corrupt.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _idx_path(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


FASHION_MNIST_SPLITS = ("train", "test", "all")


def fashion_mnist(split: str = "train", root=FASHION_MNIST_ROOT) -> ImageData:
    """Fashion-MNIST (Xiao et al. 2017) from the IDX files under ``root``: x [N, 1, 28, 28] in
    {0, ..., 255} (levels = 256), y in {0, ..., 9}; N = 60000 (train), 10000 (test, the official test set) or
    70000 (all: train then test)."""
    if split not in FASHION_MNIST_SPLITS:
        raise ValueError(f"split must be one of {list(FASHION_MNIST_SPLITS)} for fashion_mnist, got {split!r}.")
    if split == "all":
        parts = [fashion_mnist(s, root) for s in ("train", "test")]
        return ImageData(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]), 256)
    root = Path(root)
    prefix = _IDX_FILES[split]
    img_path = _idx_path(root, f"{prefix}-images-idx3-ubyte")
    lab_path = _idx_path(root, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lab_path is None:
        raise FileNotFoundError(f"Fashion-MNIST not found in {root}: install Debian's package dataset-fashion-mnist "
                                "(sudo apt-get install dataset-fashion-mnist) or pass root=.")
    images, labels = read_idx(img_path, 3), read_idx(lab_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{img_path} holds {images.shape[0]} images but {lab_path} holds {labels.shape[0]} labels.")
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
    return ImageData(x, torch.from_numpy(labels.astype(np.int64)), 256)


# ---------------------------------------------------------------------------------------------------------
# scaling between data space and model space
# ---------------------------------------------------------------------------------------------------------


class AffineScaler:
    """y = scale * x + shift, data space -> model space; scale and shift are scalars or broadcast against
    one example [*dims] (per-dimension).

    The Jacobian is diagonal, so log|det dy/dx| = sum_i log|scale_i| for every example and densities convert as
    log p_x(x) = log p_y(y) + log|det dy/dx|.
    """

    def __init__(self, scale, shift):
        self.scale = torch.as_tensor(scale, dtype=torch.float64).clone()
        self.shift = torch.as_tensor(shift, dtype=torch.float64).clone()
        if not bool(torch.isfinite(self.scale).all() & torch.isfinite(self.shift).all()):
            raise ValueError("scale and shift must be finite.")
        if bool((self.scale == 0).any()):
            raise ValueError("scale must be non-zero everywhere (the map must be invertible); a constant data "
                             "dimension needs scale 1.")
        try:
            torch.broadcast_shapes(self.scale.shape, self.shift.shape)
        except RuntimeError:
            raise ValueError(f"scale {list(self.scale.shape)} and shift {list(self.shift.shape)} do not "
                             "broadcast together.") from None

    def __repr__(self) -> str:
        if self.scale.numel() == 1 and self.shift.numel() == 1:
            return f"AffineScaler(scale={float(self.scale):.6g}, shift={float(self.shift):.6g})"
        return f"AffineScaler(scale{list(self.scale.shape)}, shift{list(self.shift.shape)})"

    # ---- constructors ----
    @classmethod
    def from_range(cls, lo, hi, target=(-1.0, 1.0)) -> AffineScaler:
        """Maps [lo, hi] onto target = (a, b): e.g. pixels [0, 255] -> [-1, 1] (DDPM's scaling)."""
        lo, hi = torch.as_tensor(lo, dtype=torch.float64), torch.as_tensor(hi, dtype=torch.float64)
        a, b = (float(v) for v in target)
        if not a < b:
            raise ValueError(f"target must be (a, b) with a < b, got {tuple(target)}.")
        if not bool((hi > lo).all()):
            raise ValueError(f"need lo < hi to map a range, got lo={lo.tolist()}, hi={hi.tolist()} (constant data "
                             "cannot be rescaled to a range).")
        scale = (b - a) / (hi - lo)
        return cls(scale, a - scale * lo)

    @classmethod
    def fit(cls, x: torch.Tensor, lo: float = -1.0, hi: float = 1.0) -> AffineScaler:
        """Maps the data's range [x.min(), x.max()] (one scalar map for all dimensions) onto [lo, hi]."""
        x = _as_data(x)
        return cls.from_range(float(x.min()), float(x.max()), target=(lo, hi))

    @classmethod
    def standardize(cls, x: torch.Tensor) -> AffineScaler:
        """Per-dimension (x - mean) / std over the data set x [N, *dims]; a constant dimension keeps scale 1."""
        x = _as_data(x).to(torch.float64)
        if x.shape[0] < 2:
            raise ValueError("standardize needs at least 2 examples to estimate a standard deviation.")
        mean, std = x.mean(0), x.std(0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        return cls(1 / std, -mean / std)

    # ---- the map ----
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = scale * x + shift (data -> model), same shape and dtype as x (floating)."""
        dt = x.dtype if x.is_floating_point() else torch.float32
        return x.to(dt) * self.scale.to(x.device, dt) + self.shift.to(x.device, dt)

    __call__ = forward

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """x = (y - shift) / scale (model -> data)."""
        dt = y.dtype if y.is_floating_point() else torch.float32
        return (y.to(dt) - self.shift.to(y.device, dt)) / self.scale.to(y.device, dt)

    def log_abs_det_per_dim(self, dims) -> torch.Tensor:
        """log|dy_i/dx_i| for one example of shape ``dims``: float64 tensor [*dims]."""
        return torch.log(self.scale.abs()).expand(torch.broadcast_shapes(self.scale.shape, tuple(dims))).clone()

    def log_abs_det(self, x_shape) -> torch.Tensor:
        """log|det dy/dx| of each example for a batch of shape (B, *dims): float64 [B] (all entries equal)."""
        x_shape = tuple(int(s) for s in x_shape)
        if len(x_shape) < 1:
            raise ValueError("x_shape must be (B, *dims).")
        total = self.log_abs_det_per_dim(x_shape[1:]).sum()
        return total.expand(x_shape[0]).clone()

    # ---- persistence (JSON-friendly) ----
    def state_dict(self) -> dict:
        return {"scale": self.scale.tolist(), "shift": self.shift.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict) -> AffineScaler:
        if not isinstance(state, dict) or set(state) != {"scale", "shift"}:
            raise ValueError(f"a scaler state must be {{'scale': ..., 'shift': ...}}, got {state!r}.")
        return cls(state["scale"], state["shift"])


def _as_data(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[0] < 1:
        raise ValueError("x must be a data tensor [N, *dims] with N >= 1.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf; clean the data before fitting a scaler.")
    return x


# ---------------------------------------------------------------------------------------------------------
# one entry point
# ---------------------------------------------------------------------------------------------------------

_IMAGE_SETS: dict[str, Callable[..., ImageData]] = {"digits": digits, "fashion_mnist": fashion_mnist}
# the splits each built-in image set has (the first is the default); no other source has splits
IMAGE_SPLITS: dict[str, tuple[str, ...]] = {"digits": DIGITS_SPLITS, "fashion_mnist": FASHION_MNIST_SPLITS}
DEFAULT_TOY_SIZE = 10000
FOLDER_LEVELS = 256  # image folders are read as 8-bit grey or RGB (0..255)


def dataset_names() -> list[str]:
    """Every built-in data set name accepted by ``get_dataset``."""
    return sorted(TOYS) + sorted(_IMAGE_SETS)


def _subset(x: torch.Tensor, n, generator) -> torch.Tensor:
    if n is None:
        return x
    n = _check_n(n)
    if n >= x.shape[0]:
        return x
    return x[torch.randperm(x.shape[0], generator=generator)[:n]]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_image_folder(path, mode: str | None = None) -> torch.Tensor:
    """Every image file in a folder (sorted by name; Pillow) -> float32 tensor [N, C, H, W] of 0..255 values.

    ``mode`` is a Pillow mode to convert to ("L" gray, "RGB"); by default the first image's mode decides
    (gray stays 1 channel, anything else becomes RGB). All images must have the same size. A folder with no
    images but class subfolders (``root/cat/*.png``, ``root/dog/*.png``: torchvision's ImageFolder layout) gives
    all their images; ``load_labeled_image_folder`` also returns the labels.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"image folder {str(folder)!r} does not exist or is not a directory.")
    files = _image_files(folder)
    if not files and _class_dirs(folder):
        return load_labeled_image_folder(folder, mode).x
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}, nor class subfolders "
                         "holding them.")
    return _read_images(files, mode)


def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".") and _image_files(d))


def _read_images(files: list[Path], mode: str | None) -> torch.Tensor:
    from ._extras import require

    Image = require("PIL.Image", "data", "reading image folders (Pillow)")
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                mode = mode or ("L" if im.mode in ("L", "1", "I;16") else "RGB")
                arr = np.asarray(im.convert(mode), dtype=np.float32)
        except OSError as e:
            raise ValueError(f"cannot read image {str(f)!r} ({e}); remove it or fix the file.") from None
        if images and arr.shape != images[0].shape:
            raise ValueError(f"image {f.name} has size {arr.shape[:2]}, the first one {images[0].shape[:2]}; "
                             "resize the images to one size first.")
        images.append(arr)
    x = torch.from_numpy(np.stack(images))
    return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


class LabeledImages(NamedTuple):
    """Images of a class-per-subfolder tree: x float32 [N, C, H, W] in 0..255, y int64 [N] indexing ``classes``."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]


def load_labeled_image_folder(path, mode: str | None = None) -> LabeledImages:
    """``root/<class>/<image>`` -> LabeledImages(x, y, classes): classes are the subfolder names in sorted order
    (label k is ``classes[k]``, as torchvision's ImageFolder), images sorted by name within each class. Every
    subfolder holding images is a class; all images must share one size and (with ``mode=None``) the first
    image's mode decides gray or RGB for all."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"image folder {str(folder)!r} does not exist or is not a directory.")
    dirs = _class_dirs(folder)
    if not dirs:
        raise ValueError(f"{str(folder)!r} has no class subfolders with images; lay it out as "
                         f"{folder.name}/<class>/<image>.png (or use load_image_folder for a flat folder).")
    files = [(k, f) for k, d in enumerate(dirs) for f in _image_files(d)]
    if mode is None:  # one mode for all classes, decided by the first image
        mode = "L" if _read_images([files[0][1]], None).shape[1] == 1 else "RGB"
    x = _read_images([f for _, f in files], mode)
    y = torch.tensor([k for k, _ in files], dtype=torch.int64)
    return LabeledImages(x, y, [d.name for d in dirs])


def from_dataset(source, n: int | None = None, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A torch ``Dataset`` or ``DataLoader`` (or any iterable of examples / batches) materialised in memory:
    (x float32 [N, *dims], y [N] or None). Items may be tensors/arrays or (x, y) pairs, as torchvision-style
    data sets give; ``n`` stops after the first n examples. Save x with ``np.save`` and train on it with
    ``scorelab train npy --set data.path=x.npy``, or train in Python and write the run with
    ``scorelab.save_run``; training reads the in-memory tensor, the fast path for data that fits. Other
    iterables are read as batches [b, *dims]."""
    from torch.utils.data import DataLoader, Dataset

    n = None if n is None else _check_n(n)
    loader = DataLoader(source, batch_size=batch_size, shuffle=False) if isinstance(source, Dataset) else source
    xs, ys, count = [], [], 0
    for batch in loader:
        pair = isinstance(batch, (tuple, list))  # (x,) or (x, y, ...) as TensorDataset / ImageFolder give
        x, y = (batch[0], batch[1] if len(batch) > 1 else None) if pair else (batch, None)
        x = torch.as_tensor(x)
        xs.append(x.float())
        if y is not None:
            ys.append(torch.as_tensor(y).reshape(-1))
        count += x.shape[0]
        if n is not None and count >= n:
            break
    if not xs:
        raise ValueError("the data set is empty; give a Dataset or DataLoader with at least one example.")
    x = torch.cat(xs)[:n]
    y = torch.cat(ys)[:n] if len(ys) == len(xs) else None
    return x, y


def load_dataset(name_or_path, n: int | None = None, generator: torch.Generator | None = None,
                 split: str | None = None) -> tuple[torch.Tensor, dict]:
    """``get_dataset`` plus what the run must know about its data: (x float32 [N, *dims], data_info) with

        data_info = {"shape": [*dims], "range": [lo, hi], "levels": L or None, "source": name or path,
                     "split": the split or None}

    ``range`` is in data units: [0, levels - 1] for the quantised sets (digits 0..16, Fashion-MNIST 0..255,
    image folders 0..255), whatever values a subset happens to hold; for files and toys the data's own
    [min, max] (levels None). ``split`` (train | test | all) exists for the built-in image sets only; None there
    means their default, "train"; any other source has no split and refuses one.
    """
    name = name_or_path if isinstance(name_or_path, str) else None
    if name in _IMAGE_SETS:
        split = IMAGE_SPLITS[name][0] if split is None else split
        images = _IMAGE_SETS[name](split=split)
        x, levels = _subset(images.x, n, generator), images.levels
    else:
        if split is not None:
            raise ValueError(f"split={split!r}: only the built-in image sets {sorted(_IMAGE_SETS)} have splits; "
                             f"{str(name_or_path)!r} has none (hold out a file of your own and drop the split).")
        x = get_dataset(name_or_path, n=n, generator=generator)
        is_folder = isinstance(name_or_path, (str, Path)) and Path(name_or_path).is_dir()
        levels = FOLDER_LEVELS if is_folder else None
    return x, data_info(x, str(name_or_path), split, levels)


def data_info(x: torch.Tensor, source: str, split: str | None = None, levels: int | None = None) -> dict:
    """The data_info dict of ``load_dataset`` for data x [N, *dims] (data units): the range is [0, levels - 1]
    when the data is quantised to ``levels`` known levels, else x's own [min, max]."""
    if levels is not None:
        lo, hi = 0.0, float(levels - 1)
    else:
        lo, hi = float(x.min()), float(x.max())
    return {"shape": [int(d) for d in x.shape[1:]], "range": [lo, hi], "levels": levels, "source": source,
            "split": split}


def channels_last_hint(shape) -> str | None:
    """A sentence telling the user to transpose when ``shape`` [N, *dims] looks like channels-last images
    [N, H, W, C] (4 axes, the last 1, 3 or 4, axis 1 not), else None."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 4 and shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return (f"the data has shape {list(shape)}, which looks like channels-last images [N, H, W, C]; scorelab "
                f"takes images as [N, C, H, W]: transpose them (np.transpose(x, (0, 3, 1, 2))), or set "
                f"data.layout=nchw if axis 1 really holds {shape[1]} channels.")
    return None


def get_dataset(name_or_path, n: int | None = None, generator: torch.Generator | None = None, **kw) -> torch.Tensor:
    """A built-in data set or a file -> float32 tensor [N, *dims].

    A toy name gives n samples (default 10000) drawn with ``generator``; "digits" and "fashion_mnist" (options
    ``split=``, ``root=``) give their images, a path to a .npy/.csv file its array. For those, n < N keeps a
    random subset of n examples (drawn with ``generator``). A folder of images gives [N, C, H, W] in 0..255.
    """
    if isinstance(name_or_path, (str, Path)) and Path(name_or_path).is_dir():
        if kw:
            raise ValueError(f"unexpected options {sorted(kw)} for an image folder.")
        return _subset(load_image_folder(name_or_path), n, generator)
    looks_like_path = isinstance(name_or_path, str) and ("/" in name_or_path or Path(name_or_path).suffix != "")
    if isinstance(name_or_path, Path) or looks_like_path:  # load_array explains a wrong extension
        if kw:
            raise ValueError(f"unexpected options {sorted(kw)} for a data file.")
        return _subset(load_array(name_or_path), n, generator)
    if not isinstance(name_or_path, str):
        raise TypeError(f"data must be a data set name or a file path, got {type(name_or_path).__name__}.")
    name = name_or_path
    if name in TOYS:
        if kw:
            raise ValueError(f"unexpected options {sorted(kw)} for the toy {name!r} (it takes n and generator).")
        return TOYS[name](DEFAULT_TOY_SIZE if n is None else n, generator)
    if name in _IMAGE_SETS:
        return _subset(_IMAGE_SETS[name](**kw).x, n, generator)
    raise ValueError(f"unknown data set {name!r}; valid names: {dataset_names()}, or a path to a .npy/.csv file "
                     "[N, *dims].")


def _read_labels(path) -> torch.Tensor:
    y = read_npy(path)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(f"data.labels {str(path)!r} must be a 1-D .npy array of integer class labels [N], got dtype "
                         f"{y.dtype} and shape {list(y.shape)}; save it with np.save(f, y.astype(np.int64)).")
    y = torch.from_numpy(y.astype(np.int64))
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"data.labels {str(path)!r} holds a negative label ({int(y.min())}); labels are class "
                         "indices 0, ..., K - 1.")
    return y


def data_labels(name_or_path, labels=None, n: int | None = None, generator: torch.Generator | None = None,
                **kw) -> torch.Tensor | None:
    """The int64 class labels [N] that go with ``get_dataset(name_or_path, n, generator, **kw)`` (the same random
    subset when a fresh generator with the same seed is given), or None for a data set without labels.

    Mixture toys: the component of each draw; digits / fashion_mnist: their labels; an image folder with one
    subfolder per class: the class index; a .npy/.csv file: the labels in the .npy file ``labels`` (one per row).
    """
    if labels is not None:
        if not isinstance(name_or_path, (str, Path)) or Path(name_or_path).suffix.lower() not in (".npy", ".csv"):
            raise ValueError(f"data.labels goes with a data.path array (.npy/.csv), not with {name_or_path!r} (its "
                             "labels, if any, come with the data set).")
        y, rows = _read_labels(labels), load_array(name_or_path).shape[0]
        if y.shape[0] != rows:
            raise ValueError(f"data.labels {str(labels)!r} holds {y.shape[0]} labels but {str(name_or_path)!r} has "
                             f"{rows} examples; give one label per row.")
        return _subset(y, n, generator)
    if isinstance(name_or_path, (str, Path)) and Path(name_or_path).is_dir():
        folder = Path(name_or_path)
        if _image_files(folder) or not _class_dirs(folder):
            return None
        return _subset(load_labeled_image_folder(folder).y, n, generator)
    if name_or_path in _MIXTURES:
        gmm = toy_mixture(name_or_path)  # the first draw of gmm.sample: the components
        return torch.multinomial(gmm.weights, DEFAULT_TOY_SIZE if n is None else _check_n(n), replacement=True,
                                 generator=generator)
    if name_or_path in _IMAGE_SETS:
        return _subset(_IMAGE_SETS[name_or_path](**kw).y, n, generator)
    return None


__all__ = [
    "TOYS", "toy_mixture", "ring_mixture", "grid_mixture", "two_modes_mixture", "swiss_roll", "moons",
    "checkerboard", "circles", "load_array", "ImageData", "digits", "fashion_mnist", "read_idx",
    "AffineScaler", "get_dataset", "dataset_names", "load_image_folder", "load_labeled_image_folder",
    "LabeledImages", "from_dataset", "data_labels", "load_dataset", "data_info", "IMAGE_SPLITS",
    "channels_last_hint",
]
