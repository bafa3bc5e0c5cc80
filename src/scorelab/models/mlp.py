"""A noise-conditional MLP for vector data: net(x [B, *dims], c [B]) -> [B, *dims].

x is flattened to [B, dim]; c is embedded by Gaussian Fourier features and added (through its own linear map)
to every hidden layer, so every layer knows the noise level. SiLU keeps the network smooth, which implicit
and sliced score matching need (they differentiate the output with respect to x, and then train through that).
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


class ConditionedMLP(nn.Module):
    """h_0 = x W_in;  h_{i+1} = SiLU(h_i W_i + E_i gamma(c));  out = h_depth W_out.  [B, dim] -> [B, out_dim]."""

    def __init__(self, dim: int, out_dim: int, hidden: int = 128, depth: int = 3, embed_dim: int = 32,
                 fourier_scale: float = 16.0, out_bias: bool = True):
        super().__init__()
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

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        conds = self.cond(self.embed(c)).to(x.dtype).chunk(len(self.layers) + 1, dim=-1)
        h = self.act(self.inp(x) + conds[0])
        for layer, e in zip(self.layers, conds[1:], strict=True):
            h = self.act(layer(h) + e)
        return self.out(h)


class MLPScoreNet(nn.Module):
    """net(x [B, *dims], c [B]) -> [B, *dims]: a SiLU MLP over the flattened x with a Fourier embedding of c.

    dim: features per example (prod(dims)); hidden: width; depth: number of hidden layers; embed_dim: size of
    the Fourier embedding of c; fourier_scale: std of its frequencies (16, Song et al. 2021).
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, embed_dim: int = 32,
                 fourier_scale: float = 16.0):
        super().__init__()
        self.dim = dim
        self.mlp = ConditionedMLP(dim, dim, hidden, depth, embed_dim, fourier_scale)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        flat = check_features(x, self.dim, type(self).__name__)
        return self.mlp(flat, c).reshape(x.shape)
