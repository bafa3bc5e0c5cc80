"""Imputation benchmark: ``sl.inpaint`` against the exact conditional of Gaussian mixtures.

Mixtures: K = 3 components in d = 3, 4, 6 (means ~ N(0, 4 I), covariances 0.3 A A^T / d + 0.1 I, weights
uniform(0.5, 1.5)), one per seed; the first d // 2 coordinates are known and set on the segment between the
known parts of modes 0 and 1, where mode 0 takes 40 % of their conditional weight (the known part is then
informative about the component). The exact conditional is again a mixture (``scorelab.smc.
conditional_mixture``). Errors (``scorelab.metrics``): moment KL and mode TV of the n imputed unknown parts
against it, with the noise floor (n exact draws). Methods at each budget (score evaluations per particle = nfe):
the replacement method ("pc"), RePaint (reverse diffusion, resample 10) and the default "smc" with 4, 16 and 64
particles (each of its nfe score calls evaluates n x particles inputs). VP (beta 0.1..20), float64.

    .venv/bin/python benchmarks/conditional.py            # seeds 0-2, n = 1000, nfe 100 and 400
    .venv/bin/python benchmarks/conditional.py --quick    # seed 0, d = 3 and 4, n = 500, nfe 100
"""

from __future__ import annotations

import argparse
import time

import torch

from scorelab.conditional import inpaint
from scorelab.metrics import mixture_error
from scorelab.oracle import GaussianMixture
from scorelab.sde import VPSDE
from scorelab.smc import conditional_mixture

F64 = torch.float64


def mixture(d: int, seed: int, K: int = 3) -> GaussianMixture:
    g = torch.Generator().manual_seed(1000 + seed)
    mu = 2.0 * torch.randn(K, d, generator=g, dtype=F64)
    A = torch.randn(K, d, d, generator=g, dtype=F64) / d**0.5
    S = 0.3 * (A @ A.transpose(1, 2)) + 0.1 * torch.eye(d, dtype=F64)
    return GaussianMixture(torch.rand(K, generator=g, dtype=F64) + 0.5, mu, S)


def between(gmm: GaussianMixture, known: torch.Tensor, share: float = 0.4):
    """Known values between modes 0 and 1 where mode 0 has ``share`` of their conditional weight (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(50):
        lam = 0.5 * (lo + hi)
        y = lam * gmm.means[0, known] + (1 - lam) * gmm.means[1, known]
        w = conditional_mixture(gmm, known, y)[0]
        lo, hi = (lo, lam) if w[0] / (w[0] + w[1]) > share else (lam, hi)
    return y, GaussianMixture(*conditional_mixture(gmm, known, y))


def methods(quick: bool):
    rows = [("replacement (pc)", {"method": "replacement"}), ("RePaint (rd, r=10)",
            {"method": "reverse_diffusion", "resample": 10})]
    return rows + [(f"smc P={p}", {"particles": p}) for p in ((4, 16) if quick else (4, 16, 64))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds, dims, n, budgets = ((0,), (3, 4), 500, (100,)) if args.quick else ((0, 1, 2), (3, 4, 6), 1000, (100, 400))
    sde = VPSDE()
    print(f"n = {n}; moment KL / mode TV against the exact conditional; floor = {n} exact draws")
    print(f"{'mixture':>10} {'method':>20} {'nfe':>5} {'moment KL':>10} {'mode TV':>8} {'sec':>6}")
    totals: dict = {}
    for d in dims:
        for seed in seeds:
            gmm = mixture(d, seed)
            known = torch.arange(d) < d // 2
            y, cond = between(gmm, known)
            fl = mixture_error(cond.sample(n, generator=torch.Generator().manual_seed(7)), cond)
            name = f"d{d}/s{seed}"
            print(f"{name:>10} {'floor':>20} {'':>5} {fl.moment_kl:10.3f} {fl.mode_tv:8.3f}   "
                  f"(weights {', '.join(f'{w:.2f}' for w in cond.weights.tolist())})")
            totals.setdefault(("floor", 0), []).append((fl.moment_kl, fl.mode_tv))
            x = torch.zeros(n, d, dtype=F64)
            x[:, known] = y
            for nfe in budgets:
                for label, kw in methods(args.quick):
                    t0 = time.perf_counter()
                    res = inpaint(gmm.score_fn(sde), sde, x, known.to(F64), nfe=nfe,
                                  generator=torch.Generator().manual_seed(seed), **kw)
                    e = mixture_error(res.x[:, ~known], cond)
                    print(f"{name:>10} {label:>20} {nfe:5d} {e.moment_kl:10.3f} {e.mode_tv:8.3f} "
                          f"{time.perf_counter() - t0:6.1f}", flush=True)
                    totals.setdefault((label, nfe), []).append((e.moment_kl, e.mode_tv))
    print("\nmean over mixtures and seeds")
    print(f"{'method':>20} {'nfe':>5} {'moment KL':>10} {'mode TV':>8} {'max TV':>7}")
    for (label, nfe), v in totals.items():
        kl, tv = zip(*v)
        print(f"{label:>20} {nfe or '':>5} {sum(kl) / len(kl):10.3f} {sum(tv) / len(tv):8.3f} {max(tv):7.3f}")


if __name__ == "__main__":
    main()
