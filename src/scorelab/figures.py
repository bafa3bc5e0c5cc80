"""The lecture notes' experiments, reproduced as figures with captions that quote what each run measured.

Every ``fig_*`` function runs one small, seeded CPU experiment, draws one PNG into ``out_dir`` and returns a
``Figure(path, caption, numbers)``: the caption is built from ``numbers`` (the measured values), never typed.

    fig_learned_score     data score vs a DSM-learned score; the error is large where data are scarce
    fig_manifold          sliced score matching on data on a circle: unstable without noise, stable with it
    fig_langevin_weights  Langevin ignores the mixture weights 0.2 / 0.8, annealed Langevin recovers them
    fig_sigma_ladder      perturbed densities and scores of the mixture along a noise ladder
    fig_sde_trajectories  forward / reverse SDE and probability-flow ODE paths; PC vs ODE samples
    fig_ebm               an energy network trained by denoising score matching: landscape and samples
    fig_tweedie           Tweedie denoising of noisy digits with an exact Gaussian-mixture score

``run_all(out_dir, quick=False, seed=0)`` runs them all and writes report.md / report.html beside the PNGs.
``quick=True`` shrinks every experiment (fewer training steps and samples) so the whole run takes seconds.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from . import plots
from ._checks import batch_view
from .data import digits, toy_mixture
from .ladders import geometric_sigmas
from .metrics import mixture_error
from .oracle import GaussianMixture
from .report import Report
from .samplers import sample
from .sde import SDE, VESDE, VPSDE
from .train import train
from .tweedie import denoise

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Figure(NamedTuple):
    """One reproduced experiment: the PNG, its caption (built from ``numbers``) and the measured numbers."""

    path: Path
    caption: str
    numbers: dict


# ---------------------------------------------------------------------------------------------------------
# small shared pieces
# ---------------------------------------------------------------------------------------------------------


def _single_threaded(fn):
    """Runs ``fn`` with one intra-op thread, restoring the caller's setting after. These experiments are tiny
    (2-D points, 64-wide MLPs): a second thread buys nothing, and on a busy machine OpenMP threads waiting for
    each other made the same run 10-20x slower."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapped


def _save(fig, out_dir, name: str) -> Path:
    path = Path(out_dir) / name
    fig.savefig(path, format="png")
    return path


def _compose(figs: list, path: Path, direction: str = "row") -> Path:
    """Renders matplotlib Figures (from scorelab.plots) side by side ("row") or stacked ("column") on white, top-
    or left-aligned, into one PNG written by ``plots.save_image_grid``, so each experiment stays one image."""
    import matplotlib.image

    images = []
    for f in figs:
        buf = io.BytesIO()
        f.savefig(buf, format="png")
        buf.seek(0)
        images.append(matplotlib.image.imread(buf, format="png")[..., :3].transpose(2, 0, 1))  # [3, H, W]
    axis = 2 if direction == "row" else 1  # the images are joined along it and padded along the other
    size = max(im.shape[3 - axis] for im in images)
    images = [np.pad(im, [(0, 0)] + [(0, size - im.shape[3 - axis]) if a == 3 - axis else (0, 0) for a in (1, 2)],
                     constant_values=1.0) for im in images]
    return plots.save_image_grid(np.concatenate(images, axis)[None], path, nrow=1, value_range=(0, 1), padding=0)


def _time_of(sde: SDE, sigma: float, dtype=torch.float64) -> torch.Tensor:
    """The 0-d time t with s(t)/m(t) = sigma."""
    return sde.t_from_std_ratio(torch.tensor(float(sigma), dtype=torch.float64)).to(dtype)


