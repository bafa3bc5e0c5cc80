"""Divergence (Jacobian trace) of a vector field, exactly or by Hutchinson-Skilling probes.

Used by implicit and sliced score matching (tr grad_x s), by the probability-flow likelihood
(d log p / dt = -div f~) and by SURE (div of a denoiser). ``fn`` maps [B, *dims] -> [B, *dims] with examples
independent of one another, so one batched backward gives the products for the whole batch.

    exact:       div f(x) = sum_i d f_i / d x_i                    (D vector-Jacobian products, one batched call)
    Hutchinson:  div f(x) = E_v[v^T (d f / d x) v],  E[v v^T] = I  (Gaussian or Rademacher v; unbiased)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PROBES = ("rademacher", "gaussian")


def sample_probes(x: torch.Tensor, n_probes: int = 1, kind: str = "rademacher",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Probe vectors v with E[v v^T] = I, shape [n_probes, B, *dims]."""
    if not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}.")
    shape = (n_probes, *x.shape)
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    if kind == "rademacher":
        bits = torch.randint(0, 2, shape, generator=generator, device=x.device)
        return (2 * bits - 1).to(x.dtype)
    raise ValueError(f"Unknown probe kind {kind!r}; choose one of {PROBES}.")


def vjp(y: torch.Tensor, x: torch.Tensor, v: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """v^T (dy/dx) for a stack of cotangents v [M, B, *dims] in one batched backward: [M, B, *dims]."""
    if v.shape[0] == 1:  # one cotangent: a plain backward, without the batching machinery (faster)
        (out,) = torch.autograd.grad(y, x, grad_outputs=v[0], create_graph=create_graph)
        return out[None]
    (out,) = torch.autograd.grad(y, x, grad_outputs=v, is_grads_batched=True, create_graph=create_graph)
    return out


def _with_input_grad(fn, x):
    x = x if x.requires_grad else x.detach().requires_grad_(True)
    return x, fn(x)


def divergence_exact(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact divergence [B] of fn at x, and fn(x) itself. Costs D vector-Jacobian products (batched)."""
    with torch.enable_grad():
        x, y = _with_input_grad(fn, x)
        B, D = x.shape[0], x[0].numel()
        basis = torch.eye(D, dtype=x.dtype, device=x.device).reshape(D, 1, *x.shape[1:]).expand(D, *x.shape)
        rows = vjp(y, x, basis, create_graph).reshape(D, B, D)
    return torch.einsum("ibi->b", rows), y


def divergence_hutchinson(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n_probes: int = 1,
                          kind: str = "rademacher", generator: torch.Generator | None = None,
                          create_graph: bool = False, probes: torch.Tensor | None = None,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unbiased estimate [B] of div fn(x) averaged over n_probes probes, and fn(x).

    Pass ``probes`` [M, B, *dims] to reuse fixed probes (e.g. the same noise along an ODE solve).
    """
    with torch.enable_grad():
        x, y = _with_input_grad(fn, x)
        v = sample_probes(x, n_probes, kind, generator) if probes is None else probes
        if v.shape[1:] != x.shape:
            raise ValueError(f"probes must have shape [M, *x.shape] = [M, {', '.join(map(str, x.shape))}], "
                             f"got {tuple(v.shape)}.")
        vJ = vjp(y, x, v, create_graph)
    return (vJ * v).flatten(2).sum(-1).mean(0), y
