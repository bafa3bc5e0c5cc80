"""A noise-conditional MLP for vector data: net(x [B, *dims], c [B]) -> [B, *dims].

x is flattened to [B, dim]; c is embedded by Gaussian Fourier features and added (through its own linear map)
to every hidden layer, so every layer knows the noise level. SiLU keeps the network smooth, which implicit
and sliced score matching need (they differentiate the output with respect to x, and then train through that).

Class-conditional networks (``num_classes`` = K > 0) add a learned label embedding to the Fourier embedding
of c, with one extra row K, the null class, for the unconditional score: trained with label dropout, one
network gives both s(x, t | y) and s(x, t) (Ho & Salimans 2021). ``y=None`` means the null class.
"""

from __future__ import annotations

import torch
from torch import nn

from .embedding import GaussianFourierEmbedding


def check_features(x: torch.Tensor, dim: int, who: str) -> torch.Tensor:
    """x [B, *dims] flattened to [B, dim], with an error that names the expected size."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x[0].numel() != dim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{who} was built for {dim} features per example: x must be [B, {dim}] "
                         f"(or [B, *dims] with {dim} entries), got {shape}; rebuild it with dim=x[0].numel().")
    return x.reshape(x.shape[0], dim)


def check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0 or num_classes == 1:
        raise ValueError(f"num_classes must be 0 (unconditional) or an integer >= 2, got {num_classes!r}.")
    return num_classes


def label_index(y, batch: int, num_classes: int, device) -> torch.Tensor:
    """y (None: the null class num_classes; an int; or a [B] integer tensor) -> [B] long indices of the label
    embedding. No value checks here (this runs inside sampler loops): ``Run.score`` checks y once."""
    if y is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    if isinstance(y, int):
        return torch.full((batch,), y, dtype=torch.long, device=device)
    return y.to(device=device, dtype=torch.long).expand(batch)


class ConditionedMLP(nn.Module):
    """h_0 = x W_in;  h_{i+1} = SiLU(h_i W_i + E_i (gamma(c) + L[y]));  out = h_depth W_out.  [B, dim] -> [B, out_dim].

    L [num_classes + 1, embed_dim] is the label embedding (row num_classes: no label), absent when num_classes = 0.
    """

    def __init__(self, dim: int, out_dim: int, hidden: int = 128, depth: int = 3, embed_dim: int = 32,
                 fourier_scale: float = 16.0, out_bias: bool = True, num_classes: int = 0):
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        for name, v in (("dim", dim), ("out_dim", out_dim), ("hidden", hidden), ("depth", depth)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}.")
        self.dim = dim
        self.embed = GaussianFourierEmbedding(embed_dim, fourier_scale)
        self.inp = nn.Linear(dim, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        # one projection of the embedding per hidden layer, computed together
        self.cond = nn.Linear(embed_dim, hidden * depth)
        self.out = nn.Linear(hidden, out_dim, bias=out_bias)
        self.act = nn.SiLU()
        self.label = nn.Embedding(num_classes + 1, embed_dim) if num_classes else None

    def forward(self, x: torch.Tensor, c: torch.Tensor, y=None) -> torch.Tensor:
        e = self.embed(c)
        if self.label is not None:
            e = e + self.label(label_index(y, x.shape[0], self.num_classes, x.device)).to(e.dtype)
        conds = self.cond(e).to(x.dtype).chunk(len(self.layers) + 1, dim=-1)
        h = self.act(self.inp(x) + conds[0])
        for layer, e in zip(self.layers, conds[1:], strict=True):
            h = self.act(layer(h) + e)
        return self.out(h)


class MLPScoreNet(nn.Module):
    """net(x [B, *dims], c [B]) -> [B, *dims]: a SiLU MLP over the flattened x with a Fourier embedding of c.

    dim: features per example (prod(dims)); hidden: width; depth: number of hidden layers; embed_dim: size of
    the Fourier embedding of c; fourier_scale: std of its frequencies (16, Song et al. 2021); num_classes: K > 0
    for a class-conditional net(x, c, y) (y None: the null class, i.e. the unconditional score).
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, embed_dim: int = 32,
                 fourier_scale: float = 16.0, num_classes: int = 0):
        super().__init__()
        self.dim = dim
        self.mlp = ConditionedMLP(dim, dim, hidden, depth, embed_dim, fourier_scale, num_classes=num_classes)
        self.num_classes = self.mlp.num_classes

    def forward(self, x: torch.Tensor, c: torch.Tensor, y=None) -> torch.Tensor:
        flat = check_features(x, self.dim, type(self).__name__)
        return self.mlp(flat, c, y).reshape(x.shape)