def _train(sde: dict, model: dict, objective: dict, data: torch.Tensor, batch: int, seed: int):
    """Trains a 64-wide, 2-layer network through the project's one training path (``scorelab.train.train`` with
    ``data=``, into a temporary run directory): Adam at lr 3e-3 decaying by a cosine, no warm-up, gradients
    clipped at norm 1e3 only to keep a diverging run finite for the plot, the loss logged at every step. ``data``
    holds steps x batch fresh draws (each seen about once). Returns (the trained ScoreModel, the step losses)."""
    steps = data.shape[0] // batch
    cfg = {"data": {}, "sde": sde, "model": {"hidden": 64, "depth": 2, **model}, "objective": objective,
           "train": {"steps": steps, "batch_size": batch, "lr": 3e-3, "warmup": 0, "lr_schedule": "cosine",
                     "grad_clip": 1e3, "ema_decay": 0.0, "seed": seed, "log_every": 1, "ckpt_every": steps,
                     "device": "cpu", "threads": 1}}
    with tempfile.TemporaryDirectory() as run_dir:
        res = train(cfg, run_dir, data=data, progress=False)
        with open(Path(run_dir) / "log.csv", newline="") as f:
            return res.model, [float(row["loss"]) for row in csv.DictReader(f)]


class _Paths:
    """A sampler callback that records the state after every step: ``xs`` [steps, B, *dims], ``ts`` [steps]."""

    def __init__(self):
        self.xs, self.ts = [], []

    def __call__(self, i, t, x):
        self.xs.append(x.clone())
        self.ts.append(float(t))

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack(self.xs), torch.tensor(self.ts)


def _shares(samples: torch.Tensor, gmm: GaussianMixture) -> torch.Tensor:
    """Fraction of the samples nearest (by exact responsibility) to each component, [K]."""
    x = samples[torch.isfinite(samples).all(1)].to(torch.float64)
    counts = torch.bincount(gmm.responsibilities(x).argmax(1), minlength=gmm.K).to(torch.float64)
    return counts / samples.shape[0]


def _fmt(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}g}"


# ---------------------------------------------------------------------------------------------------------
# 1. data score vs learned score
# ---------------------------------------------------------------------------------------------------------


@_single_threaded
def fig_learned_score(out_dir, quick: bool = False, seed: int = 0) -> Figure:
    """A score network trained by DSM at sigma = 0.5 on 0.2 N((-5,-5), I) + 0.8 N((5,5), I), compared with the
    exact score of the same perturbed density p_sigma on a grid: accurate near the modes, wrong far from them."""
    g = torch.Generator().manual_seed(seed)
    gmm, sde, sigma = toy_mixture("two_modes"), VESDE(sigma_min=0.01, sigma_max=20.0), 0.5
    steps = 500 if quick else 2000
    model, _ = _train({"type": "ve", "sigma_min": 0.01, "sigma_max": 20.0}, {"type": "mlp"},
                      {"name": "dsm", "sigma": sigma}, gmm.sample(steps * 256, generator=g, dtype=torch.float32),
                      256, seed)

    low = 1e-4  # "low density": below this fraction of the peak of p_sigma
    fig, err = plots.score_error_map(model.score, gmm.score_fn(sde), lambda x, t: gmm.log_prob(x, t, sde),
                                     float(_time_of(sde, sigma)), (-10, 10), (-10, 10), res=120, low_density=low,
                                     titles=("data score (exact)", "learned score (DSM)", "|learned - exact|"))
    path = _save(fig, out_dir, "fig1_learned_score.png")
    n = {"sigma": sigma, "train_steps": steps, "low_density": low, "err_weighted": err["density_weighted_error"],
         "err_low": err["low_density_error"], "err_high": err["high_density_error"],
         "frac_low": err["low_density_fraction"]}
    caption = (f"Data score vs learned score. A small MLP trained by denoising score matching ({steps} steps) at "
               f"sigma = {sigma} on 0.2 N((-5,-5), I) + 0.8 N((5,5), I), compared on [-10, 10]^2 with the exact "
               f"score of the same perturbed density p_sigma. The error |s_theta - grad log p_sigma| averaged "
               f"under p_sigma is {_fmt(n['err_weighted'])}; it is {_fmt(n['err_high'])} on average where p_sigma "
               f"is above {low:g} of its peak and {_fmt(n['err_low'])} where it is below "
               f"({_fmt(100 * n['frac_low'])} % of the square). Score matching only sees data, so the score is "
               "learned where the data are and is inaccurate in low-density regions.")
    return Figure(path, caption, n)


