"""Samplers on learned scores (issue 12): the same trained model sampled by scorelab's methods and by the peers'.

Two runs: ``toy`` (configs/toy.yaml, the 8-ring, VE; trained once into ``--cache DIR/toy`` when absent,
``--toy-steps``, default 4000) and ``digits``, a run of configs/digits.yaml trained on the fixed train split of
``scorelab.data.digits`` (1498 images; the test split's 299 are held out), given by ``--digits-dir`` (a copy:
sampling on optimised grids writes RUN/grids). Each model is sampled at nfe 5, 10, 20, 50 by a fixed set of
scorelab configurations, the same for both runs (``OURS``: each method at its defaults, the stochastic
DPM-Solver++ 2M/3M also with sigma_min = 0.002, on the Karras grid to sigma_min = 0.01 and with the final
denoising step ``denoise_to_zero``, UniPC and DEIS also on equal steps in t, UniPC of order 3 on DDPM's levels to
its last timestep at the budget, then x0_hat (``unipc3/ddpm/dz``) or the second-order step to sigma = 0
(``unipc3/ddpm/dz2``), SDE-DPM-Solver++(2M) with the SA-Solver corrector on the same levels (``sde2M+c2/ddpm/dz``;
with eta = 0.5 only inside SA-Solver's band of noise levels, ``sde2M+c2/band/eta.5``),
and ``+opt`` on grids optimised for the model;
``--only`` picks rows), by ``default_sampler(nfe)`` (the "default" of the summary: ``sample()`` with no method),
and by the peers':
k-diffusion through ``interop.k_diffusion_denoiser`` (on the VP run through the same wrapper in sigma = s/m),
diffusers' DDIM / DPM-Solver++ / UniPC (both also at order 3) / SDE-DPM-Solver++ / SA-Solver through
``interop.epsilon_model``, diffusers' ScoreSdeVe PC on the VE run.
A third run, ``digits-exact``, keeps the digits run's process, scaler and classifier but swaps its network for the
exact score of a Gaussian mixture fitted to the same train split (``digits_mixture``): what the samplers do on
image-shaped data when the score is right, beside what they do on the model.

Distances. Toy: moment KL and mode TV against the exact ring (``mixture_error``) and sliced W2 against 4000 fresh
exact draws; floor: a second exact sample set. Digits: ``scorelab evaluate``'s protocol
(``evaluate.evaluate_images``): samples mapped to data units, clipped and quantised like the data, and the Frechet
distance between Gaussian fits of the reference classifier's pooled features (cached in ``--classifier-cache``,
default $SCORELAB_CACHE) of k = min(--digits-n, 1498) samples and the m = min(k, 299) test images; floor: k train
images against the same test images, the mean over evaluate.FLOOR_DRAWS train subsets (for k <= 299 the same subsets
as ``scorelab evaluate --seed 0``). The distance of 299 samples moves by about +-0.4 with the sample set, far more
than the samplers differ; k = 1200 against the same 299 test images cuts the samples' share of that noise (the test
images' share is the same for every sampler); second column sliced W2 in [-1, 1] pixels against the same test images,
floor over the same train subsets. Digits-exact: the Frechet distance in the same features against as many exact
draws of the mixture, quantised the same way, and moment KL in model units against the mixture; floor: a second exact
sample set. Every number is the median over the sampling ``--seeds``; under the summary, the per-seed difference
between scorelab's best and the two best peers (a seed gives every deterministic sampler the same x_T, and the sample
set of a seed moves the distance more than the samplers do).

    nice -n 5 .venv/bin/python benchmarks/samplers_learned.py --cache /tmp/learned-runs --runs toy --seeds 0 1 2
    nice -n 5 .venv/bin/python benchmarks/samplers_learned.py --cache /tmp/learned-runs --runs digits \
        --digits-dir /tmp/learned-runs/digits --budgets 10 20 --opt-budgets --seeds 0 1 2

``--digits-dir`` takes any image run trained on the train split of a built-in set: the Fashion-MNIST run of
``benchmarks/images.py fashion-gpu`` too, on a GPU with ``--device cuda`` (the network and the reference classifier
run there, the samplers and peers on the CPU with the same draws: ``HostSide``), e.g. ``--digits-dir OUT/run
--digits-n 2000 --budgets 10 20 5 --opt-budgets --seeds 0 1 2 --threads 16 --device cuda``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402
import scorelab  # noqa: E402
from peers import ddpm_last_level, ddpm_level  # noqa: E402
from scorelab import interop  # noqa: E402
from scorelab.checkpoint import META_NAME  # noqa: E402
from scorelab.data import ring_mixture  # noqa: E402
from scorelab.metrics import mixture_error, sliced_wasserstein  # noqa: E402
from scorelab.sde import VESDE, VPSDE  # noqa: E402


def _train(config: str, out: Path, steps: int, extra=()):
    if (out / META_NAME).exists():
        return
    cmd = [sys.executable, "-m", "scorelab.cli", "train", config, "--out", str(out), "--quiet",
           "--set", f"train.steps={steps}", *extra]
    print("[train]", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


class HostSide:
    """A run held on an accelerator, seen from the CPU: every sampler and peer runs on the host with CPU generators
    (the same seeds give the same x_T as a CPU run), and each score evaluation moves x to the run's device and back."""

    def __init__(self, run):
        self._run = run

    def __getattr__(self, name):
        return getattr(self._run, name)

    def score(self, x, t, y=None):
        dev = self._run.device
        t = t.to(dev) if isinstance(t, torch.Tensor) else t
        return self._run.score(x.to(dev), t, y).to(x.device)

    __call__ = score


