"""Embedding of the per-example noise-conditioning scalar c [B] (see ``ScoreModel.conditioning``).

Gaussian random Fourier features (Tancik et al. 2020; used for log-sigma by Song et al. 2021's NCSN++):

    gamma(c) = [sin(2 pi W c), cos(2 pi W c)],     W ~ N(0, scale^2 I)  (drawn once, then fixed),

a [B, embed_dim] tensor. W is a buffer, not a parameter: it is never trained but is saved in the state_dict,
so a reloaded network embeds c exactly as the trained one did. W is drawn from torch's global generator, like
every nn.Module's initial weights; seed with torch.manual_seed before building a network.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class GaussianFourierEmbedding(nn.Module):
    """c [B] -> [B, embed_dim] random Fourier features with frequencies W ~ N(0, scale^2).

    scale = 16 is Song et al. 2021's value for c = log sigma.
    """

    def __init__(self, embed_dim: int = 32, scale: float = 16.0):
        super().__init__()
        if not isinstance(embed_dim, int) or embed_dim < 2 or embed_dim % 2:
            raise ValueError(f"embed_dim must be an even integer >= 2, got {embed_dim!r}.")
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"fourier scale must be a positive number, got {scale!r}.")
        self.embed_dim = embed_dim
        self.register_buffer("W", torch.randn(embed_dim // 2) * scale)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * c.to(self.W.dtype)[:, None] * self.W[None, :]
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