# ---------------------------------------------------------------------------------------------------------
# 2. the manifold hypothesis
# ---------------------------------------------------------------------------------------------------------


@_single_threaded
def fig_manifold(out_dir, quick: bool = False, seed: int = 0) -> Figure:
    """Sliced score matching on points of the circle of radius 2 (a 1-D manifold in 2-D): with the raw data the
    score is undefined off the curve and the objective is unbounded below; perturbing the data with a little
    Gaussian noise (sigma = 0.1) makes it a proper density and the loss settles."""
    sigma, steps = 0.1, 400 if quick else 1200
    a = 2 * math.pi * torch.rand(steps * 128, generator=torch.Generator().manual_seed(seed))
    circle = 2.0 * torch.stack([a.cos(), a.sin()], 1)
    runs = {p: _train({"type": "ve", "sigma_min": 0.01, "sigma_max": 10.0}, {"type": "mlp"},
                      {"name": "ssm", "sigma": sigma, "perturb": p}, circle, 128, seed)[1] for p in (False, True)}
    half = steps // 2
    bound = 10 * float(np.median(np.abs(runs[True][half:])))  # ten times the settled noisy-loss scale
    n = {"sigma": sigma, "train_steps": steps, "bound": bound}
    for perturb, key in ((False, "clean"), (True, "noisy")):
        tail = np.asarray(runs[perturb][half:])
        n[f"{key}_std"] = float(tail.std())
        n[f"{key}_final"] = float(np.mean(runs[perturb][-20:]))
        n[f"{key}_frac_out"] = float((np.abs(tail) > bound).mean())

    labels = {False: "data on the circle (no noise)", True: f"data + N(0, {sigma}^2 I)"}
    fig = plots.loss_curves({labels[k]: np.stack([np.arange(steps), np.asarray(v)], 1) for k, v in runs.items()},
                            title="sliced score matching loss (symlog scale)", yscale="symlog")
    path = _save(fig, out_dir, "fig2_manifold.png")
    caption = (f"The manifold hypothesis. Sliced score matching ({steps} steps) on points of a circle of radius 2, "
               f"a 1-D curve in 2-D. On the raw data the loss over the second half of training has standard "
               f"deviation {_fmt(n['clean_std'])} and ends at {_fmt(n['clean_final'])}, with "
               f"{_fmt(100 * n['clean_frac_out'])} % of the steps beyond +-{_fmt(bound)}: the score is undefined "
               f"off the curve and the objective runs away. With the data perturbed by Gaussian noise of std "
               f"{sigma} the same network and optimiser give a loss with standard deviation "
               f"{_fmt(n['noisy_std'])} ending at {_fmt(n['noisy_final'])}, "
               f"{_fmt(100 * n['noisy_frac_out'])} % of the steps out of bounds.")
    return Figure(path, caption, n)


# ---------------------------------------------------------------------------------------------------------
# 3. Langevin vs annealed Langevin: mixture weights
# ---------------------------------------------------------------------------------------------------------


