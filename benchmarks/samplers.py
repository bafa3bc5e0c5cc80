"""Sampler benchmark (shared/BENCHMARKS.md, "Samplers against the truth" and "Sampler overhead").

Exact scores of Gaussian mixtures (ring8, gmm16 for several seeds, and the 5 x 5 grid mixture that no sampler
default was tuned on); VE with sigma 0.002..80 and VP with beta 0.1..20 (DDPM's 1e-4..0.02 over 1000 steps);
float32 sampling, n = 4000; moment KL (primary) and mode TV against the mixture, with the noise floor of a second
exact sample set; budgets nfe 10, 20, 50, 200; peers (k-diffusion, diffusers) in the same run, skipped with a
message when not installed. Prints every sampler's error, the best of each side and the ratio
scorelab-best / peer-best per budget; then wall time per step with a cheap score (one Gaussian, 100k 2-D points).

    .venv/bin/python benchmarks/samplers.py            # full protocol
    .venv/bin/python benchmarks/samplers.py --quick    # n = 1000, ring8 only, nfe 10 and 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402
from scorelab.data import grid_mixture, ring_mixture  # noqa: E402
from scorelab.metrics import mixture_error  # noqa: E402
from scorelab.oracle import GaussianMixture  # noqa: E402
from scorelab.samplers import sample  # noqa: E402
from scorelab.sde import VESDE, VPSDE  # noqa: E402

F64 = torch.float64


def gmm16(seed: int, d: int = 16, K: int = 6) -> GaussianMixture:
    """means ~ N(0, 9 I), covariances Q diag(l) Q^T (Q random orthogonal, l log-uniform in [0.01, 1]),
    weights ~ Dirichlet(2)."""
    rng = np.random.RandomState(seed)
    means = 3.0 * rng.randn(K, d)
    covs = []
    for _ in range(K):
        Q, R = np.linalg.qr(rng.randn(d, d))
        Q = Q * np.sign(np.diag(R))
        lam = np.exp(rng.uniform(np.log(0.01), np.log(1.0), d))
        covs.append((Q * lam) @ Q.T)
    w = rng.dirichlet(2.0 * np.ones(K))
    return GaussianMixture(torch.tensor(w), torch.tensor(means), torch.tensor(np.stack(covs)))


# scorelab samplers: (label, process, method, options); the same fixed set on every mixture
OURS = [
    ("dpm2M/logSNR/smin.03 (default)", "ve", "dpm_solver", {}),
    ("dpm2M/logSNR/smin.03 (default)", "vp", "dpm_solver", {}),
    ("dpm3M/logSNR/smin.03", "ve", "dpm_solver", {"order": 3}),
    ("dpm2M/logSNR/smin.002", "ve", "dpm_solver", {"sigma_min": 0.002}),
    ("dpm2M/logSNR/smin.06", "ve", "dpm_solver", {"sigma_min": 0.06}),
    ("dpm2M/karras/smin.03", "ve", "dpm_solver", {"grid": "karras"}),
    ("dpm3S/logSNR/smin.03", "vp", "dpm_solver", {"order": 3, "multistep": False}),
    ("sde-dpm2M/logSNR/smin.03", "ve", "dpm_solver", {"eta": 1.0}),
    ("sde-dpm2M/logSNR/smin.03", "vp", "dpm_solver", {"eta": 1.0}),
    ("sde-dpm2M/logSNR/smin.002", "ve", "dpm_solver", {"eta": 1.0, "sigma_min": 0.002}),
    ("edm_heun", "ve", "edm_heun", {}),
    ("ode-heun/logSNR", "vp", "ode", {"solver": "heun", "grid": "log_snr"}),
    ("ancestral", "vp", "ancestral", {}),
    ("reverse_diffusion", "ve", "reverse_diffusion", {}),
    ("pc", "ve", "pc", {}),
]


def run_mixture(name, gmm, budgets, n, seeds, K, dtype=torch.float32):
    sdes = {"ve": VESDE(0.002, 80.0), "vp": VPSDE(0.1, 20.0)}
    scores = {k: gmm.score_fn(s) for k, s in sdes.items()}
    floor = [mixture_error(gmm.sample(n, generator=torch.Generator().manual_seed(1000 + s)), gmm) for s in seeds]
    table: dict[str, dict[int, list]] = {}
    for nfe in budgets:
        for seed in seeds:
            for label, proc, method, opts in OURS:
                g = torch.Generator().manual_seed(seed)
                res = sample(scores[proc], sdes[proc], (n, gmm.d), method=method, nfe=nfe, generator=g, dtype=dtype,
                             **opts)
                e = mixture_error(res.x, gmm)
                table.setdefault(f"sl:{label}[{proc}]", {}).setdefault(nfe, []).append((e.moment_kl, e.mode_tv))
            runs = peers.all_peer_runs(K, scores["ve"], sdes["ve"], scores["vp"], sdes["vp"], (n, gmm.d), nfe, seed,
                                       dtype)
            for label, (x, _used) in runs.items():
                e = mixture_error(x, gmm)
                table.setdefault(f"{label}", {}).setdefault(nfe, []).append((e.moment_kl, e.mode_tv))
        print(f"  [{name}] nfe {nfe} done", flush=True)
    fl_kl = statistics.median(f.moment_kl for f in floor)
    fl_tv = statistics.median(f.mode_tv for f in floor)
    print(f"\n### {name}  (n={n}, seeds={list(seeds)}, median moment KL / mode TV; floor {fl_kl:.4f} / {fl_tv:.4f})")
    print("| sampler | " + " | ".join(f"nfe {b}" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    med = {lab: {b: (statistics.median(v[0] for v in row[b]), statistics.median(v[1] for v in row[b]))
                 for b in budgets} for lab, row in table.items()}
    for lab, row in med.items():
        print(f"| {lab} | " + " | ".join(f"{row[b][0]:.4g} / {row[b][1]:.3f}" for b in budgets) + " |")
    summary = []
    for b in budgets:
        ours = min(((v[b][0], k) for k, v in med.items() if k.startswith("sl:")), default=(float("nan"), "-"))
        theirs = min(((v[b][0], k) for k, v in med.items() if not k.startswith("sl:")), default=(float("nan"), "-"))
        summary.append((b, ours, theirs))
    print("\n| budget | scorelab best | peer best | ratio |\n|---|---|---|---|")
    for b, ours, theirs in summary:
        print(f"| nfe {b} | {ours[0]:.4g} ({ours[1]}) | {theirs[0]:.4g} ({theirs[1]}) | {ours[0] / theirs[0]:.3f} |")
    print(f"| floor | {fl_kl:.4g} | | |", flush=True)
    return med, summary, fl_kl


def overhead(K, n=100_000, nfe=20, reps=3):
    """Wall time per step with a cheap exact score: p_0 = N(0.5, 0.3 I) in 2-D."""
    def cheap(sde):
        def score(x, t):
            m, s = sde.marginal_scale(t)[:, None], sde.marginal_std(t)[:, None]
            return -(x - 0.5 * m) / (0.3 * m * m + s * s)
        return score

    ve, vp = VESDE(0.002, 80.0), VPSDE()
    jobs = {
        "sl:dpm_solver[ve]": lambda: sample(cheap(ve), ve, (n, 2), method="dpm_solver", nfe=nfe,
                                            generator=torch.Generator().manual_seed(0)),
        "sl:edm_heun[ve]": lambda: sample(cheap(ve), ve, (n, 2), method="edm_heun", nfe=nfe,
                                          generator=torch.Generator().manual_seed(0)),
        "sl:ancestral[vp]": lambda: sample(cheap(vp), vp, (n, 2), method="ancestral", nfe=nfe,
                                           generator=torch.Generator().manual_seed(0)),
        "sl:ode-euler[vp]": lambda: sample(cheap(vp), vp, (n, 2), method="ode", solver="euler", nfe=nfe,
                                           generator=torch.Generator().manual_seed(0)),
    }
    if K is not None:
        for name in ("euler", "dpmpp_2m", "heun"):
            jobs[f"k:{name}"] = (lambda name=name: peers.k_diffusion_runs(K, cheap(ve), ve, (n, 2), nfe, 0,
                                                                           names=(name,)))
    for name in peers.VP_SCHEDULERS:
        jobs[f"d:{name}"] = (lambda name=name: peers.diffusers_vp_runs(cheap(vp), vp, (n, 2), nfe, 0, names=(name,)))
    print(f"\n### overhead: wall ms per evaluation-step, batch {n} 2-D, nfe {nfe}, median of {reps}")
    print("| sampler | ms / step |\n|---|---|")
    for name, job in jobs.items():
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            job()
            ts.append(time.perf_counter() - t0)
        print(f"| {name} | {1e3 * statistics.median(ts) / nfe:.2f} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--gmm16-seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--no-overhead", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    K = peers.load_k_sampling()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {stamp}")
    if a.quick:
        run_mixture("ring8", ring_mixture(), [10, 20], 1000, a.seeds, K)
        return
    budgets = [10, 20, 50, 200]
    mixtures = [("ring8", ring_mixture())] + [(f"gmm16-seed{s}", gmm16(s)) for s in a.gmm16_seeds]
    mixtures.append(("grid25 (untuned)", grid_mixture()))
    for name, gmm in mixtures:
        run_mixture(name, gmm, budgets, a.n, a.seeds, K)
    if not a.no_overhead:
        overhead(K)


if __name__ == "__main__":
    main()
