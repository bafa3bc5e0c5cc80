"""Score-matching objectives benchmark: same network, same CPU time, distance to the exact score.

1. For each objective in ``scorelab.objectives.OBJECTIVES`` (plus sde_dsm with likelihood weighting), train the
   same MLPScoreNet (seed 0, Adam lr 1e-3, batch 256) on the weighted ring (8 Gaussians, std 0.15, radius 4,
   weights 1..8) under a VE SDE (sigma 0.01 .. 10) for the same CPU seconds (one thread), then report

     weighted Fisher  E_{t ~ U[1e-3, 1]} E_{x ~ p_t} s(t)^2 |s_theta(x, t) - grad log p_t(x)|^2
                      (Monte-Carlo over a fixed set of 4000 (t, x_t) pairs from the oracle),
     relative         the same divided by E s(t)^2 |grad log p_t|^2 (the zero score scores 1),
     on rungs         the weighted Fisher with t restricted to the 10 levels of the NCSN ladder (0.01 .. 10),
     Fisher @ sigma=0.1  E_{x ~ p_t} |s_theta - grad log p_t|^2 at the single level t with s(t) = 0.1,

   and the CPU seconds per step. The fixed-time objectives (esm, ism, ssm, ssm_vr) are run in their
   multi-scale form (t ~ U[1e-5, 1], weight s(t)^2); dsm is Vincent's single level sigma = 0.1, so only its
   last column is comparable.
2. ISM vs SSM cost per training step as d grows (2, 16, 64, 256): ISM's exact trace needs D vector-Jacobian
   products per point, SSM one per projection.

Run:  .venv/bin/python benchmarks/objectives.py [--seconds 20] [--quick]
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from scorelab.models import MLPScoreNet, ScoreModel
from scorelab.objectives import OBJECTIVES, noise_ladder
from scorelab.oracle import GaussianMixture
from scorelab.sde import VESDE


def ring8() -> GaussianMixture:
    angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 4 * torch.stack([angle.cos(), angle.sin()], 1)
    return GaussianMixture(torch.arange(1, 9, dtype=torch.float64), means, torch.full((8,), 0.15**2,
                                                                                      dtype=torch.float64))


def runs(gmm, sde):
    multi = dict(t=None, weighting="std2")
    return [
        ("esm", "esm", dict(target_score=gmm.score_fn(sde), **multi)),
        ("ism", "ism", multi),
        ("ssm (rademacher, M=1)", "ssm", multi),
        ("ssm_vr (rademacher, M=1)", "ssm_vr", multi),
        ("dsm (sigma=0.1 only)", "dsm", dict(sigma=0.1)),
        ("ncsn (L=10)", "ncsn", {}),
        ("sde_dsm (std2)", "sde_dsm", {}),
        ("sde_dsm (likelihood)", "sde_dsm", dict(weighting="likelihood")),
        ("ddpm (N=1000)", "ddpm", {}),
    ]


def _weighted(model, gmm, sde, t, g):
    """E s(t)^2 |s_theta - grad log p_t|^2 and E s(t)^2 |grad log p_t|^2 over x_t ~ p_t at the times t."""
    x = gmm.sample(len(t), t=t, sde=sde, generator=g)
    with torch.no_grad():
        w = sde.marginal_std(t) ** 2
        true = gmm.score(x, t, sde)
        err = model.score(x.float(), t.float()).double() - true
    return float((w * (err**2).sum(1)).mean()), float((w * (true**2).sum(1)).mean())


def fisher(model, gmm, sde, n=4000, seed=123):
    """(weighted Fisher, relative, weighted Fisher on the NCSN rungs, Fisher at sigma = 0.1), on fixed draws."""
    g = torch.Generator().manual_seed(seed)
    t = 1e-3 + (1 - 1e-3) * torch.rand(n, generator=g, dtype=torch.float64)
    weighted, scale = _weighted(model, gmm, sde, t, g)
    rungs = sde.t_from_std_ratio(noise_ladder(sde, 10))
    on_rungs = _weighted(model, gmm, sde, rungs[torch.randint(0, 10, (n,), generator=g)], g)[0]
    t1 = sde.t_from_std_ratio(torch.tensor(0.1, dtype=torch.float64)).expand(n)
    at_level = _weighted(model, gmm, sde, t1, g)[0] / 0.1**2
    return weighted, weighted / scale, on_rungs, at_level


def train(name, opts, gmm, sde, seconds, batch=256):
    torch.manual_seed(0)
    model = ScoreModel(MLPScoreNet(2, hidden=128, depth=3), sde)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fn = OBJECTIVES[name]
    g = torch.Generator().manual_seed(1)
    steps, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        x = gmm.sample(batch, generator=g, dtype=torch.float32)
        loss = fn(model, x, g, **opts).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
    return model, steps, (time.process_time() - start) / steps


def cost_table(dims, batch=64, reps=5):
    rows = []
    for d in dims:
        torch.manual_seed(0)
        model = ScoreModel(MLPScoreNet(d, hidden=128, depth=3), VESDE(0.01, 10.0))
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        x = torch.randn(batch, d)
        g = torch.Generator().manual_seed(0)
        per = {}
        for name, opts in (("dsm", dict(sigma=0.1)), ("ssm", dict(t=0.05)), ("ism", dict(t=0.05))):
            times = []
            for _ in range(reps + 1):
                start = time.process_time()
                loss = OBJECTIVES[name](model, x, g, **opts).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                times.append(time.process_time() - start)
            per[name] = sorted(times[1:])[reps // 2]  # median, first call (warm-up) dropped
        rows.append((d, per))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0, help="CPU seconds of training per objective")
    ap.add_argument("--quick", action="store_true", help="2 s per objective, d up to 64")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seconds = 2.0 if args.quick else args.seconds
    gmm, sde = ring8(), VESDE(0.01, 10.0)

    print(f"Training budget: {seconds:g} CPU-s per objective, 1 thread, MLPScoreNet(2, 128, 3), batch 256.\n")
    print("| objective | steps | ms/step | weighted Fisher | relative | on rungs | Fisher @ sigma=0.1 |")
    print("|---|---|---|---|---|---|---|")
    torch.manual_seed(0)  # the initial network every objective starts from
    untrained = fisher(ScoreModel(MLPScoreNet(2, hidden=128, depth=3), sde), gmm, sde)
    print(f"| (untrained) | 0 | - | {untrained[0]:.3g} | {untrained[1]:.3f} | {untrained[2]:.3g} | "
          f"{untrained[3]:.3g} |")
    for label, name, opts in runs(gmm, sde):
        model, steps, sec = train(name, opts, gmm, sde, seconds)
        w, rel, rung, lvl = fisher(model, gmm, sde)
        print(f"| {label} | {steps} | {1e3 * sec:.1f} | {w:.3g} | {rel:.3f} | {rung:.3g} | {lvl:.3g} |", flush=True)

    dims = (2, 16, 64) if args.quick else (2, 16, 64, 256)
    print("\nCost of one training step (ms, median of 5, batch 64, MLPScoreNet(d, 128, 3), 1 thread):\n")
    print("| d | dsm | ssm (M=1) | ism (exact trace) | ism / ssm |")
    print("|---|---|---|---|---|")
    for d, per in cost_table(dims):
        print(f"| {d} | {1e3 * per['dsm']:.2f} | {1e3 * per['ssm']:.2f} | {1e3 * per['ism']:.2f} | "
              f"{per['ism'] / per['ssm']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