@_single_threaded
def fig_langevin_weights(out_dir, quick: bool = False, seed: int = 0) -> Figure:
    """Langevin dynamics with the exact data score vs annealed Langevin with the exact perturbed scores (the
    setting of Song & Ermon 2019, Fig. 3): sigma 20 -> 1 over L = 10 levels, T = 100 steps each, eps = 0.1;
    plain Langevin takes the same L * T steps, of size 0.1, at the data score."""
    g = torch.Generator().manual_seed(seed)
    gmm = toy_mixture("two_modes")
    sde = VESDE(sigma_min=0.01, sigma_max=20.0)  # the ladder starts at s(1) = sigma_max (to 1e-6)
    n_samples, T, L = (1000, 50, 10) if quick else (2000, 100, 10)
    score_fn = gmm.score_fn(sde)
    # at t = 0 the VE marginal std is exactly 0, so the oracle's score there is that of the data p_0 itself
    x_lang = sample(score_fn, sde, (n_samples, 2), method="langevin", nfe=L * T, generator=g, dtype=torch.float64,
                    t=0.0, step_size=0.1, init_std=5.0).x
    x_ann = sample(score_fn, sde, (n_samples, 2), method="annealed_langevin", nfe=L * T, generator=g,
                   dtype=torch.float64, n_levels=L, steps_per_level=T, step_size=0.1, sigma_min=1.0,
                   denoise=False).x
    x_true = gmm.sample(n_samples, generator=g)
    w = gmm.weights
    s_lang, s_ann = _shares(x_lang, gmm), _shares(x_ann, gmm)
    n = {"true_weights": w.tolist(), "langevin_weights": s_lang.tolist(), "annealed_weights": s_ann.tolist(),
         "langevin_error": 0.5 * float((s_lang - w).abs().sum()),
         "annealed_error": 0.5 * float((s_ann - w).abs().sum()),
         "n_samples": n_samples, "steps_per_level": T}

    box = ((-10, 10), (-10, 10))
    scatter = plots.samples_scatter(
        {"exact samples": x_true, "Langevin (data score)": x_lang, "annealed Langevin": x_ann},
        subtitles={"Langevin (data score)": f"weights {s_lang[0]:.2f} / {s_lang[1]:.2f}",
                   "annealed Langevin": f"weights {s_ann[0]:.2f} / {s_ann[1]:.2f}"}, xlim=box[0], ylim=box[1])
    bars = plots.bar_weights({"Langevin": s_lang, "annealed Langevin": s_ann}, w,
                             component_labels=["mode (-5, -5)", "mode (5, 5)"])
    path = _compose([scatter, bars], Path(out_dir) / "fig3_langevin_weights.png")
    caption = (f"Langevin ignores the mixture weights. With the exact score of 0.2 N((-5,-5), I) + "
               f"0.8 N((5,5), I) and {n_samples} chains started from N(0, 5^2 I), {L * T} steps of plain "
               f"Langevin dynamics put {_fmt(s_lang[0].item())} / {_fmt(s_lang[1].item())} of the samples in "
               f"the two modes "
               f"(weight error, half the L1 distance, {_fmt(n['langevin_error'])}): far from the gap the score "
               f"of each mode does not depend on its weight, and chains never cross. Annealed Langevin "
               f"(sigma 20 -> 1, {L} levels, {T} steps each; its samples are of p_sigma at sigma = 1, hence the wider "
               f"modes) gives {_fmt(s_ann[0].item())} / "
               f"{_fmt(s_ann[1].item())} (error {_fmt(n['annealed_error'])}), the true weights 0.2 / 0.8.")
    return Figure(path, caption, n)


# ---------------------------------------------------------------------------------------------------------
# 4. perturbed densities along the noise ladder
# ---------------------------------------------------------------------------------------------------------


