"""Likelihood benchmark (see /work/shared/BENCHMARKS.md, "Likelihood").

With the exact score of a Gaussian mixture, ``log_likelihood`` is compared with the exact log p_eps(x):
mean absolute error per dimension and mean score evaluations, for tolerances 1e-3 ... 1e-6, d = 2 (ring8)
and d = 16 (gmm16), VE / VP / sub-VP. Two error columns:

  solver  -- the ODE's own error: the exact log p_T(z) is used as the prior, so only the solve is judged;
  total   -- with the SDE's prior N(0, prior_std^2 I), i.e. what a user gets; the difference is the prior
             mismatch log N(z) - log p_T(z), set by how far p_T is from the prior (see docs/likelihood.md).

Run:  .venv/bin/python benchmarks/likelihood.py [--quick] [--n 32] [--hutchinson]
Prints a Markdown table. float64 throughout, eps = 1e-5, adaptive Dormand-Prince (rtol = atol = tol).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from scorelab.latent import decode, encode
from scorelab.likelihood import log_likelihood
from scorelab.oracle import GaussianMixture
from scorelab.sde import VESDE, VPSDE, SubVPSDE


def ring8() -> GaussianMixture:
    angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 4 * torch.stack([angle.cos(), angle.sin()], 1)
    return GaussianMixture(torch.arange(1, 9, dtype=torch.float64), means, torch.full((8,), 0.15**2,
                                                                                      dtype=torch.float64))


def gmm16(seed: int = 1) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    d, K = 16, 6
    means = 3 * torch.randn(K, d, generator=g, dtype=torch.float64)
    Q = torch.linalg.qr(torch.randn(K, d, d, generator=g, dtype=torch.float64)).Q
    lam = torch.exp(torch.empty(K, d, dtype=torch.float64).uniform_(math.log(0.01), 0.0, generator=g))
    covs = Q @ torch.diag_embed(lam) @ Q.transpose(1, 2)
    gam = torch.distributions.Gamma(torch.full((K,), 2.0, dtype=torch.float64), 1.0)
    torch.manual_seed(seed)  # Dirichlet(2) weights via Gamma draws (torch.distributions takes no generator)
    w = gam.sample()
    return GaussianMixture(w / w.sum(), means, covs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer points and tolerances")
    ap.add_argument("--n", type=int, default=32, help="points per setting")
    ap.add_argument("--hutchinson", action="store_true", help="add Hutchinson rows (n_probes = 1, 4, 16)")
    ap.add_argument("--float32", action="store_true", help="solve in float32 (truth stays float64)")
    ap.add_argument("--roundtrip", action="store_true", help="also tabulate encode/decode round-trip errors")
    args = ap.parse_args()
    torch.set_num_threads(1)
    eps = 1e-5
    tols = (1e-3, 1e-5) if args.quick else (1e-3, 1e-4, 1e-5, 1e-6)
    n = 8 if args.quick else args.n
    sdes = {"VE": VESDE(0.002, 80.0), "VP": VPSDE(), "sub-VP": SubVPSDE()}  # EDM sigma range; Song et al. betas
    mixtures = {"ring8 (d=2)": ring8(), "gmm16 (d=16)": gmm16()}
    dtype = torch.float32 if args.float32 else torch.float64
    print(f"{dtype}, n = {n} points per row, eps = {eps}, dopri5 with rtol = atol = tol\n")
    print("| mixture | SDE | divergence | tol | solver abs err / dim | solver bias / dim (+- se) | "
          "total abs err / dim | mean nfe | s / point |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mname, gmm in mixtures.items():
        x = gmm.sample(n, generator=torch.Generator().manual_seed(0))
        d = gmm.d
        for sname, sde in sdes.items():
            exact = gmm.log_prob(x, eps, sde)
            exact_prior = lambda z, gmm=gmm, sde=sde: gmm.log_prob(z, sde.T, sde)  # noqa: E731
            rows = [("exact", 1, tol) for tol in tols]
            if args.hutchinson:
                rows += [("hutchinson", k, 1e-5) for k in (1, 4, 16)]
            for div, k, tol in rows:
                t0 = time.perf_counter()
                r = log_likelihood(gmm.score_fn(sde), sde, x.to(dtype), generator=torch.Generator().manual_seed(1),
                                   divergence=div, n_probes=k, rtol=tol, atol=tol, eps=eps,
                                   prior=lambda z, p=exact_prior: p(z.double()).to(z.dtype))
                wall = (time.perf_counter() - t0) / n
                err = (-r.nll.double() - exact) / d
                total = -(r.delta_logp + sde.prior_logp(r.z)).double()
                total_err = float((-total - exact).abs().mean()) / d
                label = div if div == "exact" else f"hutchinson x{k}"
                print(f"| {mname} | {sname} | {label} | {tol:.0e} | {float(err.abs().mean()):.2e} | "
                      f"{float(err.mean()):+.1e} +- {float(err.std() / math.sqrt(n)):.0e} | {total_err:.2e} | "
                      f"{r.nfe} | {wall:.3f} |", flush=True)
    if args.roundtrip:
        print("\n| mixture | SDE | tol | max rel. round-trip err | median | nfe encode + decode |")
        print("|---|---|---|---|---|---|")
        for mname, gmm in mixtures.items():
            x = gmm.sample(n, generator=torch.Generator().manual_seed(0)).to(dtype)
            for sname, sde in sdes.items():
                for tol in tols:
                    opt = dict(rtol=tol, atol=tol, eps=eps)
                    z, n1 = encode(gmm.score_fn(sde), sde, x, return_nfe=True, **opt)
                    xb, n2 = decode(gmm.score_fn(sde), sde, z, return_nfe=True, **opt)
                    rel = (xb - x).norm(dim=1) / x.norm(dim=1)
                    print(f"| {mname} | {sname} | {tol:.0e} | {float(rel.max()):.1e} | {float(rel.median()):.1e} | "
                          f"{n1} + {n2} |", flush=True)


if __name__ == "__main__":
    main()
