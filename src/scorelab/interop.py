"""Interoperability: scorelab scores as k-diffusion denoisers and diffusers epsilon models, the other way round,
and ``save_run`` for models trained in Python.

Every process here has the Gaussian kernel x_t = m(t) x_0 + s(t) z. Dividing by m(t) gives EDM's / k-diffusion's
variable x / m = x_0 + sigma z with sigma = s(t) / m(t) (Karras et al. 2022, Eq. 1 with s(t) = m(t)); a DDPM
scheduler's variable is x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) z. Points of equal signal-to-noise ratio
are the same random variable up to scale, so one network serves all three views:

    k-diffusion denoiser   D(x, sigma) = x + sigma^2 m score(m x, t),          t = t_from_std_ratio(sigma)
    diffusers epsilon      eps(x_k, k) = -sqrt(1 - abar_k) (m / sqrt(abar_k)) score((m / sqrt(abar_k)) x_k, t),
                                         t = t_from_log_snr(log(abar_k / (1 - abar_k)))
    and back               score(x, t) = (D(x / m, sigma) - x / m) / (m sigma^2)        (Tweedie, Robbins 1956)
                           score(x, t) = -(sqrt(abar) / m) eps(x sqrt(abar) / m, k) / sqrt(1 - abar)

For VE m = 1, so D(x, sigma) = x + sigma^2 score(x, t). The adapters are plain callables (no state), usable with
any sampler of either package; ``load_k_diffusion_sampling`` loads ``k_diffusion.sampling`` without the package
``__init__`` (which imports torchvision).

Install the peers with ``pip install 'scorelab[peers]'`` (diffusers) and ``pip install --no-deps k-diffusion``.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ._checks import batch_view
from ._extras import MissingExtraError
from .sde import SDE, VESDE, VPSDE

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["k_diffusion_denoiser", "score_from_denoiser", "sigma_range", "epsilon_model", "score_from_diffusers",
           "sde_for_scheduler", "load_k_diffusion_sampling", "save_run"]


def _check(score_fn, sde) -> None:
    if not callable(score_fn):
        raise TypeError(f"score_fn must be a callable score_fn(x, t), got {type(score_fn).__name__}.")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scorelab SDE (VESDE, VPSDE, SubVPSDE), got {type(sde).__name__}.")


def _per_example(v, x: torch.Tensor) -> torch.Tensor:
    """A number, 0-d or [B] tensor as a float64 [B] tensor on x's device."""
    v = torch.as_tensor(v, dtype=torch.float64, device=x.device)
    return v.expand(x.shape[0]) if v.ndim == 0 else v.reshape(x.shape[0])


# --------------------------------------------------------------------------- k-diffusion / EDM
def sigma_range(sde: SDE, eps: float = 1e-3) -> tuple[float, float]:
    """(sigma at t = eps, sigma at t = T) of ``sde`` in EDM's units sigma = s(t) / m(t): the noise levels its
    score was trained on, to pick a k-diffusion grid (e.g. ``get_sigmas_karras(n, *sigma_range(sde))``)."""
    t = torch.tensor([eps, sde.T], dtype=torch.float64)
    sig = sde.marginal_std(t) / sde.marginal_scale(t)
    return float(sig[0]), float(sig[1])


