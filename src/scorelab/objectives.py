"""Score-matching objectives: every one is  fn(model, x [B, *dims], generator=None, **options) -> [B],

the per-example loss (the trainer averages). ``model`` needs only ``model.score(x, t)`` and ``model.sde``
(m(t) = marginal_scale, s(t) = marginal_std, g(t) = diffusion, t_from_std_ratio), so the analytic oracle
wrapped in a two-attribute object qualifies. Options are keywords; the config layer binds them with
``make_objective(name, **options)`` (a functools.partial). ``OBJECTIVES`` is the table of names.

Notation: x_t = m(t) x + s(t) z, z ~ N(0, I); s_theta = model.score; |.|^2 summed over the non-batch
dimensions (``reduce="sum"``) or averaged (``reduce="mean"``, the per-dimension scale of the reference code).

Fixed-time objectives (at t, default 1e-3, or at the std ratio ``sigma``, which then replaces t; with
``t=None`` the time is drawn t ~ U[eps, 1] per example and ``weighting`` applies). The points are
x_t ~ p_t (``perturb=False`` uses x as given, e.g. for data on a manifold at no noise):

    esm      explicit SM, the Fisher divergence   1/2 |s_theta(x_t) - target(x_t, t)|^2       (target known)
    ism      implicit SM (Hyvarinen 2005)          tr(grad_x s_theta) + 1/2 |s_theta|^2        (exact trace)
    ssm      sliced SM (Song et al. 2019)          v^T (grad_x s_theta) v + 1/2 (v^T s_theta)^2, M probes v
    ssm_vr   sliced SM, variance reduced           v^T (grad_x s_theta) v + 1/2 |s_theta|^2
             (ISM, SSM and SSM-VR equal ESM up to a constant independent of s_theta.)

Denoising objectives (Vincent 2011): with the target -(x_t - m x) / s^2 = -z / s,

    dsm      one noise level sigma (a std ratio s/m):       lambda/2 |s_theta(x_t) + z / s|^2
    ncsn     one rung of a geometric ladder per example, lambda = s^2 (Song & Ermon 2019)
    sde_dsm  t ~ U[eps, 1] or log-normal sigma (EDM), lambda = s(t)^2 ("std2"), g(t)^2 ("likelihood",
             Song et al. 2021b) or s^2 (1 + sigma^2/sigma_data^2) ("edm", Karras et al. 2022)
    ddpm     |z - eps_theta(x_t)|^2 with eps_theta = -s s_theta (Ho et al. 2020): equals 2 x sde_dsm with
             std2 weighting on the same draws

Random draws happen in a fixed order (times, then noise z, then probes) from ``generator``.

Class-conditional models (Ho & Salimans 2021): every objective trains s_theta(x_t, t | y) when it is given
``conditioned(model, y)``, a model whose score carries the batch's labels; ``drop_labels`` replaces each label
by the null class with probability p_uncond (label dropout), so the one network also learns the unconditional
score s_theta(x_t, t) = s_theta(x_t, t | null) that classifier-free guidance mixes in.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import torch

from ._checks import batch_view, check_batch
from .divergence import divergence_exact, divergence_hutchinson, sample_probes
from .ladders import geometric_sigmas
from .models.parameterization import score_to_eps

REDUCTIONS = ("sum", "mean")
WEIGHTINGS = ("none", "std2", "likelihood", "edm")
NOISE_DISTRIBUTIONS = ("uniform_t", "lognormal")
# EDM's training noise distribution ln sigma ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1)
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2


# ---------------------------------------------------------------- shared pieces
def _check(model, x: torch.Tensor, reduce: str) -> None:
    if not (callable(getattr(model, "score", None)) and hasattr(model, "sde")):
        raise TypeError(f"model must have .score(x, t) and .sde (a ScoreModel or a wrapper), got "
                        f"{type(model).__name__}.")
    check_batch(x)
    if reduce not in REDUCTIONS:
        raise ValueError(f"Unknown reduce {reduce!r}; choose one of {REDUCTIONS}.")


def _reduce(per_entry: torch.Tensor, reduce: str) -> torch.Tensor:
    """[B, *dims] -> [B], summed or averaged over the non-batch dimensions."""
    flat = per_entry.reshape(per_entry.shape[0], -1)
    return flat.sum(1) if reduce == "sum" else flat.mean(1)


def _dims(x: torch.Tensor) -> int:
    return x[0].numel()


def _uniform_times(x: torch.Tensor, eps: float, generator) -> torch.Tensor:
    """t ~ U[eps, 1], [B]."""
    if not 0 < eps < 1:
        raise ValueError(f"eps (the smallest time) must lie in (0, 1), got {eps!r}; 1e-5 is Song et al.'s.")
    u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    return eps + (1 - eps) * u


def _weight(sde, t: torch.Tensor, weighting: str, sigma_data: float = 0.5) -> torch.Tensor:
    """lambda(t) [B]: 1, s(t)^2, g(t)^2 or EDM's s(t)^2 (1 + sigma^2 / sigma_data^2), sigma = s/m."""
    if weighting == "edm":
        sig = sde.marginal_std(t) / sde.marginal_scale(t)
        return sde.marginal_std(t) ** 2 * (1 + (sig / sigma_data) ** 2)
    if weighting == "none":
        return torch.ones_like(t)
    if weighting == "std2":
        return sde.marginal_std(t) ** 2
    if weighting == "likelihood":
        return sde.diffusion(t) ** 2
    raise ValueError(f"Unknown weighting {weighting!r}; choose one of {WEIGHTINGS}.")


