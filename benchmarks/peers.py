"""Adapters that run the peers' samplers (k-diffusion, diffusers) on a scorelab score function.

Each adapter takes a score function score_fn(x, t) of a scorelab SDE and returns {name: (x, nfe_used)}. The score
is counted by a wrapper, so every peer's evaluations are measured, not assumed.

The wrappers live in the package, ``scorelab.interop``:
- k-diffusion (VE, sigma in [0.002, 80], Karras sigmas rho = 7): ``k_diffusion_denoiser``,
  D(x, sigma) = x + sigma^2 score(x, t(sigma)); ``load_k_diffusion_sampling`` loads ``k_diffusion/sampling.py``
  alone (the package __init__ imports torchvision).
- diffusers (VP, DDPM's 1000 linear betas 1e-4..0.02): ``epsilon_model``, epsilon(x, k) = -s(t_k) score(x, t_k),
  t_k the time at which the process has the scheduler's alphas_cumprod[k]; ScoreSdeVeScheduler
  (predictor-corrector) on VE with score(x, t(sigma)).

Peers use the global torch RNG; we seed it before each run. A peer that is not installed is skipped with a message.
"""

from __future__ import annotations

import importlib.util
import math

import torch

from scorelab import interop
from scorelab._extras import MissingExtraError


class Counter:
    def __init__(self, fn):
        self.fn, self.n = fn, 0

    def __call__(self, *a):
        self.n += 1
        return self.fn(*a)


def load_k_sampling():
    """k_diffusion.sampling without the package __init__ (which needs torchvision), or None with a message."""
    try:
        return interop.load_k_diffusion_sampling()
    except MissingExtraError as err:
        print(f"[peers] skipped: {err}")
        return None


K_SAMPLERS = ("euler", "heun", "dpm_2", "lms", "dpmpp_2m", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde",
              "dpm_fast")
_TWO_EVALS = ("heun", "dpm_2")  # N sigmas cost 2N - 1 evaluations (last step Euler)


def k_diffusion_runs(K, score_fn, sde_ve, shape, nfe, seed, dtype=torch.float32, names=K_SAMPLERS,
                     sigma_min=0.002, sigma_max=80.0):
    out = {}
    if K is None:
        return out

    denoiser = interop.k_diffusion_denoiser(score_fn, sde_ve)

    for name in names:
        model = Counter(denoiser)
        torch.manual_seed(seed)
        x = torch.randn(shape, dtype=dtype) * sigma_max
        steps = (nfe + 1) // 2 if name in _TWO_EVALS else nfe
        extra = {}
        if name == "dpm_fast":
            res = K.sample_dpm_fast(model, x, sigma_min, sigma_max, nfe, disable=True)
        else:
            sig = K.get_sigmas_karras(steps, sigma_min, sigma_max, rho=7.0).to(dtype)
            if name in ("dpmpp_2m_sde", "dpmpp_3m_sde"):
                extra["noise_sampler"] = K.default_noise_sampler(x)  # the Brownian tree is slow and no better
            res = getattr(K, f"sample_{name}")(model, x, sig, disable=True, **extra)
        out[f"k:{name}"] = (res, model.n)
    return out


def have_diffusers():
    if importlib.util.find_spec("diffusers") is None:
        print("[peers] diffusers not installed: skipped (pip install diffusers==0.42.1)")
        return False
    return True


VP_SCHEDULERS = ("DDIM", "DPMSolver++", "UniPC", "SDE-DPMSolver++", "SA-Solver")
# the two multistep solvers at order 3, which diffusers' docs recommend for unconditional sampling (order 2, their
# default, for guided sampling)
ORDER3 = ("DPMSolver++-3", "UniPC-3")
STOCHASTIC = ("SDE-DPMSolver++", "SA-Solver")  # their steps draw noise from the run's generator


