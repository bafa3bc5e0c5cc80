"""Samplers on learned scores (issue 12): the same trained model sampled by scorelab's methods and by the peers'.

Two runs are trained from the shipped recipes, once, into the cache directory given on the command line (kept and
reused when present): ``toy`` (configs/toy.yaml, the 8-ring, VE; ``--toy-steps``, default 4000) and ``digits``
(configs/digits.yaml, VP, U-Net; ``--digits-steps``, default 1500) on a random 1400 of the 1797 scikit-learn digits;
the other 397 are the held-out set. Each model is then sampled at nfe 5, 10, 20, 50 by scorelab's methods (at
their defaults, ``default_method(nfe)`` and optimised grids) and by the peers' (k-diffusion through
``interop.k_diffusion_denoiser`` on the VE run, or on the VP run through the same wrapper in sigma = s/m;
diffusers' DDIM / DPM-Solver++ / UniPC through ``interop.epsilon_model`` on the VP run). Distances: toy, moment KL
and mode TV against the exact ring (``mixture_error``) and sliced W2 against 4000 fresh exact draws; digits,
sliced W2 and MMD (in [-1, 1] pixels) against the held-out images. Floors: a second exact sample set (toy), a
second held-out-sized draw from the training images (digits).

    nice -n 5 .venv/bin/python benchmarks/samplers_learned.py --cache /tmp/learned-runs
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
from scorelab import interop  # noqa: E402
from scorelab.checkpoint import META_NAME  # noqa: E402
from scorelab.data import ring_mixture  # noqa: E402
from scorelab.metrics import mixture_error, mmd, sliced_wasserstein  # noqa: E402
from scorelab.sde import VESDE, VPSDE  # noqa: E402


def _train(config: str, out: Path, steps: int, extra=()):
    if (out / META_NAME).exists():
        return
    cmd = [sys.executable, "-m", "scorelab.cli", "train", config, "--out", str(out), "--quiet",
           "--set", f"train.steps={steps}", *extra]
    print("[train]", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def train_runs(cache: Path, toy_steps: int, digits_steps: int, runs=("toy", "digits")):
    """The toy and digits runs in ``cache`` (trained only when absent) and the digits split."""
    from scorelab.data import digits

    cache.mkdir(parents=True, exist_ok=True)
    x = digits().x
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train_x, held = x[perm[:1400]], x[perm[1400:]]
    split = cache / "digits-train.npy"
    if not split.exists():
        np.save(split, train_x.numpy())
    if "toy" in runs:
        _train("toy", cache / "toy", toy_steps)
    if "digits" in runs:
        _train("digits", cache / "digits", digits_steps, ("--set", "data.name=null", "--set", f"data.path={split}",
                                                           "--set", f"train.warmup={min(1000, digits_steps // 8)}"))
    return train_x, held


# scorelab's configurations, each at its defaults; "+opt" uses the grid optimised for the model (optimized_grid)
OURS = [("ancestral", "ancestral", {}), ("euler_maruyama", "euler_maruyama", {}), ("dpm_solver", "dpm_solver", {}),
        ("sde-dpm2M", "dpm_solver", {"eta": 1.0}),
        ("sde-dpm2M/smin.002", "dpm_solver", {"eta": 1.0, "sigma_min": 0.002}),
        ("sde-dpm3M", "dpm_solver", {"eta": 1.0, "order": 3}),
        ("sde-dpm3M/smin.002", "dpm_solver", {"eta": 1.0, "order": 3, "sigma_min": 0.002}),
        ("unipc", "unipc", {}), ("ipndm", "ipndm", {}), ("deis", "deis", {}), ("lms", "lms", {}),
        ("edm_heun", "edm_heun", {})]
OPT = ("unipc", "dpm_solver", "ipndm", "deis")


def scorelab_runs(run, n, nfe, seed, opt_budgets, probe):
    from scorelab.samplers import default_method, optimized_grid, sample

    out = {}
    for label, method, opts in OURS:
        if nfe < (3 if method == "edm_heun" else 1):
            continue
        g = torch.Generator().manual_seed(seed)
        out[f"sl:{label}"] = sample(run.score, run.sde, (n, *run.data_shape), method, nfe, generator=g, **opts).x
        if label in OPT and nfe in opt_budgets:
            t0 = time.time()
            grid = optimized_grid(run.score, run.sde, nfe, method, dims=run.data_shape, probe=probe,
                                  cache_dir=run.run_dir / "grids")
            g = torch.Generator().manual_seed(seed)
            out[f"sl:{label}+opt"] = sample(run.score, run.sde, (n, *run.data_shape), method, nfe, generator=g,
                                            grid=grid, **opts).x
            print(f"  [grid] {label} nfe {nfe}: {time.time() - t0:.0f} s (0 when cached)", flush=True)
    d = default_method(nfe)
    out["default"] = f"sl:{ {'sde_dpm_solver': 'sde-dpm2M'}.get(d, d)}"  # sde_dpm_solver = dpm_solver(eta=1)
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
    out.update({k: x for k, (x, _) in peers.diffusers_vp_runs(score_to_T, run.sde, shape, nfe, seed,
                                                               betas=betas).items()})
    if isinstance(run.sde, VESDE):
        out.update({k: x for k, (x, _) in peers.diffusers_ve_pc(run.score, run.sde, shape, nfe, seed, sigma_min=lo,
                                                                 sigma_max=hi).items()})
    return out


def _is_ddpm(sde):
    return isinstance(sde, VPSDE) and (sde.beta_min, sde.beta_max) == (0.1, 20.0)


def table(name, rows, budgets, cols, floor, defaults):
    """rows {label: {nfe: (metric, ...)}}; prints every row, then scorelab best / default / peer best per budget."""
    print(f"\n### {name}: {' / '.join(cols)} (floor {' / '.join(f'{f:.4g}' for f in floor)})")
    print("| sampler | " + " | ".join(f"nfe {b}" for b in budgets) + " |\n|---|" + "---|" * len(budgets))
    for lab, row in rows.items():
        print(f"| {lab} | " + " | ".join(" / ".join(f"{v:.4g}" for v in row[b]) if b in row else "-"
                                          for b in budgets) + " |")
    print("\n| budget | scorelab best | scorelab default | peer best | best / peer |\n|---|---|---|---|---|")
    for b in budgets:
        ours = min((r[b][0], k) for k, r in rows.items() if k.startswith("sl:") and b in r)
        theirs = min((r[b][0], k) for k, r in rows.items() if not k.startswith("sl:") and b in r)
        d = rows[defaults[b]][b][0]
        print(f"| nfe {b} | {ours[0]:.4g} ({ours[1][3:]}) | {d:.4g} ({defaults[b][3:]}) | {theirs[0]:.4g} "
              f"({theirs[1]}) | {ours[0] / theirs[0]:.2f} |", flush=True)


def _collect(run, K, budgets, n, seeds, opt_budgets, probe, metrics, tag):
    """{label: {nfe: medians over seeds of metrics(x)}} and the default label per budget."""
    acc, defaults = {}, {}
    for nfe in budgets:
        for seed in seeds:
            runs = scorelab_runs(run, n, nfe, seed, opt_budgets, probe)
            defaults[nfe] = runs.pop("default")
            runs.update(peer_runs(K, run, n, nfe, seed))
            for k, x in runs.items():
                acc.setdefault(k, {}).setdefault(nfe, []).append(metrics(x))
        print(f"  [{tag}] nfe {nfe} done", flush=True)
    rows = {k: {b: tuple(float(np.median(c)) for c in zip(*v)) for b, v in r.items()} for k, r in acc.items()}
    return rows, defaults


def bench_toy(run, K, budgets, n, seeds, opt_budgets, probe):
    gmm = ring_mixture()
    ref = gmm.sample(n, generator=torch.Generator().manual_seed(1000))
    floor_x = gmm.sample(n, generator=torch.Generator().manual_seed(1001))

    def metrics(x):
        x = run.to_data(x)
        e = mixture_error(x, gmm)
        return e.moment_kl, e.mode_tv, sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))
    rows, defaults = _collect(run, K, budgets, n, seeds, opt_budgets, probe, metrics, "toy")
    table(f"toy run ({run.step} steps, ring8, {run.sde!r}), n = {n}, median over seeds {seeds}", rows, budgets,
          ("moment KL", "mode TV", "sliced W2"), metrics(floor_x), defaults)


def bench_digits(run, K, budgets, n, seeds, opt_budgets, probe, train_x, held):
    to_pm1 = run.to_model  # the run's own scaling of pixels to [-1, 1]
    held_m = to_pm1(held)
    floor_x = to_pm1(train_x[torch.randperm(len(train_x), generator=torch.Generator().manual_seed(1))[:n]])

    def metrics(x):
        return (sliced_wasserstein(x, held_m, generator=torch.Generator().manual_seed(0)),
                mmd(x.clamp(-1, 1), held_m))
    rows, defaults = _collect(run, K, budgets, n, seeds, opt_budgets, probe, metrics, "digits")
    table(f"digits run ({run.step} steps, {run.sde!r}), n = {n} against the {len(held)} held-out images, median "
          f"over seeds {seeds}", rows, budgets, ("sliced W2", "MMD"), metrics(floor_x), defaults)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, required=True, help="directory of the trained runs (made when absent)")
    ap.add_argument("--toy-steps", type=int, default=4000)
    ap.add_argument("--digits-steps", type=int, default=800)
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--runs", nargs="+", default=["toy", "digits"])
    ap.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--opt-budgets", type=int, nargs="+", default=[5, 10, 20],
                    help="budgets at which the optimised grids are searched (cached in RUN/grids)")
    ap.add_argument("--probe", type=int, default=256, help="probe batch of the grid search")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="sampling seeds (median over them)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--digits-run", default="digits", help="the digits run's directory name inside --cache")
    ap.add_argument("--digits-n", type=int, default=1000, help="digits samples per sampler")
    a = ap.parse_args()
    train_x, held = train_runs(a.cache, a.toy_steps, a.digits_steps, a.runs)
    if a.train_only:
        return
    torch.set_num_threads(a.threads)
    K = peers.load_k_sampling()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    if "toy" in a.runs:
        bench_toy(scorelab.load(a.cache / "toy"), K, a.budgets, 4000, a.seeds, a.opt_budgets, a.probe)
    if "digits" in a.runs:
        bench_digits(scorelab.load(a.cache / a.digits_run), K, a.budgets, a.digits_n, a.seeds, a.opt_budgets, a.probe,
                     train_x, held)


if __name__ == "__main__":
    main()