def load_run(path: Path, device: str):
    run = scorelab.load(path, device=device)
    return run if run.device.type == "cpu" else HostSide(run)


def train_toy(cache: Path, steps: int) -> Path:
    """The toy run in ``cache/toy`` (trained only when absent)."""
    cache.mkdir(parents=True, exist_ok=True)
    _train("toy", cache / "toy", steps)
    return cache / "toy"


SA_BAND = (ddpm_level(200), ddpm_level(800))  # diffusers' SA-Solver: tau = 1 on timesteps 200-800, else 0


def top_level(sde, nfe: int) -> float:
    """The process's own top noise level sigma(T) (a grid from there starts at T)."""
    return float(interop.sigma_range(sde)[1])


# scorelab's configurations, each at its defaults; "+opt" uses the grid optimised for the model (optimized_grid)
# (the same set for every run: nothing here is tuned on one of them)
OURS = [("ancestral", "ancestral", {}), ("euler_maruyama", "euler_maruyama", {}), ("dpm_solver", "dpm_solver", {}),
        ("sde-dpm2M", "sde_dpm_solver", {}),
        ("sde-dpm2M/smin.002", "sde_dpm_solver", {"sigma_min": 0.002}),
        ("sde-dpm2M/karras/smin.01", "sde_dpm_solver", {"grid": "karras", "sigma_min": 0.01}),
        ("sde-dpm3M", "sde_dpm_solver", {"order": 3}),
        ("sde-dpm3M/smin.002", "sde_dpm_solver", {"order": 3, "sigma_min": 0.002}),
        ("sde-dpm3M/karras/smin.01", "sde_dpm_solver", {"order": 3, "grid": "karras", "sigma_min": 0.01}),
        ("sde-dpm2M+dz", "sde_dpm_solver", {"denoise_to_zero": True}),
        ("sde-dpm3M+dz", "sde_dpm_solver", {"order": 3, "denoise_to_zero": True}),
        ("unipc", "unipc", {}), ("ipndm", "ipndm", {}), ("deis", "deis", {}), ("lms", "lms", {}),
        ("edm_heun", "edm_heun", {}),
        # equal steps in t (DDIM's and diffusers' habit for VP models) for the two data-prediction solvers: added
        # after a sweep of grids and variants on the digits run (seeds 0-9), confirmed on seeds 10-29
        ("unipc/uniform", "unipc", {"grid": "uniform"}), ("deis/uniform", "deis", {"grid": "uniform"}),
        # the same grid with the nfe-10 default's end ("auto:0.03"), as the mixture benchmark's unipc/uniform/auto: the
        # best at 10 on both digits networks, VP and sub-VP (n = 1200, seeds 0-9, 2026-12-05)
        ("unipc/uniform/auto", "unipc", {"grid": "uniform", "sigma_min": "auto:0.03"}),
        # SDE-DPM-Solver++(3M) on the Karras grid ending with x0_hat, as k-diffusion's dpmpp_3m_sde steps it, the end
        # chosen for the score: the best on the digits run at 20 evaluations (n = 1200, 2026-12-05), where log-SNR
        # steps, order 2 and the calibrated weights each cost 1.07-1.3x; on nine 2-D and vector runs 1.02-154x worse
        ("sde-dpm3M+dz/karras", "sde_dpm_solver", {"order": 3, "grid": "karras", "sigma_min": "auto",
                                                   "denoise_to_zero": True}),
        # the default below 8 evaluations before its end was chosen for the score ("auto:0.01", 2026-11-25)
        ("ipndm2/rho10/10-.01", "ipndm", {"order": 2, "rho": 10.0, "sigma_max": 10.0, "sigma_min": 0.01}),
        # the default from 20 evaluations before its pilot ran to the ladder's bottom (2026-11-25, 03:30 UTC)
        ("sde-dpm2M+dz/auto:0.03", "sde_dpm_solver", {"denoise_to_zero": True, "sigma_min": "auto:0.03"}),
        # the default from 20 evaluations before its weights were calibrated on Gaussian data (2026-11-25, 05:00 UTC)
        ("sde-dpm2M+dz/auto", "sde_dpm_solver", {"denoise_to_zero": True, "sigma_min": "auto"}),
        # the calibrated SDE step stochastic only below a noise level (stochastic_below), the ODE above it
        ("sde-dpm2M+dz/auto/cal/sb.5", "sde_dpm_solver",
         {"denoise_to_zero": True, "sigma_min": "auto", "calibrate": True, "stochastic_below": 0.5}),
        ("sde-dpm2M+dz/auto/cal/sb1", "sde_dpm_solver",
         {"denoise_to_zero": True, "sigma_min": "auto", "calibrate": True, "stochastic_below": 1.0}),
        # the default from 20 to 31 evaluations before its window was read off the score (2026-11-25)
        ("sde-dpm2M+dz/auto/cal/sb.7", "sde_dpm_solver",
         {"denoise_to_zero": True, "sigma_min": "auto", "calibrate": True, "stochastic_below": 0.7}),
        # diffusers' UniPC on a VP model as its scheduler steps it, at order 3: DDPM's time-uniform levels from the
        # process's top (sigma(T)) to those of its last timestep at this budget, k = round(999 / nfe) (sigma 0.34 at
        # 10, 0.18 at 20), then x0_hat. On DDPM's betas at order 2 it is diffusers' UniPC to +-0.001 in Frechet
        # distance (four digits networks, n = 1200, seeds 0-7; 2026-12-05); the best scorelab row at 10 on two of four
        # digits networks (docs/samplers.md, "Learned digits at 10")
        ("unipc3/ddpm/dz", "unipc", {"order": 3, "grid": "ddpm", "denoise_to_zero": True,
                                     "sigma_min": lambda sde, nfe: ddpm_last_level(nfe), "sigma_max": top_level}),
        # the same with the final step to sigma = 0 of second order in sigma (final_order=2, at no extra evaluation;
        # docs/samplers.md, "A second-order step to sigma = 0")
        ("unipc3/ddpm/dz2", "unipc", {"order": 3, "grid": "ddpm", "denoise_to_zero": True, "final_order": 2,
                                      "sigma_min": lambda sde, nfe: ddpm_last_level(nfe), "sigma_max": top_level}),
        # diffusers' SDE-DPM-Solver++(2M) on the same levels with the SA-Solver corrector of order 2: it draws the
        # same noise as that peer for a seed; at 20 on two digits networks 0.008-0.012 ahead of it (31 seeds), at 10
        # on the VE one ahead of every peer (docs/samplers.md, "A second-order step to sigma = 0")
        ("sde2M+c2/ddpm/dz", "sde_dpm_solver", {"corrector_order": 2, "grid": "ddpm", "denoise_to_zero": True,
                                                "sigma_min": lambda sde, nfe: ddpm_last_level(nfe),
                                                "sigma_max": top_level}),
        # the same with eta = 0.5 (the SDE of half the noise) on the steps that start between the DDPM levels of
        # timesteps 200 and 800 (sigma 0.72 and 25.7: diffusers' SA-Solver's band of tau = 1), the ODE outside it;
        # eta chosen among 0.25-2 on the two 24-channel digits networks at 20 (seeds 0-15); a tie with SA-Solver on
        # 32 fresh seeds there, behind scorelab's best row on three other digits networks (docs/samplers.md, "A band
        # of reduced noise at 20 evaluations")
        ("sde2M+c2/band/eta.5", "sde_dpm_solver", {"corrector_order": 2, "grid": "ddpm", "denoise_to_zero": True,
                                                   "eta": 0.5, "stochastic_above": SA_BAND[0],
                                                   "stochastic_below": SA_BAND[1],
                                                   "sigma_min": lambda sde, nfe: ddpm_last_level(nfe),
                                                   "sigma_max": top_level})]