def _times(model, x, t, sigma, eps, generator) -> tuple[torch.Tensor, bool]:
    """The [B] times of a fixed-time objective, and whether they were drawn at random."""
    if sigma is not None:
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma (the noise std ratio s/m) must be a positive number, got {sigma!r}.")
        tt = model.sde.t_from_std_ratio(torch.tensor(float(sigma), dtype=x.dtype, device=x.device))
        return tt.expand(x.shape[0]), False
    if t is None:
        return _uniform_times(x, eps, generator), True
    if not (isinstance(t, (int, float)) and 0 <= t <= 1):
        raise ValueError(f"t must be a number in [0, 1] (or None to draw t ~ U[eps, 1]), got {t!r}.")
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device), False


def _perturb(model, x, t, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_t = m x + s z, with z and s [B, 1, ...]."""
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    m = batch_view(model.sde.marginal_scale(t), x)
    s = batch_view(model.sde.marginal_std(t), x)
    return m * x + s * z, z, s


def _points(model, x, t, sigma, eps, perturb, generator):
    """(x_t, t [B], random-time flag) for the fixed-time objectives."""
    tt, drawn = _times(model, x, t, sigma, eps, generator)
    xt = _perturb(model, x, tt, generator)[0] if perturb else x
    return xt, tt, drawn


def _denoising(model, x, t, generator, weighting, reduce, sigma_data: float = 0.5) -> torch.Tensor:
    """lambda(t)/2 |s_theta(x_t, t) + z / s(t)|^2 at the given times t [B] (Vincent 2011)."""
    xt, z, s = _perturb(model, x, t, generator)
    if weighting in ("std2", "edm"):
        # s^2 |s_theta + z/s|^2 = |s s_theta + z|^2, written without dividing by a tiny s
        per = 0.5 * _reduce((s * model.score(xt, t) + z) ** 2, reduce)
        if weighting == "std2":
            return per
        sig = model.sde.marginal_std(t) / model.sde.marginal_scale(t)
        return per * (1 + (sig / sigma_data) ** 2)
    per = (model.score(xt, t) + z / s) ** 2
    return 0.5 * _weight(model.sde, t, weighting) * _reduce(per, reduce)


# ---------------------------------------------------------------- fixed-time objectives
def explicit_score_matching(model, x: torch.Tensor, generator: torch.Generator | None = None, *,
                            target_score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                            t: float | None = 1e-3, sigma: float | None = None, eps: float = 1e-5,
                            perturb: bool = True, weighting: str = "none", reduce: str = "sum") -> torch.Tensor:
    """lambda(t)/2 |s_theta(x_t, t) - target_score(x_t, t)|^2, [B]: the Fisher divergence to a known score.

    target_score: score_fn(x, t) of p_t, e.g. ``gmm.score_fn(sde)`` of the oracle; t: the fixed time
    (None: t ~ U[eps, 1]); sigma: a noise std ratio instead of t; perturb: evaluate at x_t ~ p_t (else at x).
    """
    _check(model, x, reduce)
    if not callable(target_score):
        raise TypeError("esm needs target_score=score_fn(x, t), e.g. gmm.score_fn(sde) from scorelab.oracle.")
    xt, tt, _ = _points(model, x, t, sigma, eps, perturb, generator)
    diff = model.score(xt, tt) - target_score(xt, tt).to(xt.dtype)
    return 0.5 * _weight(model.sde, tt, weighting) * _reduce(diff**2, reduce)


def implicit_score_matching(model, x: torch.Tensor, generator: torch.Generator | None = None, *,
                            t: float | None = 1e-3, sigma: float | None = None, eps: float = 1e-5,
                            perturb: bool = True, weighting: str = "none", reduce: str = "sum") -> torch.Tensor:
    """lambda(t) [tr(grad_x s_theta(x_t)) + 1/2 |s_theta(x_t)|^2], [B] (Hyvarinen 2005).

    The trace is exact: D vector-Jacobian products per step (one batched backward), kept in the graph so the
    loss trains. ``reduce="mean"`` divides the whole by D.
    """
    _check(model, x, reduce)
    xt, tt, _ = _points(model, x, t, sigma, eps, perturb, generator)
    div, s = divergence_exact(lambda y: model.score(y, tt), xt, create_graph=torch.is_grad_enabled())
    per = div + 0.5 * _reduce(s**2, "sum")
    return _weight(model.sde, tt, weighting) * (per / _dims(x) if reduce == "mean" else per)


def _sliced(model, x, generator, n_projections, kind, t, sigma, eps, perturb, weighting, reduce, variance_reduced):
    _check(model, x, reduce)
    xt, tt, _ = _points(model, x, t, sigma, eps, perturb, generator)
    v = sample_probes(xt, n_projections, kind, generator)
    vjv, s = divergence_hutchinson(lambda y: model.score(y, tt), xt, probes=v,
                                   create_graph=torch.is_grad_enabled())
    if variance_reduced:
        quad = _reduce(s**2, "sum")  # E_v (v^T s)^2 = |s|^2 in closed form
    else:
        quad = ((v * s).flatten(2).sum(-1) ** 2).mean(0)
    per = vjv + 0.5 * quad
    return _weight(model.sde, tt, weighting) * (per / _dims(x) if reduce == "mean" else per)


def sliced_score_matching(model, x: torch.Tensor, generator: torch.Generator | None = None, *,
                          n_projections: int = 1, kind: str = "rademacher", t: float | None = 1e-3,
                          sigma: float | None = None, eps: float = 1e-5, perturb: bool = True,
                          weighting: str = "none", reduce: str = "sum") -> torch.Tensor:
    """lambda(t) mean_v [v^T (grad_x s_theta) v + 1/2 (v^T s_theta)^2], [B] (Song et al. 2019, eq. 7).

    n_projections M probes per point, ``kind`` "rademacher" or "gaussian" (E[v v^T] = I); its expectation
    over v is ISM's. One batched backward regardless of D.
    """
    return _sliced(model, x, generator, n_projections, kind, t, sigma, eps, perturb, weighting, reduce, False)


def sliced_score_matching_vr(model, x: torch.Tensor, generator: torch.Generator | None = None, *,
                             n_projections: int = 1, kind: str = "rademacher", t: float | None = 1e-3,
                             sigma: float | None = None, eps: float = 1e-5, perturb: bool = True,
                             weighting: str = "none", reduce: str = "sum") -> torch.Tensor:
    """SSM-VR: lambda(t) [mean_v v^T (grad_x s_theta) v + 1/2 |s_theta|^2], [B] (Song et al. 2019, eq. 8)."""
    return _sliced(model, x, generator, n_projections, kind, t, sigma, eps, perturb, weighting, reduce, True)


# ---------------------------------------------------------------- denoising objectives
def denoising_score_matching(model, x: torch.Tensor, generator: torch.Generator | None = None, *,
                             sigma: float | None = None, t: float | None = None, weighting: str = "std2",
                             reduce: str = "sum") -> torch.Tensor:
    """lambda/2 |s_theta(x_t) + (x_t - m x) / s^2|^2 at one noise level, [B] (Vincent 2011).

    sigma: the noise std ratio s/m (x_t / m = x + sigma z); or t, the time itself; neither: sigma = 0.1.
    weighting "std2" multiplies by s^2 (an O(1) loss whatever sigma; Song & Ermon 2019), "none" is Vincent's
    plain form.
    """
    _check(model, x, reduce)
    if sigma is not None and t is not None:
        raise ValueError(f"dsm takes one noise level: sigma={sigma!r} or t={t!r}, not both.")
    if sigma is None and t is None:
        sigma = 0.1
    tt, _ = _times(model, x, t, sigma, 1e-5, generator)
    return _denoising(model, x, tt, generator, weighting, reduce)


def noise_ladder(sde, L: int = 10, sigma_min: float = 0.01, sigma_max: float | None = None) -> torch.Tensor:
    """The NCSN ladder: L std ratios, geometric from sigma_max (default the process's s(1)/m(1)) down to
    sigma_min (0.01, Song & Ermon 2019), float64 [L]. For a VE SDE these are sigma(t) at equally spaced t."""
    if not isinstance(L, int) or L < 1:
        raise ValueError(f"L (number of noise levels) must be a positive integer, got {L!r}.")
    if sigma_max is None:
        one = torch.ones((), dtype=torch.float64)
        sigma_max = float(sde.marginal_std(one) / sde.marginal_scale(one))
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}.")
    if L == 1 or sigma_min == sigma_max:
        return torch.full((L,), float(sigma_max), dtype=torch.float64)
    return geometric_sigmas(float(sigma_max), float(sigma_min), L)  # the one geometric ladder (ladders.py)


def ncsn_loss(model, x: torch.Tensor, generator: torch.Generator | None = None, *, sigmas=None, L: int = 10,
              sigma_min: float = 0.01, reduce: str = "sum") -> torch.Tensor:
    """1/2 s_i^2 |s_theta(x_t, t_i) + z / s_i|^2 with one rung i ~ U{1..L} per example, [B] (Song & Ermon 2019).

    sigmas: the ladder as std ratios [L] (default ``noise_ladder(model.sde, L, sigma_min)``); rung i is the
    time t_i with s(t_i)/m(t_i) = sigma_i, so with a VE SDE this is NCSN's noise-conditional network.
    """
    _check(model, x, reduce)
    sig = noise_ladder(model.sde, L, sigma_min) if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64)
    if sig.ndim != 1 or sig.numel() < 1 or not bool((sig > 0).all()):
        raise ValueError(f"sigmas must be a 1-d sequence of positive noise levels, got {sigmas!r}.")
    times = model.sde.t_from_std_ratio(sig.to(x.device)).to(x.dtype)
    idx = torch.randint(0, sig.numel(), (x.shape[0],), generator=generator, device=x.device)
    return _denoising(model, x, times[idx], generator, "std2", reduce)


def _lognormal_times(model, x: torch.Tensor, eps: float, p_mean: float, p_std: float, generator) -> torch.Tensor:
    """t [B] with sigma(t) = s/m log-normal, ln sigma ~ N(p_mean, p_std^2) (Karras et al. 2022), mapped through the
    process's inverse sigma -> t and clipped to [eps, 1] (sigma outside the process's range is drawn at its end)."""
    if not 0 < eps < 1:
        raise ValueError(f"eps (the smallest time) must lie in (0, 1), got {eps!r}; 1e-5 is Song et al.'s.")
    if not (isinstance(p_std, (int, float)) and p_std > 0 and isinstance(p_mean, (int, float))):
        raise ValueError(f"lognormal noise needs numbers p_mean and p_std > 0, got {p_mean!r}, {p_std!r}.")
    n = torch.randn(x.shape[0], generator=generator, device=x.device, dtype=torch.float64)
    t = model.sde.t_from_std_ratio(torch.exp(p_mean + p_std * n))
    return t.clamp(eps, 1.0).to(x.dtype)


def sde_dsm_loss(model, x: torch.Tensor, generator: torch.Generator | None = None, *, eps: float = 1e-5,
                 weighting: str = "std2", reduce: str = "sum", noise: str = "uniform_t",
                 p_mean: float = EDM_P_MEAN, p_std: float = EDM_P_STD, sigma_data: float | None = None
                 ) -> torch.Tensor:
    """lambda(t)/2 |s_theta(x_t, t) + z / s(t)|^2 over a distribution of times, [B] (Song et al. 2021).

    noise "uniform_t": t ~ U[eps, 1] (score SDE, Song et al. 2021); "lognormal": ln(s/m) ~ N(p_mean, p_std^2)
    mapped to t by the process's inverse (EDM, Karras et al. 2022: -1.2, 1.2), t clipped to [eps, 1].
    weighting "std2": lambda = s(t)^2; "likelihood": lambda = g(t)^2, which bounds the KL and so the negative
    log-likelihood (Song et al. 2021b); "none": lambda = 1; "edm": lambda = s^2 (1 + sigma^2/sigma_data^2), which
    is EDM's 1/c_out^2 on the denoiser loss |D - x_0|^2, i.e. a unit-variance regression target for the
    preconditioned network. sigma_data: None takes the model's (``ScoreModel.sigma_data``), else 0.5 (EDM).
    eps = 1e-5 as in Song et al.
    """
    _check(model, x, reduce)
    if noise == "uniform_t":
        t = _uniform_times(x, eps, generator)
    elif noise == "lognormal":
        t = _lognormal_times(model, x, eps, p_mean, p_std, generator)
    else:
        raise ValueError(f"Unknown noise {noise!r}; choose one of {NOISE_DISTRIBUTIONS}.")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Unknown weighting {weighting!r}; choose one of {WEIGHTINGS}.")
    if sigma_data is None:
        sigma_data = getattr(model, "sigma_data", None) or 0.5
    return _denoising(model, x, t, generator, weighting, reduce, float(sigma_data))


def ddpm_loss(model, x: torch.Tensor, generator: torch.Generator | None = None, *, continuous: bool = False,
              eps: float = 1e-5, reduce: str = "mean") -> torch.Tensor:
    """|z - eps_theta(x_t, t)|^2, [B] (Ho et al. 2020, "L_simple"), eps_theta = -s(t) s_theta by conversion.

    Times: t = i / N with i ~ U{1..N} (N = model.sde.N, DDPM's discrete steps), or t ~ U[eps, 1] with
    ``continuous=True`` (then, on the same draws, it is exactly 2 x sde_dsm with std2 weighting).
    reduce "mean" over dimensions as Ho et al.
    """
    _check(model, x, reduce)
    if continuous:
        t = _uniform_times(x, eps, generator)
    else:
        N = int(getattr(model.sde, "N", 1000))
        i = torch.randint(1, N + 1, (x.shape[0],), generator=generator, device=x.device)
        t = i.to(x.dtype) / N
    xt, z, _ = _perturb(model, x, t, generator)
    eps_hat = score_to_eps(model.score(xt, t), xt, t, model.sde)
    return _reduce((z - eps_hat) ** 2, reduce)


# ---------------------------------------------------------------- labels (class-conditional models)
class conditioned:  # noqa: N801 (reads as a function: conditioned(model, y))
    """model with its labels bound: ``score(x, t) = model.score(x, t, y)``, ``sde`` (and ``sigma_data``) passed
    through, so every objective above trains the conditional score unchanged. y: [B] int64, the null class
    (model.num_classes) where a label was dropped."""

    def __init__(self, model, y: torch.Tensor):
        self.model, self.y, self.sde = model, y, model.sde
        self.sigma_data = getattr(model, "sigma_data", None)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        return self.model.score(x, t, self.y)


def drop_labels(y: torch.Tensor, p_uncond: float, num_classes: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """y [B] with each label replaced by the null class ``num_classes`` with probability p_uncond (one uniform
    draw per example from ``generator``; none when p_uncond = 0). Ho & Salimans 2021: p_uncond 0.1-0.2."""
    if p_uncond <= 0:
        return y
    u = torch.rand(y.shape[0], generator=generator, device=y.device)
    return torch.where(u < p_uncond, torch.full_like(y, num_classes), y)


# ---------------------------------------------------------------- the table
OBJECTIVES: dict[str, Callable[..., torch.Tensor]] = {
    "esm": explicit_score_matching,
    "ism": implicit_score_matching,
    "ssm": sliced_score_matching,
    "ssm_vr": sliced_score_matching_vr,
    "dsm": denoising_score_matching,
    "ncsn": ncsn_loss,
    "sde_dsm": sde_dsm_loss,
    "ddpm": ddpm_loss,
}


def get_objective(name: str) -> Callable[..., torch.Tensor]:
    """The objective called ``name`` in OBJECTIVES."""
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}.")
    return OBJECTIVES[name]


def make_objective(name: str, **options) -> Callable[..., torch.Tensor]:
    """``fn(model, x, generator=None) -> [B]`` with ``options`` bound (functools.partial); unknown option
    names are an error that lists the valid ones."""
    fn = get_objective(name)
    valid = [p for p in inspect.signature(fn).parameters if p not in ("model", "x", "generator")]
    bad = sorted(set(options) - set(valid))
    if bad:
        raise ValueError(f"Objective {name!r} has no option(s) {bad}; valid options: {valid}.")
    return functools.partial(fn, **options)
