"""How the default of ``sample()`` below 8 evaluations was chosen (docs/samplers.md, "The default below 8
evaluations"): a sweep of fixed configurations at one budget on exact-score mixtures, each configuration's moment
KL over the best of the sweep per mixture (median of sampling seeds 0 and 1, n = 4000, VE 0.002..80), ranked by
the worst ratio. The choice was made on ``--mixtures ring8 gmm16-seed1 gmm16-seed2`` at nfe 5; run it on the other
mixtures of benchmarks/samplers.py to see how the ranking holds where it was not chosen.

    .venv/bin/python benchmarks/sampler_defaults.py --nfe 5 --mixtures ring8 gmm16-seed1 gmm16-seed2
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from samplers import NEW_MIXTURES, gmm16  # noqa: E402
from scorelab.data import grid_mixture, ring_mixture  # noqa: E402
from scorelab.metrics import mixture_error  # noqa: E402
from scorelab.samplers import sample  # noqa: E402
from scorelab.sde import VESDE  # noqa: E402

MIXTURES = {"ring8": ring_mixture, "gmm16-seed1": lambda: gmm16(1), "gmm16-seed2": lambda: gmm16(2),
            "grid25": grid_mixture, **NEW_MIXTURES}


def configurations():
    """(method, options): iPNDM orders 2-4 on Karras grids (sigma_min, rho), UniPC orders 1-3 (bh1/bh2, sigma_min,
    log-SNR or Karras grid), DPM-Solver++ 2M/3M (with and without the final denoising step) and DEIS 2-3."""
    out = [("ipndm", dict(order=o, sigma_min=s, rho=r)) for o in (2, 3, 4) for s in (0.002, 0.005, 0.01, 0.02, 0.05)
           for r in (5.0, 7.0, 10.0)]
    for o in (1, 2, 3):
        for v in ("bh1", "bh2"):
            for s in (0.005, 0.01, 0.03, 0.06):
                out += [("unipc", dict(order=o, variant=v, sigma_min=s)),
                        ("unipc", dict(order=o, variant=v, sigma_min=s, grid="karras"))]
    for o in (2, 3):
        for s in (0.01, 0.03, 0.06):
            out += [("dpm_solver", dict(order=o, sigma_min=s)), ("deis", dict(order=o, sigma_min=s)),
                    ("dpm_solver", dict(order=o, sigma_min=s, denoise_to_zero=True))]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nfe", type=int, default=5)
    ap.add_argument("--mixtures", nargs="+", default=["ring8", "gmm16-seed1", "gmm16-seed2"], choices=list(MIXTURES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    sde = VESDE(0.002, 80.0)
    errors: dict[str, dict[str, float]] = {}
    for name in a.mixtures:
        gmm = MIXTURES[name]()
        score = gmm.score_fn(sde)
        for method, opts in configurations():
            o = dict(opts)
            grid = o.pop("grid", None)
            e = statistics.median(mixture_error(sample(score, sde, (a.n, gmm.d), method, a.nfe, grid=grid, generator=
                                                       torch.Generator().manual_seed(s), **o).x, gmm).moment_kl
                                  for s in a.seeds)
            errors.setdefault(f"{method} {opts}", {})[name] = e
        print(f"  [{name}] done", flush=True)
    best = {m: min(row[m] for row in errors.values()) for m in a.mixtures}
    ranked = sorted((max(r), math.exp(statistics.fmean(map(math.log, r))), k, r) for k, r in
                    ((k, [row[m] / best[m] for m in a.mixtures]) for k, row in errors.items()))
    print(f"\nnfe {a.nfe}, {len(errors)} configurations; best per mixture: "
          + ", ".join(f"{m} {b:.4g}" for m, b in best.items()))
    print("| configuration | worst | geo. mean | " + " | ".join(a.mixtures) + " |\n|---|---|---|"
          + "---|" * len(a.mixtures))
    for worst, gm, k, r in ranked[:a.top]:
        print(f"| {k} | {worst:.2f} | {gm:.2f} | " + " | ".join(f"{v:.2f}" for v in r) + " |")


if __name__ == "__main__":
    main()
