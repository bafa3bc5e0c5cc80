"""Classifiers p(y | x), clean or noise-conditional p_t(y | x_t): a small network, its training, save and load.

Two uses, one network:

* guidance needs a *noise-conditional* classifier p_t(y | x_t), trained with cross-entropy on data noised by
  the forward process, x_t = m(t) x_0 + s(t) z with t ~ U(t_min, T) (Song et al. 2021, Sec. 5 and App. I;
  Dhariwal & Nichol 2021). Its input is preconditioned like EDM's denoiser, x_t / sqrt(m^2 sigma_data^2 + s^2),
  and it sees the noise level as log(s / m) through Gaussian Fourier features, so one network covers every t;
* ``evaluate`` needs a *clean* classifier (``sde=None``) on the same data: its test accuracy is recorded, its
  pooled penultimate features are the space of the Fréchet distance and its confidence on samples says how
  recognisable they are.

Images ``[C, H, W]`` get a small residual CNN (two or three resolutions, global average pooling); vectors
``[D]`` an MLP. Training is deterministic: the initial weights, batches and noise come from ``seed``.
Saved as safetensors with the architecture (and the process, for noise-conditional ones) in the metadata,
written atomically; never pickled.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import batch_view

FORMAT = "scorelab-classifier"
T_MIN = 1e-3  # smallest training time of a noise-conditional classifier (the samplers' eps)


def _groups(c: int) -> int:
    return math.gcd(c, 8)


class _Block(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual path; the noise embedding is added between the convs."""

    def __init__(self, c_in: int, c_out: int, embed_dim: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(_groups(c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.emb = nn.Linear(embed_dim, c_out) if embed_dim else None
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, e):
        h = self.c1(F.silu(self.n1(x)))
        if self.emb is not None:
            h = h + self.emb(e)[:, :, None, None]
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class Classifier(nn.Module):
    """logits = Classifier(x [B, *shape], t [B] or None) -> [B, num_classes]; ``features`` the pooled layer.

    shape: one example's shape, ``(C, H, W)`` for images or ``(D,)`` for vectors.
    sde: the forward process for a noise-conditional classifier (then ``t`` is required), None for a clean one.
    sigma_data: the data's RMS in the space the classifier sees (inputs are divided by it, or by
    sqrt(m^2 sigma_data^2 + s^2) when noise-conditional); mean: the per-entry mean removed first (clean only).
    """

    def __init__(self, shape, num_classes: int, *, sde=None, width: int = 32, sigma_data: float = 1.0,
                 embed_dim: int = 64):
        super().__init__()
        self.shape, self.num_classes, self.sde, self.width = tuple(int(s) for s in shape), int(num_classes), sde, width
        if self.num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}.")
        if len(self.shape) not in (1, 3):
            raise ValueError(f"Classifier takes images (C, H, W) or vectors (D,), got example shape {list(shape)}.")
        self.register_buffer("sigma_data", torch.tensor(float(sigma_data)))
        self.register_buffer("mean", torch.zeros(self.shape))
        e = embed_dim if sde is not None else 0
        if sde is not None:
            from .models.embedding import GaussianFourierEmbedding

            self.embed = nn.Sequential(GaussianFourierEmbedding(embed_dim, scale=1.0), nn.Linear(embed_dim, e),
                                       nn.SiLU())
        if len(self.shape) == 3:
            c, h = self.shape[0], self.shape[1]
            chans = [width, 2 * width] + ([2 * width] if h >= 16 else [])
            self.stem = nn.Conv2d(c, width, 3, padding=1)
            self.blocks = nn.ModuleList(_Block(a, b, e) for a, b in zip([width] + chans[:-1], chans))
            self.out_norm = nn.GroupNorm(_groups(chans[-1]), chans[-1])
            self.feature_dim = chans[-1]
        else:
            hidden = 4 * width
            self.stem = nn.Linear(self.shape[0], hidden)
            self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(2))
            self.emb = nn.ModuleList(nn.Linear(e, hidden) for _ in range(2)) if e else None
            self.feature_dim = hidden
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def _inputs(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor | None]:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"the classifier was trained on examples of shape {list(self.shape)}, got "
                             f"{list(x.shape[1:])}.")
        if self.sde is None:
            return (x - self.mean) / self.sigma_data, None
        if t is None:
            raise ValueError("this classifier is noise-conditional: call it as classifier(x, t).")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        m, s = self.sde.marginal_scale(t), self.sde.marginal_std(t)
        c_in = torch.rsqrt(m**2 * self.sigma_data**2 + s**2)
        return x * batch_view(c_in, x), self.embed(torch.log(s / m) / 4)

    def features(self, x: torch.Tensor, t=None) -> torch.Tensor:
        """The pooled penultimate activations [B, feature_dim] (the Fréchet distance's space)."""
        h, e = self._inputs(x, t)
        if len(self.shape) == 3:
            h = self.stem(h)
            for k, block in enumerate(self.blocks):
                h = block(h, e)
                if k < len(self.blocks) - 1:
                    h = F.avg_pool2d(h, 2, ceil_mode=True)
            return F.silu(self.out_norm(h)).mean(dim=(2, 3))
        h = F.silu(self.stem(h))
        for k, layer in enumerate(self.blocks):
            h = layer(h) + (self.emb[k](e) if self.emb is not None else 0)
            h = F.silu(h)
        return h

    def forward(self, x: torch.Tensor, t=None) -> torch.Tensor:
        return self.head(self.features(x, t))

    def config(self) -> dict:
        from .config import sde_section

        return {"shape": list(self.shape), "num_classes": self.num_classes, "width": self.width,
                "sde": None if self.sde is None else sde_section(self.sde)}