OPT = ("unipc", "dpm_solver", "ipndm", "deis")


def scorelab_runs(run, n, nfe, seed, opt_budgets, probe, only=None):
    from scorelab.samplers import WIDE_BUDGETS, default_sampler, optimized_grid, sample

    out = {}
    for label, method, opts in OURS:
        if nfe < (3 if method == "edm_heun" else 1) or (only is not None and label not in only):
            continue
        g = torch.Generator().manual_seed(seed)
        opts = {k: v(run.sde, nfe) if callable(v) else v for k, v in opts.items()}  # a level chosen per budget
        out[f"sl:{label}"] = sample(run.score, run.sde, (n, *run.data_shape), method, nfe, generator=g, **opts).x
        if label in OPT and nfe in opt_budgets:
            t0 = time.time()
            grid = optimized_grid(run.score, run.sde, nfe, method, dims=run.data_shape, probe=probe,
                                  cache_dir=run.run_dir / "grids")
            g = torch.Generator().manual_seed(seed)
            out[f"sl:{label}+opt"] = sample(run.score, run.sde, (n, *run.data_shape), method, nfe, generator=g,
                                            grid=grid, **opts).x
            print(f"  [grid] {label} nfe {nfe}: {time.time() - t0:.0f} s (0 when cached)", flush=True)
    # the default of sample() at this budget: its row when OURS has it (not where the default may take its wide
    # branch, WIDE_BUDGETS), else a row of its own
    d, d_opts = default_sampler(nfe)
    label = next((f"sl:{lab}" for lab, m, o in OURS if (m, o) == (d, d_opts) and f"sl:{lab}" in out
                  and nfe not in WIDE_BUDGETS),
                 f"sl:default={d}" + "".join(f",{k}={v}" for k, v in d_opts.items()))
    if label not in out:
        out[label] = sample(run.score, run.sde, (n, *run.data_shape), None, nfe,
                            generator=torch.Generator().manual_seed(seed)).x
    out["default"] = label
    return out


