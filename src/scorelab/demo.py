"""The embedded default demo (``scorelab demo``, what ``make demo`` runs), end to end on the CPU:

1. train a noise-conditional score model (MLP, continuous-time DSM, VE SDE) on the weighted 8-Gaussian ring,
   whose exact score is known (the oracle);
2. sample it with several samplers and measure each against the truth (moment KL / mode TV vs the mixture),
   next to the same sampler driven by the exact score (so model error and sampler error can be told apart);
3. compute exact likelihoods through the probability-flow ODE and compare with the true log-density;
4. write report.md / report.html with figures, and print a summary table.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import plots
from .data import toy_mixture
from .evaluate import evaluate
from .likelihood import log_likelihood
from .metrics import fisher_divergence, mixture_error
from .report import Report, format_table
from .run import load
from .samplers import sample
from .train import train

# Trains in ~30 s on one CPU thread (quick: a few seconds): configs/toy.yaml's recipe (EDM preconditioning,
# log-normal noise levels, cosine lr decay, power-function EMA; see docs/objectives.md) on the 8-Gaussian ring.
DEMO_CONFIG = {
    "data": {"name": "ring", "n": 20000},
    "sde": {"type": "ve", "sigma_min": 0.01, "sigma_max": 10.0},
    "model": {"type": "mlp", "hidden": 128, "depth": 3, "parameterization": "edm"},
    "objective": {"name": "sde_dsm", "noise": "lognormal", "weighting": "edm", "p_mean": -0.8, "p_std": 1.4},
    "train": {"steps": 10000, "batch_size": 512, "lr": 3.0e-3, "warmup": 100, "lr_schedule": "cosine",
              "grad_clip": 1.0, "ema_decay": 0.995, "ema_power": 6.94, "seed": 0, "log_every": 100,
              "ckpt_every": 1000, "threads": 1},
}
# the recipe scorelab used before (score-SDE: Song et al. 2021), trained beside it in the full demo for comparison
BASELINE_OVERRIDES = ["model.parameterization=score", "objective.noise=uniform_t", "objective.weighting=std2",
                      "objective.p_mean=-1.2", "objective.p_std=1.2", "train.lr_schedule=constant",
                      "train.ema_power=null"]
# (method, nfe, options): the notes' samplers and the fast solvers; None = scorelab's default sampling
SAMPLERS = [
    (None, None, {}),
    ("dpm_solver", 20, {}),
    ("edm_heun", 39, {}),
    ("ode", 100, {"solver": "rk4"}),
    ("pc", 400, {}),
    ("euler_maruyama", 400, {}),
    ("annealed_langevin", 500, {}),
]


def run_demo(out_dir: str | Path = "demo_out", quick: bool = False, seed: int = 0, echo=print) -> dict:
    """Run the demo into ``out_dir``; returns {"rows": sampler rows, "likelihood": ..., "report": (md, html)}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster than two on a 2-core machine
    try:
        return _run(out, quick, seed, echo)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, quick: bool, seed: int, echo) -> dict:
    steps = 1500 if quick else DEMO_CONFIG["train"]["steps"]
    n = 1000 if quick else 4000
    echo(f"[1/4] training a score model on the 8-Gaussian ring ({steps} steps)")
    overrides = [f"train.steps={steps}", f"train.seed={seed}"]
    run_dir = out / "run"
    train(DEMO_CONFIG, run_dir, overrides=overrides, resume=(run_dir / "checkpoint.json").exists(), progress=True)
    run = load(run_dir)
    train_s = float(ckpt.read_meta(run_dir).get("seconds", 0.0))  # the run's own record of training time
    sde, gmm = run.sde, toy_mixture("ring")
    exact = gmm.score_fn(sde)
    g = torch.Generator().manual_seed(seed)
    fisher = fisher_divergence(run.score, gmm, sde, n=500, generator=g)

    echo(f"[2/4] sampling with {len(SAMPLERS)} samplers, learned and exact score, n = {n}")
    floor = mixture_error(gmm.sample(n, generator=g).float(), gmm)
    rows, scatter, subtitles = [], {}, {}
    for method, nfe, options in SAMPLERS:
        kw = {} if method is None else {"method": method, "nfe": nfe}
        t1 = time.perf_counter()
        res = sample(run.score, sde, (n, 2), generator=torch.Generator().manual_seed(seed + 1), **kw, **options)
        seconds = time.perf_counter() - t1
        learned = mixture_error(res.x, gmm)
        ref = mixture_error(sample(exact, sde, (n, 2), generator=torch.Generator().manual_seed(seed + 1),
                                   **kw, **options).x, gmm)
        method = method or "default"
        rows.append({"sampler": method, "nfe": res.nfe, "moment KL": learned.moment_kl, "mode TV": learned.mode_tv,
                     "moment KL (exact score)": ref.moment_kl, "seconds": seconds})
        scatter[method] = res.x
        subtitles[method] = f"nfe {res.nfe}: KL {learned.moment_kl:.3f}, TV {learned.mode_tv:.3f}"
    best = min(rows, key=lambda r: r["moment KL"])

    echo("[3/4] scorelab evaluate: held-out NLL, sample-vs-data distances and their floors")
    ev = evaluate(run, None, n=1000 if quick else 4000, nll_n=50 if quick else 300, seed=seed)
    compare = []
    if not quick:  # the previous recipe, same data, steps and seed, for comparison
        base_dir = out / "run_baseline"
        train(DEMO_CONFIG, base_dir, overrides=overrides + BASELINE_OVERRIDES,
              resume=(base_dir / "checkpoint.json").exists(), progress=True)
        base = evaluate(load(base_dir), None, n=4000, nll_n=300, seed=seed)
        base_s = float(ckpt.read_meta(base_dir).get("seconds", 0.0))
        for label, e, sec in (("default recipe", ev, train_s), ("previous recipe (score, uniform t)", base, base_s)):
            compare.append({"recipe": label, "train s": sec,
                            **{r["metric"]: r["model"] for r in e["rows"]}})
        compare.append({"recipe": "floor / truth", **{r["metric"]: r["floor"] for r in ev["rows"]}})

    echo("[4/4] exact likelihoods through the probability-flow ODE")
    eps = 1e-3
    x_test = gmm.sample(100 if quick else 300, generator=g).float()
    ll = log_likelihood(run.score, sde, x_test, eps=eps, rtol=1e-4, atol=1e-4)
    true_nll = -gmm.log_prob(x_test, torch.full((len(x_test),), eps), sde)
    lik = {"nll learned (nats/dim)": float(ll.nll.mean()) / 2, "nll true p_eps (nats/dim)": float(true_nll.mean()) / 2,
           "mean nfe": ll.nfe}

    echo("writing the report")
    report = Report("scorelab demo: a score model of the 8-Gaussian ring, measured against the truth")
    report.add_section("Setup", (
        f"MLP score network trained by continuous-time denoising score matching on the VE SDE "
        f"(sigma 0.01 to 10) with EDM preconditioning (Karras et al. 2022) for {steps} steps in {train_s:.1f} s "
        f"of training. The data are the weighted ring of 8 Gaussians "
        f"(weights proportional to 1..8), whose exact score and density are known. Weighted Fisher divergence "
        f"of the learned score to the exact one: {fisher:.4f}. Noise floor (a second exact sample set): moment KL "
        f"{floor.moment_kl:.4f}, mode TV {floor.mode_tv:.4f}."))
    report.add_table(rows, f"Samplers (n = {n}); 'exact score' runs the same sampler on the oracle score. "
                           f"Best with the learned score: {best['sampler']} (moment KL {best['moment KL']:.4f}).")
    report.add_table(ev["rows"], f"scorelab evaluate ({ev['sampler']} sampling, nfe {ev['nfe']}, "
                                 f"{ev['n_samples']} samples vs held-out draws): 'floor' is the same distance "
                                 "between two halves of the held-out data (for NLL: the exact value).")
    if compare:
        report.add_table(compare, "Default recipe vs the previous one (score parameterization, t ~ U[eps, 1], "
                                  "constant lr, constant EMA), same steps and seed, default sampling.")
    report.add_table([lik], f"Likelihood at t = {eps}: probability-flow ODE (dopri5) on the learned score vs "
                            "the exact log-density of the perturbed mixture.")
    fig_s = plots.samples_scatter(scatter, reference=gmm.sample(n, generator=g), subtitles=subtitles,
                                  path=out / "samples.png")
    report.add_figure(out / "samples.png", "Samples of each sampler (colour) over exact samples (grey).")
    fig_e, num = plots.score_error_map(run.score, exact, lambda x, t: gmm.log_prob(x, t, sde), 0.05,
                                       (-6, 6), (-6, 6), path=out / "score_error.png")
    report.add_figure(out / "score_error.png", (
        f"Exact vs learned score at t = 0.05 and their difference: mean error {num['high_density_error']:.3f} "
        f"where the data are, {num['low_density_error']:.3f} in low-density regions."))
    del fig_s, fig_e
    md, html = report.write(out)
    echo(format_table(rows))
    echo(format_table([lik]))
    echo(format_table(ev["rows"]))
    if compare:
        echo(format_table(compare))
    echo(f"training: {steps} steps in {train_s:.1f} s")
    echo(f"best sampler: {best['sampler']} (moment KL {best['moment KL']:.4f}; floor {floor.moment_kl:.4f})")
    echo(f"report: {html}")
    return {"rows": rows, "best": best, "evaluate": ev, "compare": compare, "train_seconds": train_s,
            "floor": floor, "fisher": fisher, "likelihood": lik, "report": (md, html)}