def k_diffusion_denoiser(score_fn: ScoreFn, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A scorelab score as a k-diffusion / EDM denoiser ``D(x, sigma) = x + sigma^2 m score(m x, t)``.

    x is k-diffusion's variable (x_t / m(t)), [B, *dims]; sigma a number or [B] tensor in sigma_range(sde); t is
    the time with s(t) / m(t) = sigma. Use it with any ``k_diffusion.sampling.sample_*`` and start from
    ``randn * sigma_max``; the samples are in data units (x_0), whatever the process.
    """
    _check(score_fn, sde)

    def denoiser(x: torch.Tensor, sigma) -> torch.Tensor:
        sig = _per_example(sigma, x)
        t = sde.t_from_std_ratio(sig)
        m = sde.marginal_scale(t)
        score = score_fn(batch_view(m.to(x.dtype), x) * x, t.to(x.dtype))
        return x + batch_view((sig**2 * m).to(x.dtype), x) * score

    return denoiser


def score_from_denoiser(denoiser: Callable, sde: SDE | None = None) -> tuple[ScoreFn, SDE]:
    """A k-diffusion / EDM denoiser D(x, sigma) as a scorelab ``(score_fn, sde)``, by Tweedie's formula
    ``score(x, t) = (D(x / m, sigma) - x / m) / (m sigma^2)`` with sigma = s(t) / m(t).

    ``sde`` defaults to EDM's range as a VE process, VESDE(0.002, 80) (Karras et al. 2022, Table 1); any scorelab
    process works, as long as its sigma_range lies where the denoiser was trained.
    """
    if not callable(denoiser):
        raise TypeError(f"denoiser must be a callable D(x, sigma), got {type(denoiser).__name__}.")
    sde = VESDE(sigma_min=0.002, sigma_max=80.0) if sde is None else sde
    _check(denoiser, sde)

    def score_fn(x: torch.Tensor, t) -> torch.Tensor:
        t = _per_example(t, x)
        m, s = sde.marginal_scale(t), sde.marginal_std(t)
        sig = s / m
        xk = x / batch_view(m.to(x.dtype), x)
        d = denoiser(xk, sig.to(x.dtype))
        return (d - xk) / batch_view((m * sig**2).to(x.dtype), x)

    return score_fn, sde


def load_k_diffusion_sampling() -> types.ModuleType:
    """``k_diffusion.sampling`` alone: the package ``__init__`` imports torchvision (and more) that sampling does
    not need. A stub ``k_diffusion.utils`` provides the one helper it uses (append_dims); sys.modules is left as
    it was. Raises MissingExtraError when k-diffusion is not installed."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("k-diffusion is not installed; install it without its dependencies (they pull "
                                "torchvision): pip install --no-deps k-diffusion")
    root = list(spec.submodule_search_locations)[0]
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [root]
    utils = types.ModuleType("k_diffusion.utils")

    def append_dims(x, target_dims):
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    saved = {k: sys.modules.get(k) for k in ("k_diffusion", "k_diffusion.utils")}
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = pkg, utils
    try:
        s = importlib.util.spec_from_file_location("k_diffusion.sampling", f"{root}/sampling.py")
        mod = importlib.util.module_from_spec(s)
        s.loader.exec_module(mod)
    except ImportError as err:
        raise MissingExtraError(f"k_diffusion.sampling could not be loaded ({err}); its samplers need torchsde and "
                                "scipy: pip install 'scorelab[peers]'.") from None
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod


# --------------------------------------------------------------------------- diffusers
def _alphas_cumprod(scheduler_or_abar) -> torch.Tensor:
    ab = getattr(scheduler_or_abar, "alphas_cumprod", scheduler_or_abar)
    ab = torch.as_tensor(ab, dtype=torch.float64)
    if ab.ndim != 1 or len(ab) < 2 or not bool(((ab > 0) & (ab < 1)).all()) or not bool((ab[1:] < ab[:-1]).all()):
        raise ValueError("alphas_cumprod must be a decreasing 1-D sequence in (0, 1) (a DDPM-type scheduler's "
                         "`alphas_cumprod`); a VE scheduler has none: use k_diffusion_denoiser with sigmas instead.")
    return ab


def epsilon_model(score_fn: ScoreFn, sde: SDE, scheduler) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """A scorelab score as a diffusers-style epsilon model ``eps = model(x_k, k)`` for a scheduler with
    ``alphas_cumprod`` (DDPM, DDIM, DPMSolverMultistep, UniPC, Euler, ...; prediction_type "epsilon").

    k is the scheduler's timestep (an int, 0-d or [B] tensor; fractional steps are interpolated in log-SNR), x_k
    the scheduler's variable sqrt(abar_k) x_0 + sqrt(1 - abar_k) z. The score is evaluated at the time of
    ``sde`` with the same signal-to-noise ratio, on x rescaled to that process: for a VPSDE whose alpha_bar
    matches the scheduler this is simply eps = -s(t) score(x, t); VE and sub-VP work through the rescaling.
    Timesteps noisier than the process's T are evaluated at the matching t > T (DDPM's k = 999 is t = 1.0034
    of VPSDE(0.1, 20)): a slight extrapolation, where clamping to T would feed the score the wrong noise level.
    ``scheduler`` is the scheduler or its alphas_cumprod.
    """
    _check(score_fn, sde)
    ab = _alphas_cumprod(scheduler)
    lam = torch.log(ab) - torch.log1p(-ab)

    def eps_model(x: torch.Tensor, k) -> torch.Tensor:
        k = _per_example(k, x)
        lam_k = _interp(k, lam.to(x.device))
        abar = torch.sigmoid(lam_k)
        t = sde.t_from_log_snr(lam_k)  # may pass T a little: DDPM's k = 999 is t = 1.0034 of VPSDE(0.1, 20)
        r = sde.marginal_scale(t) / abar.sqrt()  # x_t = r x_k
        score = score_fn(batch_view(r.to(x.dtype), x) * x, t.to(x.dtype))
        return -batch_view((torch.sqrt(1 - abar) * r).to(x.dtype), x) * score

    return eps_model


def _interp(k: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """table at fractional indices k (linear), clamped to [0, len - 1]."""
    k = k.clamp(0, len(table) - 1)
    lo = k.floor().long().clamp(max=len(table) - 2)
    w = k - lo
    return table[lo] * (1 - w) + table[lo + 1] * w


def sde_for_scheduler(scheduler) -> VPSDE:
    """The VP process matching a diffusers scheduler's training schedule: DDPM's ``linear`` betas
    b_start..b_end over N steps are the Euler discretisation of beta(t) in [N b_start, N b_end] (Song et al.
    2021, Appendix B); ``squaredcos_cap_v2`` is the cosine schedule (Nichol & Dhariwal 2021)."""
    cfg = getattr(scheduler, "config", None)
    if cfg is None:
        raise TypeError(f"scheduler must be a diffusers scheduler with a config, got {type(scheduler).__name__}.")
    n, kind = int(cfg.num_train_timesteps), cfg.beta_schedule
    if kind == "linear":
        return VPSDE(beta_min=float(cfg.beta_start) * n, beta_max=float(cfg.beta_end) * n, N=n)
    if kind == "squaredcos_cap_v2":
        return VPSDE(N=n, schedule="cosine")
    raise ValueError(f"no scorelab process is preset for beta_schedule {kind!r}; pass sde= (any VPSDE works: the "
                     "adapter matches times by signal-to-noise ratio).")


def score_from_diffusers(model: Callable, scheduler, sde: SDE | None = None,
                         prediction_type: str | None = None) -> tuple[ScoreFn, SDE]:
    """A diffusers model (e.g. ``UNet2DModel``; called as ``model(x_k, k)``, returning a tensor or an object with
    ``.sample``) trained with ``scheduler``'s alphas_cumprod, as a scorelab ``(score_fn, sde)``.

    score(x, t) = -(sqrt(abar) / m) eps(x sqrt(abar) / m, k) / sqrt(1 - abar) at the fractional timestep k whose
    log-SNR equals the process's at t (interpolated; clamped to the trained range). The model's output is
    converted from ``prediction_type`` ("epsilon", "v_prediction" or "sample"; default the scheduler's).
    ``sde`` defaults to ``sde_for_scheduler(scheduler)``.
    """
    if not callable(model):
        raise TypeError(f"model must be callable model(x, timestep), got {type(model).__name__}.")
    ab = _alphas_cumprod(scheduler)
    sde = sde_for_scheduler(scheduler) if sde is None else sde
    _check(model, sde)
    kind = prediction_type or getattr(getattr(scheduler, "config", None), "prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {kind!r}.")
    lam_table = torch.log(ab) - torch.log1p(-ab)  # decreasing in k
    ks = torch.arange(len(ab), dtype=torch.float64)

    def score_fn(x: torch.Tensor, t) -> torch.Tensor:
        t = _per_example(t, x)
        lam = sde.log_snr(t)
        k = _invert_decreasing(lam, lam_table.to(x.device), ks.to(x.device))
        lam_k = _interp(k, lam_table.to(x.device))
        abar = torch.sigmoid(lam_k)
        alpha, sigma = abar.sqrt(), torch.sqrt(1 - abar)
        r = alpha / sde.marginal_scale(t)  # x_k = r x
        xk = batch_view(r.to(x.dtype), x) * x
        out = model(xk, k.to(x.dtype))
        out = getattr(out, "sample", out)
        a_, s_ = batch_view(alpha.to(x.dtype), x), batch_view(sigma.to(x.dtype), x)
        if kind == "v_prediction":  # v = alpha eps - sigma x_0 (Salimans & Ho 2022)
            out = a_ * out + s_ * xk
        elif kind == "sample":
            out = (xk - a_ * out) / s_
        return -batch_view((r / sigma).to(x.dtype), x) * out

    return score_fn, sde


def _invert_decreasing(y: torch.Tensor, table: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """x with table(x) = y for a decreasing table, linear between entries, clamped to the table's range."""
    flipped = table.flip(0)  # increasing
    y = torch.minimum(torch.maximum(y, flipped[0]), flipped[-1])  # tensors: no host sync inside samplers
    idx = torch.searchsorted(flipped, y).clamp(1, len(table) - 1)
    y0, y1 = flipped[idx - 1], flipped[idx]
    x0, x1 = xs.flip(0)[idx - 1], xs.flip(0)[idx]
    w = (y - y0) / (y1 - y0)
    return x0 + w * (x1 - x0)


# --------------------------------------------------------------------------- runs from Python
def _model_type(net: torch.nn.Module) -> str:
    from .models import EnergyNet, MLPScoreNet, UNet

    for cls, kind in ((MLPScoreNet, "mlp"), (UNet, "unet"), (EnergyNet, "energy")):
        if type(net) is cls:
            return kind
    raise TypeError(f"save_run stores ScoreModels built on MLPScoreNet, UNet or EnergyNet (what `scorelab.load` can "
                    f"rebuild), got a {type(net).__name__} network; save other networks with safetensors yourself.")


def save_run(model: torch.nn.Module, run_dir: str | Path, data_shape, *, model_config: dict | None = None,
             ema: torch.nn.Module | None = None, scaler=None, step: int = 0, config: dict | None = None,
             overwrite: bool = False) -> Path:
    """Write a ScoreModel trained in Python as a run directory that ``scorelab.load`` and the CLI read.

    model         a ScoreModel(net, sde, parameterization) with net an MLPScoreNet, UNet or EnergyNet
    data_shape    the shape of one example, e.g. (2,) or (1, 28, 28)
    model_config  the network's constructor arguments as in a config's model section (hidden, depth, ...;
                  defaults for the rest); checked by rebuilding the network and loading the weights into it
    ema           EMA weights to store as the run's weights (default: the model's own)
    scaler        a scorelab.data.AffineScaler if the model was trained on scaled data (samples map back)
    step, config  training steps and the other config sections (data, objective, train) for the record
    overwrite     replace a run already in run_dir (refused by default)

    Written by scorelab.checkpoint (atomic safetensors + JSON, no pickle). Returns the run directory.
    """
    from . import checkpoint as ckpt
    from .config import build_model, build_sde, scaler_state, sde_section, validate

    if ckpt.has_checkpoint(run_dir) and not overwrite:
        raise ValueError(f"{str(run_dir)!r} already holds a run; choose another directory or pass overwrite=True.")
    net, sde = getattr(model, "net", None), getattr(model, "sde", None)
    if net is None or sde is None or not hasattr(model, "parameterization"):
        raise TypeError(f"model must be a scorelab ScoreModel(net, sde), got {type(model).__name__}.")
    data_shape = tuple(int(v) for v in data_shape)
    given = dict(config or {})
    section = {**(model_config or {}), "type": _model_type(net), "parameterization": model.parameterization}
    given["model"] = section
    given["sde"] = sde_section(sde)
    given.setdefault("data", {"name": "external"})  # trained outside scorelab's data loaders
    cfg = validate(given)
    rebuilt = build_model(cfg["model"], build_sde(cfg["sde"]), data_shape)
    weights = (ema if ema is not None else model).state_dict()
    try:
        ckpt.load_module_state(rebuilt, weights, "model")
    except ValueError as e:
        raise ValueError(f"the model does not match model_config {section} ({e}); pass the network's constructor "
                         "arguments as model_config, e.g. {'hidden': 64, 'depth': 2}.") from None
    step = int(step)
    meta = {"step": step, "config": cfg, "data_shape": list(data_shape), "scaler": scaler_state(scaler),
            "torch_version": torch.__version__, "source": "scorelab.interop.save_run"}
    ema_model = ema if ema is not None else model
    ckpt.save_checkpoint(run_dir, model=model, ema=ema_model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                         meta=meta)
    return Path(run_dir)

