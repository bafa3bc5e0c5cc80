"""Guidance: turn an unconditional score into a conditional one (Song et al. 2021, Sec. 5 and App. I.1).

By Bayes' rule the conditional perturbed density p_t(x | y) is proportional to p_t(x) p_t(y | x), so

    grad_x log p_t(x | y) = grad_x log p_t(x) + grad_x log p_t(y | x).

``classifier_guided`` adds the gradient of a time-dependent classifier's log-probability to a score function
(with a ``scale`` that sharpens, scale > 1, or flattens, scale < 1, the conditional: it samples from
p_t(x) p_t(y | x)^scale, Dhariwal & Nichol 2021). ``classifier_free`` mixes a conditional and an
unconditional score instead (Ho & Salimans 2021). Both return plain score functions ``score_fn(x, t)``,
usable by every sampler, likelihood and inpainting routine.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_scale(scale, name: str = "scale") -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{name} must be a finite number, got {scale!r}.")
    return float(scale)


def _check_labels(y):
    """y as an int or a 1-D integer tensor; returns (y, largest label) with all checks that need no n_classes."""
    if isinstance(y, bool):
        raise TypeError("y must be an int class label or a [B] tensor of int labels, got a bool.")
    if isinstance(y, int):
        if y < 0:
            raise ValueError(f"y must be a class index >= 0, got {y}.")
        return y, y
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be an int class label or a [B] tensor of int labels, got {type(y).__name__}.")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}; convert with y.long().")
    if y.ndim == 0:
        return _check_labels(int(y))
    if y.ndim != 1 or y.numel() == 0:
        raise ValueError(f"y must be an int or a [B] tensor of labels, got shape {tuple(y.shape)}.")
    lo, hi = int(y.min()), int(y.max())  # checked once here, not at every score evaluation
    if lo < 0:
        raise ValueError(f"y must hold class indices >= 0, got a label {lo}.")
    return y.long(), hi


def classifier_guided(score_fn: ScoreFn, classifier: Classifier, y, scale: float = 1.0) -> ScoreFn:
    """The guided score  s(x, t) + scale * grad_x log softmax(classifier(x, t))[y].

    score_fn(x, t) -> [B, *dims]: the unconditional score grad_x log p_t(x).
    classifier(x, t) -> logits [B, n_classes] of the noisy-data classifier p_t(y | x); it must be
    differentiable in x (the gradient is taken with autograd, under ``torch.enable_grad`` so the guided
    score also works inside ``torch.no_grad`` sampling loops).
    y: an int (the same label for the whole batch) or a [B] tensor of labels in [0, n_classes).
    scale: the guidance weight; 1 gives the Bayes conditional score, 0 the plain score.

    Returns a score function (x [B, *dims], t [B]) -> [B, *dims], detached from the graph.
    """
    if not callable(score_fn):
        raise TypeError("score_fn must be a callable score_fn(x, t) -> tensor shaped like x.")
    if not callable(classifier):
        raise TypeError("classifier must be a callable classifier(x, t) -> logits [B, n_classes].")
    y, y_max = _check_labels(y)
    scale = _check_scale(scale)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        score = score_fn(x, t)
        if scale == 0.0:  # skip the classifier entirely: exactly the plain score
            return score
        B = x.shape[0]
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = classifier(xg, t)
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != B:
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ValueError(f"classifier(x, t) must return logits of shape [B, n_classes] with B = {B}, "
                                 f"got {shape}.")
            n_classes = logits.shape[1]
            if y_max >= n_classes:
                raise ValueError(f"y holds the label {y_max} but the classifier has {n_classes} classes; "
                                 f"labels must lie in [0, {n_classes}).")
            if isinstance(y, int):
                labels = torch.full((B,), y, dtype=torch.long, device=logits.device)
            elif y.shape[0] != B:
                raise ValueError(f"y has {y.shape[0]} labels but x has a batch of {B}; pass one label per "
                                 "example or a single int.")
            else:
                labels = y.to(logits.device)
            # Summing over the batch is safe: example i's log-probability depends on x_i only.
            logp = torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).sum()
            (grad,) = torch.autograd.grad(logp, xg)
        return score + scale * grad.detach().to(score.dtype)

    return guided


def classifier_free(cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, scale: float) -> ScoreFn:
    """Classifier-free guidance (Ho & Salimans 2021):  (1 + w) s(x, t | y) - w s(x, t).

    cond_score_fn(x, t) is the score with the condition built in (e.g. a closure over y), uncond_score_fn the
    unconditional score; both [B, *dims]. w = ``scale`` = 0 gives the conditional score; w > 0 pushes along
    grad log p_t(y | x) = s(x, t | y) - s(x, t), i.e. samples p_t(x | y) p_t(y | x)^w.
    """
    if not callable(cond_score_fn) or not callable(uncond_score_fn):
        raise TypeError("cond_score_fn and uncond_score_fn must be callables score_fn(x, t) -> tensor like x.")
    w = _check_scale(scale)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = cond_score_fn(x, t)
        if w == 0.0:
            return cond
        return (1 + w) * cond - w * uncond_score_fn(x, t)

    return guided
