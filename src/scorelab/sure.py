"""Stein's unbiased risk estimate (SURE): the MSE of a denoiser from noisy data alone.

For y = x + sigma n, n ~ N(0, I_N), and a weakly differentiable denoiser D (Stein 1981):

    SURE(D; y) = |D(y) - y|^2 - N sigma^2 + 2 sigma^2 div D(y),      E_n[SURE] = E_n |D(y) - x|^2.

(Integrate by parts: E[n^T D(y)] = sigma E[div D(y)].) The divergence is computed exactly (small N), by
Hutchinson probes (one VJP, differentiable: suits training), or by the Monte-Carlo finite difference of
Ramani, Blu & Unser 2008, div D(y) ~ b^T (D(y + h b) - D(y)) / h, which needs only evaluations of D.

With D(y) = y + sigma^2 s(y), SURE / (2 sigma^4) = |s|^2 / 2 + div s + const: implicit score matching on
the noisy data, so minimising SURE and denoising score matching share the optimum, the posterior mean.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._checks import batch_view, check_batch, check_finite
from .divergence import PROBES, divergence_exact, divergence_hutchinson, sample_probes

Denoiser = Callable[[torch.Tensor], torch.Tensor]
METHODS = ("exact", "hutchinson", "finite_difference")


def _sigma(sigma, y):
    sig = torch.as_tensor(sigma, dtype=y.dtype, device=y.device)
    if sig.ndim == 0:
        sig = sig.expand(y.shape[0])
    if sig.shape != (y.shape[0],) or not bool(torch.isfinite(sig).all()) or bool((sig <= 0).any()):
        raise ValueError(f"sigma must be a positive number or a [B] = [{y.shape[0]}] tensor of positive numbers.")
    return sig


def sure(denoiser: Denoiser, y: torch.Tensor, sigma, generator: torch.Generator | None = None,
         divergence: str = "hutchinson", n_probes: int = 1, probe: str = "rademacher",
         fd_step: float | None = None, create_graph: bool = False) -> torch.Tensor:
    """SURE(D; y) per example, [B], for y [B, *dims] with Gaussian noise of std ``sigma`` (float or [B]).

    ``divergence``: "exact" (N VJPs), "hutchinson" (``n_probes`` probes, one batched VJP) or
    "finite_difference" (Ramani et al. 2008; ``n_probes`` probes, step ``fd_step``, default 1e-3 sigma, one
    extra evaluation of D per probe). ``create_graph=True`` keeps the graph for training (exact/hutchinson).
    """
    if not callable(denoiser):
        raise TypeError("denoiser must be a callable D(y) -> tensor shaped like y.")
    check_batch(y, "y")
    check_finite(y, "y")
    if divergence not in METHODS:
        raise ValueError(f"Unknown divergence {divergence!r}; choose one of {METHODS}.")
    if not isinstance(n_probes, int) or isinstance(n_probes, bool) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}.")
    if probe not in PROBES:
        raise ValueError(f"Unknown probe {probe!r}; choose one of {PROBES}.")
    sig = _sigma(sigma, y)
    N = y[0].numel()
    if divergence == "exact":
        div, d = divergence_exact(denoiser, y, create_graph=create_graph)
    elif divergence == "hutchinson":
        div, d = divergence_hutchinson(denoiser, y, n_probes, probe, generator, create_graph=create_graph)
    else:
        d = denoiser(y)
        h = batch_view(1e-3 * sig if fd_step is None else torch.full_like(sig, float(fd_step)), y)
        b = sample_probes(y, n_probes, probe, generator)  # [M, B, *dims]
        moved = torch.stack([denoiser(y + h * bi) for bi in b])
        div = ((moved - d) / h * b).flatten(2).sum(-1).mean(0)
    resid = (d - y).flatten(1).pow(2).sum(1)
    return resid - N * sig**2 + 2 * sig**2 * div


def sure_loss(denoiser: Denoiser, y: torch.Tensor, sigma, generator: torch.Generator | None = None,
              n_probes: int = 1, probe: str = "rademacher") -> torch.Tensor:
    """Differentiable training loss: mean over the batch of SURE(D; y) / N (per-entry MSE estimate), scalar.

    Uses Hutchinson probes with the graph kept, so gradients flow into D's parameters; no clean data needed.
    """
    s = sure(denoiser, y, sigma, generator, "hutchinson", n_probes, probe, create_graph=True)
    return s.mean() / y[0].numel()