def peer_runs(K, run, n, nfe, seed):
    lo, hi = interop.sigma_range(run.sde)
    lo, hi = max(lo, 0.002), min(hi, 80.0)  # k-diffusion's EDM defaults inside the model's range
    shape = (n, *run.data_shape)
    out = {k: x for k, (x, _) in peers.k_diffusion_runs(K, run.score, run.sde, shape, nfe, seed, sigma_min=lo,
                                                          sigma_max=hi).items()}
    betas = None if _is_ddpm(run.sde) else peers.betas_for(run.sde)
    T = run.sde.T

    def score_to_T(x, t):  # DDPM's k = 999 is t = 1.0034 of VPSDE(0.1, 20); a run's score refuses t > T
        return run.score(x, t.clamp(max=T))
    out.update({k: x for k, (x, _) in peers.diffusers_vp_runs(score_to_T, run.sde, shape, nfe, seed, betas=betas,
                                                               names=peers.VP_SCHEDULERS + peers.ORDER3).items()})
    if isinstance(run.sde, VESDE):
        out.update({k: x for k, (x, _) in peers.diffusers_ve_pc(run.score, run.sde, shape, nfe, seed, sigma_min=lo,
                                                                 sigma_max=hi).items()})
    return out


def _is_ddpm(sde):
    """DDPM's betas (0.1..20 in continuous time): a VP or sub-VP run (``SubVPSDE`` is a ``VPSDE``), on which the
    diffusers schedulers run on DDPM's own discrete schedule through the epsilon wrapper."""
    return isinstance(sde, VPSDE) and (sde.beta_min, sde.beta_max) == (0.1, 20.0)