def _check_xy(x, y) -> tuple[torch.Tensor, torch.Tensor, int]:
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or not x.dtype.is_floating_point:
        raise ValueError("x must be a float tensor [N, *dims].")
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.is_floating_point:
        raise ValueError(f"y must be an integer label tensor [N] matching x's {x.shape[0]} examples.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN/inf; drop or impute those examples before training a classifier.")
    if int(y.min()) < 0:
        raise ValueError("labels must be class indices >= 0.")
    return x.float(), y.long(), int(y.max()) + 1


def train_classifier(x: torch.Tensor, y: torch.Tensor, *, sde=None, num_classes: int | None = None, steps: int = 2000,
                     batch_size: int = 128, lr: float = 2e-3, width: int = 32, seed: int = 0,
                     device: str | torch.device = "cpu", progress: bool = False) -> Classifier:
    """Train a clean (``sde=None``) or noise-conditional classifier on x [N, *dims] (the space the model sees,
    e.g. scaled to [-1, 1]) with labels y [N]. Adam with a cosine-decayed learning rate; deterministic in
    ``seed``. Returns the network in eval mode on ``device``."""
    x, y, n_seen = _check_xy(x, y)
    num_classes = n_seen if num_classes is None else int(num_classes)
    if n_seen > num_classes:
        raise ValueError(f"labels go up to {n_seen - 1} but num_classes is {num_classes}.")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = Classifier(x.shape[1:], num_classes, sde=sde, width=width,
                         sigma_data=float(x.std()) if sde is not None else float((x - x.mean(0)).std()))
    if sde is None:
        clf.mean.copy_(x.mean(0))
    clf.to(device).train()
    g = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    from tqdm.auto import tqdm

    for _ in tqdm(range(steps), desc="classifier", disable=not progress, leave=False):
        idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=g)
        xb, yb, t = x[idx], y[idx], None
        if sde is not None:
            t = T_MIN + (sde.T - T_MIN) * torch.rand(xb.shape[0], generator=g)
            z = torch.randn(xb.shape, generator=g)
            xb = batch_view(sde.marginal_scale(t), xb) * xb + batch_view(sde.marginal_std(t), xb) * z
            t = t.to(device)
        loss = F.cross_entropy(clf(xb.to(device), t), yb.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return clf.eval()


@torch.no_grad()
def predict(clf: Classifier, x: torch.Tensor, t=None, batch_size: int = 1000) -> torch.Tensor:
    """Class probabilities [N, num_classes], in batches (float32, on the classifier's device)."""
    dev = next(clf.parameters()).device
    out = [F.softmax(clf(x[i:i + batch_size].to(dev), t), -1) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out)


@torch.no_grad()
def features(clf: Classifier, x: torch.Tensor, t=None, batch_size: int = 1000) -> torch.Tensor:
    """``clf.features`` over x in batches -> [N, feature_dim] float64 on the CPU."""
    dev = next(clf.parameters()).device
    return torch.cat([clf.features(x[i:i + batch_size].to(dev), t).double().cpu()
                      for i in range(0, x.shape[0], batch_size)])


def accuracy(clf: Classifier, x: torch.Tensor, y: torch.Tensor, t=None) -> float:
    """Share of x whose most probable class is y."""
    return float((predict(clf, x, t).argmax(-1).cpu() == y.cpu()).double().mean())


def save_classifier(clf: Classifier, path: str | Path, info: dict | None = None) -> Path:
    """Write the classifier (weights, architecture, optional JSON-able ``info``) atomically to ``path``."""
    from safetensors.torch import save_file

    from .checkpoint import _atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in clf.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(clf.config()), "info": json.dumps(info or {})}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """(classifier in eval mode, its ``info``) from a file written by ``save_classifier``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .config import build_sde

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no classifier file at {path}.")
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
        if meta.get("format") != FORMAT:
            raise ValueError("not written by scorelab's save_classifier")
        cfg, info = json.loads(meta["config"]), json.loads(meta["info"])
        sde = None if cfg["sde"] is None else build_sde(cfg["sde"])
        clf = Classifier(cfg["shape"], cfg["num_classes"], sde=sde, width=cfg["width"])
        clf.load_state_dict(tensors)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"{path}: not a readable scorelab classifier ({' '.join(str(err).split())[:160]}).") from None
    return clf.to(device).eval(), info


# ---- noise-conditional classifiers for a run's process and data (``scorelab classifier RUN_OR_CONFIG --out DIR``)

CLASSIFIER_FILE = "classifier.safetensors"  # inside the classifier directory


def train_for_run(source, *, steps: int = 2000, seed: int = 0, width: int = 32, batch_size: int = 128,
                  overrides=(), device: str | torch.device = "cpu", progress: bool = False) -> tuple[Classifier, dict]:
    """A noise-conditional classifier p_t(y | x_t) for the process and labelled data of a run directory or a
    training config (bundled name or .yaml, with ``overrides``): trained by ``train_classifier`` on the data in
    the units the score model sees (data.scale applied), labels from the data set (``config.build_labels``).
    Returns (classifier, info); info records the process, data section and example shape it was trained for,
    which ``load_for_run`` checks against the run it is to guide."""
    from . import checkpoint as ckpt
    from .config import build_data, build_labels, build_sde, load_config

    p = Path(str(source))
    if p.is_dir() and (p / ckpt.META_NAME).is_file():
        if overrides:
            raise ValueError("--set overrides apply to a config, not to a trained run; give the config instead.")
        cfg = ckpt.read_meta(p)["config"]
    else:
        cfg = load_config(source, overrides)
    x, _ = build_data(cfg["data"])
    y = build_labels(cfg["data"], x.shape[0])
    if y is None:
        src = cfg["data"]["name"] or cfg["data"]["path"]
        raise ValueError(f"the data {src!r} has no class labels to train a classifier on; use a labelled data set "
                         "(digits, fashion_mnist, a mixture toy) or give data.labels: FILE.npy with data.path.")
    sde = build_sde(cfg["sde"])
    threads = torch.get_num_threads()
    if (cfg.get("train") or {}).get("threads"):  # the config's CPU threads (small networks: 1 is fastest)
        torch.set_num_threads(cfg["train"]["threads"])
    try:
        clf = train_classifier(x, y, sde=sde, steps=steps, batch_size=batch_size, width=width, seed=seed,
                               device=device, progress=progress)
    finally:
        torch.set_num_threads(threads)
    info = {"sde": cfg["sde"], "data": cfg["data"], "data_shape": list(x.shape[1:]), "steps": steps, "seed": seed,
            "num_examples": int(x.shape[0])}
    return clf, info


def load_for_run(path: str | Path, run) -> Classifier:
    """The noise-conditional classifier in ``path`` (a directory written by ``scorelab classifier``, or its
    .safetensors file) on the run's device, refused with one ValueError line unless it was trained for the
    run's process, example shape and data scaling."""
    from .config import sde_section

    path = Path(path)
    file = path / CLASSIFIER_FILE if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"no classifier at {str(path)!r} (expected {CLASSIFIER_FILE} in the directory written by "
                         "`scorelab classifier RUN --out DIR`).")
    clf, info = load_classifier(file, run.device)
    fix = f"train one for this run: scorelab classifier {run.run_dir} --out DIR"
    if clf.sde is None:
        raise ValueError(f"{path} is a clean classifier (trained without noise); guidance needs a noise-conditional "
                         f"one: {fix}.")
    mine, theirs = sde_section(clf.sde), sde_section(run.sde)
    if mine != theirs:
        show = ", ".join(f"{k}={v}" for k, v in mine.items())
        raise ValueError(f"the classifier {path} was trained for another process ({show}) than the run's "
                         f"({', '.join(f'{k}={v}' for k, v in theirs.items())}); {fix}.")
    if tuple(clf.shape) != tuple(run.data_shape):
        raise ValueError(f"the classifier {path} was trained on examples of shape {list(clf.shape)}, the run on "
                         f"{list(run.data_shape)}; {fix}.")
    scale = (info.get("data") or {}).get("scale")
    if scale != run.config["data"].get("scale"):
        raise ValueError(f"the classifier {path} saw data scaled to {scale}, the run to "
                         f"{run.config['data'].get('scale')}; {fix}.")
    return clf


__all__ = ["Classifier", "train_classifier", "predict", "features", "accuracy", "save_classifier",
           "load_classifier", "train_for_run", "load_for_run", "CLASSIFIER_FILE"]