@_single_threaded
def fig_sigma_ladder(out_dir, quick: bool = False, seed: int = 0) -> Figure:
    """Exact densities p_sigma and scores of the two-mode mixture for four noise levels of a geometric ladder."""
    gmm, sde = toy_mixture("two_modes"), VESDE(sigma_min=0.01, sigma_max=25.0)
    sigmas = geometric_sigmas(20.0, 0.5, 4).tolist()[::-1]
    u = torch.linspace(-12.0, 12.0, 2401, dtype=torch.float64)
    diag = torch.stack([u, u], 1)  # the line through both modes
    n = {"sigmas": sigmas, "gap_drop": [], "n_modes": [], "peak_at": []}
    times = []
    for sig in sigmas:
        t = _time_of(sde, sig)
        times.append(float(t))
        ld = gmm.log_prob(diag, t.expand(diag.shape[0]), sde)
        inner = (ld[1:-1] > ld[:-2]) & (ld[1:-1] > ld[2:])
        n["n_modes"].append(int(inner.sum()))  # local maxima along the diagonal
        n["peak_at"].append(float(u[ld.argmax()]))
        n["gap_drop"].append(float(ld.max() - ld[u.abs().argmin()]))  # log p(peak) - log p(0, 0)
    fig = plots.density_panels(lambda x, t: gmm.log_prob(x, t, sde), times, [f"sigma = {v:.3g}" for v in sigmas],
                               xlim=(-12, 12), ylim=(-12, 12), score_fn=gmm.score_fn(sde), n=13,
                               suptitle="perturbed densities p_sigma and their scores")
    path = _save(fig, out_dir, "fig4_sigma_ladder.png")
    sig_s = ", ".join(f"{v:.3g}" for v in sigmas)
    modes = ", ".join(str(k) for k in n["n_modes"])
    peaks = ", ".join(f"{v:.2f}" for v in n["peak_at"])
    gaps = ", ".join(f"{v:.3g}" for v in n["gap_drop"])
    caption = ("Perturbed densities p_sigma (the data density convolved with N(0, sigma^2 I)) of "
               f"0.2 N((-5,-5), I) + 0.8 N((5,5), I) (colour) and their exact scores (arrows) for sigma = {sig_s}. "
               f"Along the line through both modes p_sigma has {modes} local maxima, the highest at u = {peaks} "
               f"(the weighted mean is u = 3), and the log-density gap between that peak and the midpoint (0, 0) is "
               f"{gaps} nats. Large noise fills the low-density region between the modes and merges them into one "
               "blob centred by the weights, so its score carries the weights and is informative everywhere; small "
               "noise keeps the data's detail. Annealed Langevin walks down this ladder.")
    return Figure(path, caption, n)


# ---------------------------------------------------------------------------------------------------------
# 5. forward / reverse SDE and probability-flow ODE
# ---------------------------------------------------------------------------------------------------------