def table(name, rows, budgets, cols, floor, defaults, seeds=None):
    """rows {label: {nfe: (metric, ...)}}; prints every row, then scorelab best / default / peer best per budget;
    seeds {label: {nfe: [first metric per seed]}}: the best two's values per seed beside them."""
    print(f"\n### {name}: {' / '.join(cols)} (floor {' / '.join(f'{f:.4g}' for f in floor)})")
    print("| sampler | " + " | ".join(f"nfe {b}" for b in budgets) + " |\n|---|" + "---|" * len(budgets))
    for lab, row in rows.items():
        print(f"| {lab} | " + " | ".join(" / ".join(f"{v:.4g}" for v in row[b]) if b in row else "-"
                                          for b in budgets) + " |")
    print(f"\n| budget | scorelab best | scorelab default | peer best | best / peer | floor ({cols[0]}) |"
          "\n|---|---|---|---|---|---|")
    nan = (float("nan"), "-")
    for b in budgets:
        ours = min(((r[b][0], k) for k, r in rows.items() if k.startswith("sl:") and b in r), default=nan)
        theirs = min(((r[b][0], k) for k, r in rows.items() if not k.startswith("sl:") and b in r), default=nan)
        d = rows[defaults[b]][b][0] if defaults[b] in rows else float("nan")  # absent when --only leaves it out
        print(f"| nfe {b} | {ours[0]:.4g} ({ours[1][3:]}) | {d:.4g} ({defaults[b][3:]}) | {theirs[0]:.4g} "
              f"({theirs[1]}) | {ours[0] / theirs[0]:.2f} | {floor[0]:.4g} |", flush=True)
    if seeds:
        _paired(rows, budgets, seeds, cols[0])
        print("\nper seed (first metric):")
        for b in budgets:
            for k in rows:
                if b in rows[k]:
                    print(f"  nfe {b} {k}: " + ", ".join(f"{v:.4g}" for v in seeds[k][b]), flush=True)


def _paired(rows, budgets, seeds, col):
    """The per-seed difference (the same seed: the same x_T for the deterministic samplers) between scorelab's best
    row and each of the two best peers (by median): its mean +- standard error and how often scorelab's is lower.
    Sample sets of one seed move the distance far more than the samplers do, so the pairs are what tell them apart."""
    print(f"\npaired by seed ({col}): scorelab best minus peer, mean +- s.e. (t), seeds where scorelab's is lower")
    for b in budgets:
        med = sorted((r[b][0], k) for k, r in rows.items() if b in r)
        ours = next((k for _, k in med if k.startswith("sl:")), None)
        for _, peer in [(v, k) for v, k in med if not k.startswith("sl:")][:2 if ours else 0]:
            d = np.array(seeds[ours][b]) - np.array(seeds[peer][b])
            if len(d) < 2:
                continue
            se = d.std(ddof=1) / np.sqrt(len(d))
            print(f"  nfe {b}: {ours} - {peer}: {d.mean():+.4f} +- {se:.4f} (t {d.mean() / se:+.1f}), "
                  f"{int((d < 0).sum())}/{len(d)}", flush=True)


