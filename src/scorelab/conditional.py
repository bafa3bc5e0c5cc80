"""Sampling under a constraint: inpainting and colorization (Song et al. 2021, Sec. 5 and App. I.2-I.3). The
default method is "smc" (``scorelab.smc``, consistent); the replacement method below stays as named baselines.

Some entries of x_0 are known, x_0 = (x_k, x_u). The replacement method samples the unknown part with the
unconditional score: run a reverse-time sampler on the whole vector and, after every step, overwrite the
known entries with a forward-noised copy of the known data at the current time,

    x_t[known] = m(t) x_k + s(t) z,     z ~ N(0, I),

so the unknown entries are always pushed by a score that sees a plausible noisy version of the known ones (t is the time
the sampler has just reached; the reference code of Song et al. uses the start of the step, a difference of order dt).
At the end the known entries are set to x_k exactly. This is an approximation of sampling p_0(x_u | x_k): it conditions
on a fresh noisy copy of x_k at each step instead of on the exact noisy trajectory that generated x_k, so it under-uses
the information the known entries carry about the unknown ones (docs/controllable.md measures the error on a Gaussian
mixture). RePaint-style resampling (Lugmayr et al. 2022) reduces it: each step is repeated ``resample`` times,
re-noising x from t - dt back to t with the forward kernel in between, which lets the two parts harmonise at the price
of ``resample`` times the score evaluations.

Colorization is the same thing in a rotated space. An orthogonal 3x3 matrix A whose first row is
(1, 1, 1)/sqrt(3) maps RGB to coordinates u = A x whose first channel is sqrt(3) times the gray image.
Since A is orthogonal and the forward noise is isotropic, u follows the same SDE as x with score
A score(A^T u, t); so colorization = inpainting of u with the first channel known, mapped back by A^T.

All of it runs in the one sampling loop: ``sample(..., project=replace)`` applies the constraint after every
step of any method (and RePaint's repeats are ``resample`` of the PC family).
"""

from __future__ import annotations

import math

import torch

from ._checks import batch_view, check_batch, check_finite, check_sampling_args
from .samplers import METHODS, SampleResult, sample, samplers
from .samplers._common import check_options, gaussian, value
from .sde import SDE, ScoreFn
from .smc import impute

ConditionalResult = SampleResult  # x [B, *dims] with the known entries equal to the data; nfe; steps
DEFAULT_METHOD = "smc"  # consistent: twisted sequential Monte Carlo (MCGdiff, Cardoso et al. 2023), see scorelab.smc
SMC_OPTIONS = {"particles": 32, "ess": 0.5, "eps": 1e-3, "grid": "uniform"}


def replacement_methods() -> list[str]:
    """The sampling methods usable by the replacement method: every method of ``sample`` that steps in time
    from T (not the fixed-time Langevin samplers, declared with no grid: no time to impose the constraint at)."""
    return [m for m in samplers() if METHODS[m].grid is not None]


def methods() -> list[str]:
    """Names accepted by ``inpaint(method=...)`` and ``colorize(method=...)``: "smc" (the default, consistent),
    "replacement" (= "pc") and each of ``replacement_methods()`` ("pc" with ``resample`` > 1 is RePaint)."""
    return ["smc", "replacement", *replacement_methods()]


def sample_with_replacement(score_fn: ScoreFn, sde: SDE, shape, replace, *, method: str = "pc", nfe: int = 400,
                            generator: torch.Generator | None = None, device=None,
                            dtype: torch.dtype = torch.float32, **options) -> ConditionalResult:
    """Reverse-time sampling from p_T with ``replace(x, t [B]) -> x`` applied after every update: ``sample``
    with ``project=replace`` (``options`` go to the method). Returns the final x, its nfe and steps."""
    if not callable(replace):
        raise TypeError("replace must be a callable replace(x, t) -> x imposing the constraint at time t.")
    if method not in replacement_methods():
        raise ValueError(f"Unknown method {method!r}; choose one of {replacement_methods()}.")
    return sample(score_fn, sde, shape, method=method, nfe=nfe, generator=generator, dtype=dtype, device=device,
                  project=replace, **options)


# ---- inpainting ----

def _check_mask(mask, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a tensor shaped like x (1 = known, 0 = to sample), got {type(mask).__name__}.")
    try:
        shape = torch.broadcast_shapes(mask.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match x of shape {tuple(x.shape)}; pass a mask "
                         "shaped like x, or like one example (it is then shared by the batch).")
    m = mask.to(device=x.device)
    if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask must be binary: 1 (or True) where x is known, 0 where it is to be sampled; "
                         "threshold a soft mask first, e.g. (mask > 0.5).")
    return m.to(x.dtype).expand(x.shape)