@_single_threaded
def fig_sde_trajectories(out_dir, quick: bool = False, seed: int = 0) -> Figure:
    """The ring of 8 Gaussians under the VP SDE: forward paths (sde.discretize), reverse-SDE and probability-flow
    ODE paths with the exact score, and samples of a predictor-corrector sampler vs the ODE."""
    g = torch.Generator().manual_seed(seed)
    gmm, sde = toy_mixture("ring"), VPSDE(beta_min=0.1, beta_max=20.0, N=200 if quick else 500)
    score_fn = gmm.score_fn(sde)
    n_paths, n_samples = 12, (1000 if quick else 2000)
    steps = sde.N

    x = gmm.sample(n_paths, generator=g)
    fwd = [x]
    dt = sde.T / steps
    for i in range(1, steps + 1):
        t = torch.full((n_paths,), i * dt, dtype=torch.float64)
        f, G = sde.discretize(x, t, dt)
        x = x + f + batch_view(G, x) * torch.randn(x.shape, generator=g, dtype=x.dtype)
        fwd.append(x)
    fwd = torch.stack(fwd)
    x_end = gmm.sample(n_samples, generator=g)
    ends = x_end
    for i in range(1, steps + 1):
        t = torch.full((n_samples,), i * dt, dtype=torch.float64)
        f, G = sde.discretize(ends, t, dt)
        ends = ends + f + batch_view(G, ends) * torch.randn(ends.shape, generator=g, dtype=ends.dtype)

    rev, ode = _Paths(), _Paths()
    opts = {"generator": g, "dtype": torch.float64}
    sample(score_fn, sde, (n_paths, 2), method="euler_maruyama", nfe=steps, callback=rev, **opts)
    sample(score_fn, sde, (n_paths, 2), method="ode", nfe=steps, solver="euler", callback=ode, **opts)
    (rev, t_rev), (ode, t_ode) = rev.stacked(), ode.stacked()
    pc_steps = steps // 2  # one predictor and one corrector score evaluation per step: same budget as the ODE
    x_pc = sample(score_fn, sde, (n_samples, 2), method="pc", nfe=steps, snr=0.16, **opts).x
    x_ode = sample(score_fn, sde, (n_samples, 2), method="ode", nfe=steps, solver="euler", **opts).x
    e_pc, e_ode = mixture_error(x_pc, gmm), mixture_error(x_ode, gmm)
    n = {"steps": steps, "prior_mean_norm": float(ends.mean(0).norm()), "prior_std": float(ends.std(0).mean()),
         "pc_moment_kl": e_pc.moment_kl, "pc_mode_tv": e_pc.mode_tv,
         "ode_moment_kl": e_ode.moment_kl, "ode_mode_tv": e_ode.mode_tv, "n_samples": n_samples}

    t_fwd = torch.linspace(0.0, sde.T, steps + 1)
    paths = plots.trajectories({"forward SDE": fwd, "reverse SDE": rev, "probability-flow ODE": ode},
                               {"forward SDE": t_fwd, "reverse SDE": t_rev, "probability-flow ODE": t_ode},
                               log_prob_fn=lambda x, t: gmm.log_prob(x, t, sde), background_t=1e-3,
                               xlim=(-5.5, 5.5), ylim=(-5.5, 5.5), max_particles=n_paths,
                               title="paths of 12 particles (circles: start, crosses: end)")
    samples = plots.samples_scatter({f"PC ({pc_steps} P + {pc_steps} C steps)": x_pc,
                                     f"ODE ({steps} Euler steps)": x_ode},
                                    reference=x_end, xlim=(-5.5, 5.5), ylim=(-5.5, 5.5),
                                    suptitle="samples (grey: exact)")
    path = _compose([paths, samples], Path(out_dir) / "fig5_sde_trajectories.png", direction="column")
    caption = (f"Forward and reverse processes on a ring of 8 Gaussians (weights proportional to 1..8) under the VP "
               f"SDE (beta 0.1 -> 20), with the exact score. The forward chain ({steps} steps) ends at mean norm "
               f"{_fmt(n['prior_mean_norm'])} and per-coordinate std {_fmt(n['prior_std'])}, the N(0, I) prior. "
               f"Reverse-SDE paths are rough and probability-flow ODE paths smooth, both ending on the ring. With "
               f"{steps} score evaluations each, predictor-corrector samples reach moment KL "
               f"{_fmt(n['pc_moment_kl'])} and mode TV {_fmt(n['pc_mode_tv'])}, ODE samples moment KL "
               f"{_fmt(n['ode_moment_kl'])} and mode TV {_fmt(n['ode_mode_tv'])}.")
    return Figure(path, caption, n)


# ---------------------------------------------------------------------------------------------------------
# 6. an energy-based model trained by score matching
# ---------------------------------------------------------------------------------------------------------