def _collect(run, K, budgets, n, seeds, opt_budgets, probe, metrics, tag, only=None, peers_too=True):
    """{label: {nfe: medians over seeds of metrics(x)}}, the default label per budget, and
    {label: {nfe: [first metric per seed]}}."""
    acc, defaults = {}, {}
    for nfe in budgets:
        for seed in seeds:
            runs = scorelab_runs(run, n, nfe, seed, opt_budgets, probe, only)
            defaults[nfe] = runs.pop("default")
            if peers_too:
                runs.update(peer_runs(K, run, n, nfe, seed))
            for k, x in runs.items():
                acc.setdefault(k, {}).setdefault(nfe, []).append(metrics(x))
        print(f"  [{tag}] nfe {nfe} done", flush=True)
    rows = {k: {b: tuple(float(np.median(c)) for c in zip(*v)) for b, v in r.items()} for k, r in acc.items()}
    per_seed = {k: {b: [m[0] for m in v] for b, v in r.items()} for k, r in acc.items()}
    return rows, defaults, per_seed


def bench_toy(run, K, budgets, n, seeds, opt_budgets, probe, **select):
    gmm = ring_mixture()
    ref = gmm.sample(n, generator=torch.Generator().manual_seed(1000))
    floor_x = gmm.sample(n, generator=torch.Generator().manual_seed(1001))

    def metrics(x):
        x = run.to_data(x)
        e = mixture_error(x, gmm)
        return e.moment_kl, e.mode_tv, sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))
    rows, defaults, per_seed = _collect(run, K, budgets, n, seeds, opt_budgets, probe, metrics, "toy", **select)
    table(f"toy run ({run.step} steps, ring8, {run.sde!r}), n = {n}, median over seeds {seeds}", rows, budgets,
          ("moment KL", "mode TV", "sliced W2"), metrics(floor_x), defaults, per_seed)


def digits_reference(run, n: int, cache=None, seed: int = 0):
    """``scorelab evaluate``'s reference for the Frechet distance of an image run (``evaluate_images``, same
    generator sequence for ``seed``): the reference classifier and its info, the features of the m = min(n, test
    size) test images, the test images, and the FLOOR_DRAWS train subsets of min(n, train size) images that make
    the floor (m images when n is at most the test size, as in ``scorelab evaluate``)."""
    from scorelab.classifier import features, reference_classifier
    from scorelab.evaluate import FLOOR_DRAWS, _image_sets, _test_images

    data = run.config["data"]
    if data.get("path") is not None or data.get("name") not in _image_sets() or data.get("split") != "train":
        raise ValueError(f"the digits run {str(run.run_dir)!r} must be trained on the train split of a built-in "
                         f"image set (data.name=digits, data.split=train, no data.path); its data is {data}.")
    x_test, _, _ = _test_images(run, None)
    train = _image_sets()[data["name"]](split="train").x
    m = min(n, len(x_test))
    g = torch.Generator().manual_seed(seed)
    test_m = x_test[torch.randperm(len(x_test), generator=g)[:m]]
    k = min(n, len(train))  # more samples than test images: the floor at the samples' count
    subsets = [train[torch.randperm(len(train), generator=g)[:k]] for _ in range(FLOOR_DRAWS)]
    clf, info = reference_classifier(data["name"], cache=cache)
    clf = clf.to(run.device)  # the run's device (HostSide: the accelerator); features come back to the CPU
    return clf, info, features(clf, test_m), test_m, subsets


