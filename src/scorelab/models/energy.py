"""A noise-conditional energy network: E(x [B, *dims], c [B]) -> [B] (a scalar per example).

Its score is -grad_x E(x, c) (``ScoreModel(..., parameterization="energy")`` takes the gradient). An
energy model's score field is conservative by construction, which a free-form score network's need not be.
Training it by score matching differentiates -grad_x E again (double backprop), so the activation must be
smooth: SiLU, never ReLU (whose second derivative is zero almost everywhere).
"""

from __future__ import annotations

import torch
from torch import nn

from .mlp import ConditionedMLP, check_features


class EnergyNet(nn.Module):
    """E(x, c) -> [B]: a SiLU MLP over the flattened x with a Fourier embedding of c and a scalar head.

    dim: features per example; hidden: width; depth: number of hidden layers; embed_dim: size of the Fourier
    embedding; fourier_scale: std of its frequencies (16, Song et al. 2021).
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, embed_dim: int = 32,
                 fourier_scale: float = 16.0):
        super().__init__()
        self.dim = dim
        # no output bias: a constant shift of the energy leaves the score unchanged, so it would never train
        self.mlp = ConditionedMLP(dim, 1, hidden, depth, embed_dim, fourier_scale, out_bias=False)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.mlp(check_features(x, self.dim, type(self).__name__), c).squeeze(-1)