@_single_threaded
def fig_ebm(out_dir, quick: bool = False, seed: int = 0) -> Figure:
    """An EnergyNet (score = -grad_x E) trained by noise-conditional DSM on the two-mode mixture over a small
    ladder, its energy landscape at the smallest noise level, and annealed-Langevin samples with its score."""
    g = torch.Generator().manual_seed(seed)
    gmm, sde = toy_mixture("two_modes"), VESDE(sigma_min=0.01, sigma_max=20.0)
    sigmas = geometric_sigmas(20.0, 0.5, 8)  # NCSN's ladder (the objective's L = 8 to 0.5); the sampler's below
    steps = 1000 if quick else 3000  # quick: the fewest steps at which -E tracked log p (corr > 0.8, seeds 0-2)
    model, losses = _train({"type": "ve", "sigma_min": 0.01, "sigma_max": 20.0}, {"type": "energy"},
                           {"name": "ncsn", "L": len(sigmas), "sigma_min": float(sigmas[-1])},
                           gmm.sample(steps * 256, generator=g, dtype=torch.float32), 256, seed)
    sig_min = float(sigmas[-1])
    t = _time_of(sde, sig_min)
    pts = plots._grid((-10.0, 10.0), (-10.0, 10.0), 81, torch.float64)[0]
    with torch.no_grad():
        energy = model.energy(pts.float(), t.float().expand(pts.shape[0])).double()
    logp = gmm.log_prob(pts, t.expand(pts.shape[0]), sde)
    near = logp > logp.max() - 20  # where the data actually are (within 20 nats of the peak)
    a, b = -energy[near] - (-energy[near]).mean(), logp[near] - logp[near].mean()
    corr = float((a * b).sum() / (a.norm() * b.norm()))
    slope = float((a * b).sum() / (b * b).sum())  # least-squares -E ~ slope * log p + c; 1 for a perfect model
    n_samples = 500 if quick else 1000
    T = 30 if quick else 60
    xs = sample(model.score, sde, (n_samples, 2), method="annealed_langevin", nfe=len(sigmas) * T, generator=g,
                n_levels=len(sigmas), steps_per_level=T, step_size=0.1, sigma_min=sig_min, denoise=False).x.double()
    shares = _shares(xs, gmm)
    n = {"train_steps": steps, "final_loss": float(np.mean(losses[-50:])), "corr_energy_logp": corr,
         "slope_energy_logp": slope,
         "sample_weights": shares.tolist(), "weight_error": 0.5 * float((shares - gmm.weights).abs().sum()),
         "sigma_min": sig_min}

    span = 20.0  # both landscapes drawn up to 20 nats above their minimum over the box

    def shown(U):
        return (U - U.min()).clamp(max=span)

    tf = t.float()
    learned = plots.energy_landscape(lambda x: shown(model.energy(x, tf.expand(x.shape[0]))), (-10, 10), (-10, 10),
                                     samples=xs, title=f"learned E(x) - min at sigma = {sig_min:.3g}; samples")
    exact = plots.energy_landscape(lambda x: shown(-gmm.log_prob(x, tf.expand(x.shape[0]), sde)), (-10, 10),
                                   (-10, 10), title="exact -log p_sigma(x) - min")
    path = _compose([learned, exact], Path(out_dir) / "fig6_ebm.png")
    caption = (f"An energy-based model trained by score matching. An MLP energy E(x, sigma), whose score is "
               f"-grad_x E, trained by noise-conditional denoising score matching "
               f"({steps} steps, 8 levels 20 -> {sig_min:.3g}) on 0.2 N((-5,-5), I) + 0.8 N((5,5), I); the "
               f"partition function never appears. Where the data are (log p within 20 nats of its peak) -E "
               f"correlates with the exact "
               f"log p_sigma at {_fmt(corr)}, with slope {_fmt(slope)} (1 would match the exact log-density up to its "
               f"unknown constant). Annealed Langevin with the learned score puts "
               f"{_fmt(shares[0].item())} / {_fmt(shares[1].item())} of {n_samples} samples in the two modes "
               f"(weight error {_fmt(n['weight_error'])}).")
    return Figure(path, caption, n)


# ---------------------------------------------------------------------------------------------------------
# 7. Tweedie denoising of digits
# ---------------------------------------------------------------------------------------------------------