def bench_digits(run, K, budgets, n, seeds, opt_budgets, probe, cache, **select):
    from scorelab.classifier import features
    from scorelab.evaluate import quantize
    from scorelab.metrics import frechet_distance

    clf, info, f_test, test_m, subsets = digits_reference(run, n, cache)
    m, k = len(test_m), len(subsets[0])  # test images, samples per sampler
    levels, (lo, hi) = run.data_levels(), run.data_range()

    def pm1(x):  # data units to [-1, 1] pixels, for the sliced W2
        return (x - lo) * (2.0 / (hi - lo)) - 1.0

    def distances(images):
        return (frechet_distance(features(clf, images), f_test),
                sliced_wasserstein(pm1(images), pm1(test_m), generator=torch.Generator().manual_seed(0)))

    def metrics(x):  # evaluate_images: data units, non-finite to the low end, clipped and quantised like the data
        x = run.to_data(x).float()
        return distances(quantize(torch.nan_to_num(x, nan=lo), (lo, hi), levels, dequantized=run.dequantized))
    floors = np.array([distances(t) for t in subsets])
    print(f"reference classifier: {info}\nfloor over {len(subsets)} train subsets of {k}: Frechet "
          f"{floors[:, 0].mean():.4g} (min {floors[:, 0].min():.4g}, max {floors[:, 0].max():.4g}), sliced W2 "
          f"{floors[:, 1].mean():.4g}", flush=True)
    rows, defaults, per_seed = _collect(run, K, budgets, k, seeds, opt_budgets, probe, metrics, "digits", **select)
    name = run.config["data"]["name"]
    table(f"{name} run ({run.run_dir}, {run.step} steps, {run.sde!r}), n = {k} samples against the {m} test images, "
          f"median over seeds {seeds}", rows, budgets, ("Frechet distance", "sliced W2"), tuple(floors.mean(0)),
          defaults, per_seed)


class ExactRun:
    """An image run seen through the exact score of a mixture in its model units: the run's data shape, process,
    scaler and config (so its reference classifier and quantisation), the mixture's score; ``run_dir`` is ``out``,
    so that grids optimised for the exact score are cached apart from the learned model's."""

    def __init__(self, run, gmm, out: Path):
        self._run, self._score, self.run_dir = run, gmm.score_fn(run.sde), out

    def __getattr__(self, name):
        return getattr(self._run, name)

    def score(self, x, t, y=None):
        flat = self._score(x.reshape(x.shape[0], -1).double(), t.double() if torch.is_tensor(t) else t)
        return flat.reshape(x.shape).to(x.dtype)

    __call__ = score


def digits_mixture(run, components: int = 10, copies: int = 10, seed: int = 0):
    """A full-covariance Gaussian mixture fitted (scikit-learn, EM) to the train split of the run's built-in image
    set in the run's model units, dequantised as the run was trained (``copies`` draws of U[0, 1) per image when
    data.dequantize): an image-shaped distribution whose score is exact."""
    from sklearn.mixture import GaussianMixture as EM

    from scorelab.evaluate import _image_sets
    from scorelab.oracle import GaussianMixture

    x = _image_sets()[run.config["data"]["name"]](split="train").x.float()
    g = torch.Generator().manual_seed(seed)
    v = torch.cat([x + torch.rand(x.shape, generator=g) for _ in range(copies)]) if run.dequantized else x
    y = run.to_model(v).reshape(len(v), -1).double().numpy()
    em = EM(components, covariance_type="full", reg_covar=1e-5, random_state=seed, max_iter=300).fit(y)
    return GaussianMixture(torch.tensor(em.weights_), torch.tensor(em.means_), torch.tensor(em.covariances_))