def inpaint(score_fn: ScoreFn, sde: SDE, x: torch.Tensor, mask: torch.Tensor, method: str = DEFAULT_METHOD,
            nfe: int = 400, generator: torch.Generator | None = None, **options) -> ConditionalResult:
    """Sample the entries of x where mask == 0 given those where mask == 1.

    x: [B, *dims] data; its unknown entries are ignored (set them to 0) but must be finite.
    mask: same shape as x, or broadcastable to it (e.g. one [*dims] mask for the whole batch); 1 / True = known.
    method: "smc" (default): twisted sequential Monte Carlo (MCGdiff, Cardoso et al. 2023; ``scorelab.smc``),
    consistent: its samples follow p_0(unknown | known) as the particles (and steps) grow. Options
    ``particles`` (32), ``ess`` (0.5: resample when the effective sample size falls below ess x particles),
    ``eps`` (1e-3), ``grid`` ("uniform").
    Baselines, the replacement method (Song et al. 2021; biased where the known part is informative): "replacement"
    (= "pc", reverse diffusion + one Langevin corrector) or any sampler of ``replacement_methods()`` with its options
    (``samplers.options_of``), e.g. ``resample`` (RePaint repeats per step); with a deterministic one ("ode",
    "dpm_solver", ...) the known entries follow m(t) x + s(t) z with one z.
    nfe: budget of score evaluations (never exceeded). For "smc" it counts evaluations per particle (= steps):
    each is one batched call on B x particles inputs.

    Returns ConditionalResult(x [B, *dims], nfe, steps) with res.x == x exactly where mask == 1 ("smc" returns
    an ``SMCResult`` that adds ``particles``, ``resampled`` and ``ess``).
    """
    check_sampling_args(score_fn, sde, generator, nfe)
    if not isinstance(method, str) or method not in methods():
        raise ValueError(f"Unknown method {method!r}; choose one of {methods()}.")
    check_batch(x)  # the options are checked (by ``sample`` or below) before anything runs
    check_finite(x, "x (set the unknown entries to 0: they are ignored)")
    known = _check_mask(mask, x)
    if method == "smc":
        o = check_options("method 'smc'", options, SMC_OPTIONS, sde, " (RePaint's resample belongs to method='pc')")
        with torch.no_grad():
            res = impute(score_fn, sde, x, known, nfe=nfe, generator=generator, **o)
        if not bool(torch.isfinite(res.x).all()):
            raise ValueError("smc imputation produced non-finite values: the score returned NaN or inf.")
        return res
    method = "pc" if method == "replacement" else method
    unknown = 1 - known
    data = x.detach() * known
    fixed_z = gaussian(x, generator) if value(METHODS[method].deterministic, options) else None

    def replace(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        z = fixed_z if fixed_z is not None else gaussian(xt, generator)
        noisy = batch_view(sde.marginal_scale(t), xt) * data + batch_view(sde.marginal_std(t), xt) * z
        return unknown * xt + known * noisy

    res = sample_with_replacement(score_fn, sde, tuple(x.shape), replace, method=method, nfe=nfe,
                                  generator=generator, device=x.device, dtype=x.dtype, **options)  # no_grad inside
    res.x = torch.where(known.bool(), x.detach(), res.x)
    return res


# ---- colorization ----

def color_decoupling_matrix(dtype=torch.float64, device=None) -> torch.Tensor:
    """The orthogonal 3x3 matrix A with rows (1,1,1)/sqrt(3), (-2,1,1)/sqrt(6), (0,1,-1)/sqrt(2).

    u = A x maps RGB to a space whose first channel is sqrt(3) times the gray (channel-mean) image; the other
    two carry only colour. Song et al. 2021 (App. I.3) use a matrix of this kind."""
    A = torch.tensor([[1.0, 1.0, 1.0], [-2.0, 1.0, 1.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    return (A / A.norm(dim=1, keepdim=True)).to(dtype=dtype, device=device)


def _mix_channels(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A applied to the channel dimension of x [B, C, *spatial]."""
    return torch.einsum("ij,bj...->bi...", A, x)


def orthogonal_score(score_fn: ScoreFn, A: torch.Tensor) -> ScoreFn:
    """The score of u = A x (A orthogonal, acting on channels):  score_u(u, t) = A score_x(A^T u, t)."""
    At = A.transpose(0, 1)
    return lambda u, t: _mix_channels(A, score_fn(_mix_channels(At, u), t))


def colorize(score_fn: ScoreFn, sde: SDE, gray: torch.Tensor, generator: torch.Generator | None = None,
             method: str = DEFAULT_METHOD, nfe: int = 400, **options) -> ConditionalResult:
    """Sample RGB images whose channel mean equals ``gray``, with a score model of RGB images.

    gray: [B, 1, *spatial] or [B, *spatial] (e.g. [B, H, W]) in the same units as the model's data.
    score_fn: a score of RGB images [B, 3, *spatial].
    Inpaints u = A x with u[:, 0] = sqrt(3) gray known (see ``color_decoupling_matrix``), then returns
    x = A^T u: res.x is [B, 3, *spatial] and res.x.mean(1) equals gray up to rounding. Options as for ``inpaint``.
    """
    check_batch(gray, "gray")
    check_finite(gray, "gray")
    if gray.ndim == 4 and gray.shape[1] != 1:
        raise ValueError(f"gray must have one channel, [B, 1, H, W] or [B, H, W], got {tuple(gray.shape)}; "
                         "make a gray image from RGB with x.mean(1, keepdim=True).")
    if gray.ndim >= 3 and gray.shape[1] == 1:
        gray = gray[:, 0]
    if gray.ndim < 2:
        raise ValueError(f"gray must be [B, 1, *spatial] or [B, *spatial] (e.g. [B, H, W]), got {tuple(gray.shape)}.")
    A = color_decoupling_matrix(gray.dtype, gray.device)
    u = torch.zeros((gray.shape[0], 3, *gray.shape[1:]), dtype=gray.dtype, device=gray.device)
    u[:, 0] = math.sqrt(3.0) * gray
    mask = torch.zeros_like(u)
    mask[:, 0] = 1.0
    res = inpaint(orthogonal_score(score_fn, A), sde, u, mask, method=method, nfe=nfe, generator=generator, **options)
    res.x = _mix_channels(A.transpose(0, 1), res.x)
    return res