def digits_mixture(x: torch.Tensor, y: torch.Tensor, ridge: float = 5e-3) -> GaussianMixture:
    """Class-conditional Gaussians fitted to images x [N, *dims] with labels y [N]: weights = class
    frequencies, means and covariances per class (+ ridge * I, since some pixels are constant within a class).
    An exact Gaussian mixture in D = prod(dims) dimensions, so its score and Tweedie denoiser are exact."""
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    classes = torch.unique(y)
    eye = torch.eye(flat.shape[1], dtype=torch.float64)
    weights, means, covs = [], [], []
    for c in classes:
        xc = flat[y == c]
        weights.append(xc.shape[0])
        means.append(xc.mean(0))
        covs.append(torch.cov(xc.T) + ridge * eye)
    return GaussianMixture(torch.tensor(weights, dtype=torch.float64), torch.stack(means), torch.stack(covs))


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB for images in [0, 1]: 10 log10(1 / MSE)."""
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


@_single_threaded
def fig_tweedie(out_dir, quick: bool = False, seed: int = 0) -> Figure:
    """Tweedie denoising E[x | y] = y + sigma^2 grad log p_sigma(y) of held-out digits (pixels in [0, 1]) with
    noise sigma = 0.3, using the exact score of class-conditional Gaussians fitted to the training digits."""
    g = torch.Generator().manual_seed(seed)
    data = digits()
    x = data.x / (data.levels - 1)
    perm = torch.randperm(x.shape[0], generator=g)
    test, train = perm[:200], perm[200:]
    gmm = digits_mixture(x[train], data.y[train])
    sde, sigma = VESDE(sigma_min=1e-3, sigma_max=2.0), 0.3
    clean = x[test].to(torch.float64)
    noisy = clean + sigma * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    flat = noisy.reshape(noisy.shape[0], -1)
    den = denoise(gmm.score_fn(sde), sde, flat, sigma).reshape(clean.shape)
    n = {"sigma": sigma, "psnr_noisy": _psnr(noisy, clean), "psnr_denoised": _psnr(den, clean),
         "psnr_denoised_clipped": _psnr(den.clamp(0, 1), clean), "n_test": len(test), "n_train": len(train)}

    k = 8
    fig = plots.image_grid(torch.cat([clean[:k], noisy[:k], den[:k]]), nrow=k, value_range=(0.0, 1.0), scale=0.09,
                           title=f"rows: clean, noisy (sigma = {sigma}), Tweedie denoised")
    path = _save(fig, out_dir, "fig7_tweedie.png")
    caption = (f"Tweedie denoising of held-out 8x8 digits (pixels scaled to [0, 1]) corrupted by Gaussian noise "
               f"of std {sigma}. The denoiser is E[x | y] = y + sigma^2 grad log p_sigma(y) with the exact score "
               f"of a mixture of 10 class-conditional Gaussians fitted to {n['n_train']} training digits (an "
               f"exact oracle in 64-D, no network). Over {n['n_test']} test digits the PSNR rises from "
               f"{n['psnr_noisy']:.2f} dB (noisy) to {n['psnr_denoised']:.2f} dB (denoised).")
    return Figure(path, caption, n)


# ---------------------------------------------------------------------------------------------------------
# everything, as a report
# ---------------------------------------------------------------------------------------------------------

FIGURES: dict[str, Callable[..., Figure]] = {
    "learned_score": fig_learned_score,
    "manifold": fig_manifold,
    "langevin_weights": fig_langevin_weights,
    "sigma_ladder": fig_sigma_ladder,
    "sde_trajectories": fig_sde_trajectories,
    "ebm": fig_ebm,
    "tweedie": fig_tweedie,
}


def _write_report(out_dir: Path, title: str, intro: str, figures: list[Figure]) -> list[Path]:
    rep = Report(title).add_section("About this report", intro)
    for f in figures:
        rep.add_figure(f.path, f.caption)
    return list(rep.write(out_dir))


def run_all(out_dir, quick: bool = False, seed: int = 0, names=None, progress: bool = False) -> dict:
    """Runs the experiments (all, or those in ``names``, keys of FIGURES) and writes the report; ``progress``
    shows a tqdm bar over the experiments (on a terminal only).

    Returns {"figures": {name: Figure}, "report": [report.md, report.html]}."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}.")
    names = list(FIGURES) if names is None else list(names)
    unknown = [k for k in names if k not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown}; choose from {list(FIGURES)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    figs = {}
    with tqdm(names, desc="figures", unit="figure", disable=None if progress else True, leave=False) as bar:
        for k in bar:
            bar.set_postfix_str(k)
            figs[k] = FIGURES[k](out, quick=quick, seed=seed)
    title = "scorelab: the lecture notes' experiments" + (" (quick mode)" if quick else "")
    intro = (f"Each figure is one small experiment run on the CPU for this report (seed {seed}"
             f"{', quick mode: fewer training steps and samples' if quick else ''}). Every number in a caption was "
             "measured in this run; exact scores and densities come from the Gaussian-mixture oracle "
             "(scorelab.oracle). Regenerate with `scorelab figures`.")
    return {"figures": figs, "report": _write_report(out, title, intro, list(figs.values()))}