def bench_digits_exact(run, K, budgets, n, seeds, opt_budgets, probe, cache, out: Path, **select):
    """The digits run's data shape, process and classifier with the exact score of ``digits_mixture(run)``:
    Frechet distance in the reference classifier's features of quantised samples against as many quantised exact
    draws (seed 999), and moment KL in model units against the mixture; floor: fresh exact draws (seed 1000)."""
    from scorelab.classifier import features, reference_classifier
    from scorelab.evaluate import quantize
    from scorelab.metrics import frechet_distance

    t0 = time.time()
    gmm = digits_mixture(run)
    ev = torch.linalg.eigvalsh(gmm.covs).sqrt()
    print(f"mixture: {gmm.K} components fitted to the {run.config['data']['name']} train split in "
          f"{time.time() - t0:.0f} s; per-direction std {float(ev.min()):.3g}..{float(ev.max()):.3g}", flush=True)
    ex = ExactRun(run, gmm, out)
    clf, _ = reference_classifier(run.config["data"]["name"], cache=cache)
    levels, (lo, hi) = run.data_levels(), run.data_range()

    def images(x):
        x = run.to_data(x.reshape(len(x), *run.data_shape)).float()
        return quantize(torch.nan_to_num(x, nan=lo), (lo, hi), levels, dequantized=run.dequantized)
    f_ref = features(clf, images(gmm.sample(n, generator=torch.Generator().manual_seed(999)).float()))

    def metrics(x):
        return (frechet_distance(features(clf, images(x)), f_ref),
                mixture_error(x.reshape(len(x), -1), gmm).moment_kl)
    floor = metrics(gmm.sample(n, generator=torch.Generator().manual_seed(1000)).float())
    rows, defaults, per_seed = _collect(ex, K, budgets, n, seeds, opt_budgets, probe, metrics, "digits-exact",
                                        **select)
    table(f"exact score of a {gmm.K}-component mixture fitted to {run.config['data']['name']} (process, scaler and "
          f"classifier of {run.run_dir}), n = {n}, median over seeds {seeds}", rows, budgets,
          ("Frechet distance", "moment KL"), floor, defaults, per_seed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, required=True, help="directory of the toy run (trained when absent)")
    ap.add_argument("--toy-steps", type=int, default=4000)
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--runs", nargs="+", default=["toy", "digits"], choices=["toy", "digits", "digits-exact"],
                    help="digits-exact: the digits run's process and classifier with the exact score of a mixture "
                    "fitted to its train split (bench_digits_exact)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--opt-budgets", type=int, nargs="*", default=[5, 10, 20],
                    help="budgets at which the optimised grids are searched (cached in RUN/grids); none: no +opt rows")
    ap.add_argument("--probe", type=int, default=256, help="probe batch of the grid search")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="sampling seeds (median over them)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--digits-dir", type=Path, help="a digits run trained on the train split (configs/digits.yaml); "
                    "use a copy, optimised grids are written into it")
    ap.add_argument("--digits-n", type=int, default=4000,
                    help="digits samples per sampler, at most the train split's size; the reference is min(n, test "
                    "size) test images (n up to the test size: scorelab evaluate's n), the floor train subsets of n")
    ap.add_argument("--only", nargs="+", default=None, metavar="LABEL",
                    help="run only these scorelab rows of OURS (e.g. sde-dpm2M+dz); the summary then covers them")
    ap.add_argument("--no-peers", action="store_true", help="skip the peers' rows (they depend only on the seed)")
    ap.add_argument("--device", default="cpu", help="where the networks run (cuda: the samplers stay on the CPU, "
                    "see HostSide)")
    ap.add_argument("--classifier-cache", type=Path, default=None,
                    help="folder of the reference classifier (default: $SCORELAB_CACHE or ~/.cache/scorelab)")
    a = ap.parse_args()
    labels = [lab for lab, _, _ in OURS]
    if a.only is not None and not set(a.only) <= set(labels):
        ap.error(f"--only takes labels of OURS: {labels}")
    select = {"only": a.only, "peers_too": not a.no_peers}
    if {"digits", "digits-exact"} & set(a.runs) and a.digits_dir is None:
        ap.error("--runs digits and digits-exact need --digits-dir RUN (a copy of a digits run trained on the train "
                 "split)")
    if "toy" in a.runs:
        train_toy(a.cache, a.toy_steps)
    if a.train_only:
        return
    torch.set_num_threads(a.threads)
    K = peers.load_k_sampling()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    if "toy" in a.runs:
        t0 = time.time()
        bench_toy(load_run(a.cache / "toy", a.device), K, a.budgets, 4000, a.seeds, a.opt_budgets, a.probe, **select)
        print(f"[toy] {time.time() - t0:.0f} s", flush=True)
    if "digits" in a.runs:
        t0 = time.time()
        bench_digits(load_run(a.digits_dir, a.device), K, a.budgets, a.digits_n, a.seeds, a.opt_budgets, a.probe,
                     a.classifier_cache, **select)
        print(f"[digits] {time.time() - t0:.0f} s", flush=True)
    if "digits-exact" in a.runs:
        t0 = time.time()
        bench_digits_exact(load_run(a.digits_dir, "cpu"), K, a.budgets, a.digits_n, a.seeds, a.opt_budgets, a.probe,
                           a.classifier_cache, a.cache / "digits-exact", **select)
        print(f"[digits-exact] {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