def ddpm_level(k: int) -> float:
    """The noise level sigma = s/m of DDPM's timestep k (discrete linear betas 1e-4..0.02, Ho et al. 2020)."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)[k]
    return float(((1 - abar) / abar).sqrt())


def ddpm_last_level(nfe: int) -> float:
    """The noise level sigma = s/m of DDPM's last timestep k = round(999 / nfe) under diffusers' "linspace" spacing of
    ``nfe`` steps (its discrete linear betas 1e-4..0.02, Ho et al. 2020): where its schedulers make their last
    evaluation before the final step to sigma = 0."""
    return ddpm_level(round(999 / nfe))


def betas_for(sde, eps=1e-3, steps=1000):
    """Betas of a 1000-step discrete schedule with the noise levels of ``sde`` (sigma = s/m geometric between t = eps
    and T, abar = 1 / (1 + sigma^2)): diffusers' schedulers on the range a learned model was trained on. The
    smallest sigma is at least DDPM's 0.01: below ~0.003 consecutive alphas_cumprod tie in diffusers' float32."""
    lo, hi = interop.sigma_range(sde, eps)
    lo = max(lo, 0.01)
    sig = torch.logspace(math.log10(lo), math.log10(hi), steps, dtype=torch.float64)
    abar = 1.0 / (1.0 + sig**2)
    return (1.0 - abar / torch.cat([abar.new_ones(1), abar[:-1]])).tolist()


def diffusers_vp_runs(score_fn, sde_vp, shape, nfe, seed, dtype=torch.float32, names=VP_SCHEDULERS, betas=None):
    """diffusers' DDIM / DPM-Solver++ / UniPC / SDE-DPM-Solver++(2M) / SA-Solver (Xue et al. 2023, its defaults:
    predictor and corrector of order 2, stochastic on its middle timesteps 200-800) through the epsilon wrapper;
    DDPM's linear betas (= VPSDE(0.1, 20)) unless ``betas`` (``betas_for(sde)``) are given. ``names`` may add
    ``ORDER3``: DPM-Solver++ and UniPC at order 3."""
    out = {}
    if not have_diffusers():
        return out
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, SASolverScheduler, UniPCMultistepScheduler
    common = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    if betas is not None:
        common = dict(num_train_timesteps=len(betas), trained_betas=betas)
    makers = {
        "DDIM": lambda: DDIMScheduler(clip_sample=False, **common),
        "DPMSolver++": lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", **common),
        "UniPC": lambda: UniPCMultistepScheduler(**common),
        "DPMSolver++-3": lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=3, **common),
        "UniPC-3": lambda: UniPCMultistepScheduler(solver_order=3, **common),
        "SDE-DPMSolver++": lambda: DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", **common),
        "SA-Solver": lambda: SASolverScheduler(**common),
    }
    for name in names:
        sch = makers[name]()
        eps_model = interop.epsilon_model(score_fn, sde_vp, sch)
        model = Counter(eps_model)
        sch.set_timesteps(nfe)
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=g, dtype=dtype) * sch.init_noise_sigma
        extra = {"generator": g} if name in STOCHASTIC else {}
        for k in sch.timesteps:
            x = sch.step(model(x, int(k)), k, x, **extra).prev_sample
        out[f"d:{name}"] = (x, model.n)
    return out


def diffusers_ve_pc(score_fn, sde_ve, shape, nfe, seed, dtype=torch.float32, sigma_min=0.002, sigma_max=80.0):
    if not have_diffusers():
        return {}
    from diffusers import ScoreSdeVeScheduler
    sch = ScoreSdeVeScheduler(sigma_min=sigma_min, sigma_max=sigma_max, snr=0.16)
    steps = max(1, nfe // 2)  # one predictor + one corrector evaluation per step
    sch.set_timesteps(steps)
    sch.set_sigmas(steps)

    def model(x, sigma):
        t = sde_ve.t_from_std_ratio(sigma.to(torch.float64)).clamp(1e-6, 1.0).to(x.dtype)
        return score_fn(x, t.expand(x.shape[0]))

    m = Counter(model)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * sch.init_noise_sigma
    x_mean = x
    for i, t in enumerate(sch.timesteps):
        sigma = sch.sigmas[i]
        x = sch.step_correct(m(x, sigma), x, generator=g).prev_sample
        o = sch.step_pred(m(x, sigma), t, x, generator=g)
        x, x_mean = o.prev_sample, o.prev_sample_mean
    return {"d:ScoreSdeVe-PC": (x_mean, m.n)}


def all_peer_runs(K, score_ve, sde_ve, score_vp, sde_vp, shape, nfe, seed, dtype=torch.float32):
    out = k_diffusion_runs(K, score_ve, sde_ve, shape, nfe, seed, dtype)
    out.update(diffusers_ve_pc(score_ve, sde_ve, shape, nfe, seed, dtype))
    out.update(diffusers_vp_runs(score_vp, sde_vp, shape, nfe, seed, dtype))
    return out


__all__ = ["load_k_sampling", "k_diffusion_runs", "diffusers_vp_runs", "diffusers_ve_pc", "all_peer_runs",
           "have_diffusers", "Counter", "betas_for", "STOCHASTIC", "ORDER3"]
