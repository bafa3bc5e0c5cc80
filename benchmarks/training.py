"""Training fidelity (shared/BENCHMARKS.md): scorelab's default configs vs a plain EDM reference trainer.

Data: exact samples of Gaussian mixtures with known density: a 2-D ring of 6 (tuned on), a 2-D anisotropic
mixture never used while tuning (defaults chosen on ring6 and mix8, seed 0), and a mixture in d = 8.
Reference: EDM (Karras et al. 2022, Table 1) written here from the paper's formulas: D(x; s) = c_skip x +
c_out F(c_in x, ln(s)/4), ln s ~ N(-1.2, 1.2^2), loss 1/c_out^2 |D - x0|^2, around scorelab's MLP of the same
size with the same steps, batch, lr, warm-up, clip and EMA as the scorelab config; sampled through the same
samplers via its score (D - x)/s^2 under the config's VE process.
Error: moment KL / mode TV of n samples against the exact mixture (floor: a second exact sample set), NLL of
held-out exact samples vs the exact log-density of p_eps (nats/dim), seconds of training.

    python benchmarks/training.py --mixtures ring6 aniso5 mix8 --seeds 0 1 2 --reference --equal-seconds --nll 200 \
        --table table.md   # about 6 minutes per mixture and seed on one busy CPU core
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import scorelab as sl
from scorelab.config import load_config
from scorelab.likelihood import log_likelihood
from scorelab.metrics import mixture_error
from scorelab.models import MLPScoreNet
from scorelab.oracle import GaussianMixture
from scorelab.samplers import sample
from scorelab.train import train as sl_train


# ------------------------------------------------------------------------------------------- mixtures
def ring6() -> GaussianMixture:
    """6 Gaussians, std 0.2, on the circle of radius 5, weights proportional to 1..6 (tuned on)."""
    a = torch.arange(6, dtype=torch.float64) * (2 * math.pi / 6)
    return GaussianMixture(torch.arange(1, 7, dtype=torch.float64), 5 * torch.stack([a.cos(), a.sin()], 1),
                           torch.full((6,), 0.2**2, dtype=torch.float64))


def aniso5() -> GaussianMixture:
    """5 anisotropic, rotated Gaussians of different sizes at irregular places (never tuned on)."""
    means = torch.tensor([[-3.0, 2.5], [1.5, 3.5], [3.5, -1.0], [-1.0, -3.0], [0.5, 0.3]], dtype=torch.float64)
    w = torch.tensor([0.3, 0.1, 0.25, 0.15, 0.2], dtype=torch.float64)
    covs = []
    for k, (sx, sy, th) in enumerate([(0.6, 0.15, 0.3), (0.3, 0.3, 0.0), (0.8, 0.2, 1.2), (0.4, 0.1, -0.7),
                                      (0.25, 0.12, 2.0)]):
        del k
        c, s = math.cos(th), math.sin(th)
        R = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        covs.append(R @ torch.diag(torch.tensor([sx**2, sy**2], dtype=torch.float64)) @ R.T)
    return GaussianMixture(w, means, torch.stack(covs))


def mix8() -> GaussianMixture:
    """8 Gaussians in d = 8, means 4 * N(0, I) / sqrt(2) drawn once (seed 8), stds 0.3-0.6, weights 1..8."""
    g = torch.Generator().manual_seed(8)
    means = 4 * torch.randn(8, 8, generator=g, dtype=torch.float64) / math.sqrt(2)
    stds = 0.3 + 0.3 * torch.rand(8, generator=g, dtype=torch.float64)
    return GaussianMixture(torch.arange(1, 9, dtype=torch.float64), means, stds**2)


MIXTURES = {"ring6": ring6, "aniso5": aniso5, "mix8": mix8}

# (method, nfe, options) measured on every run; "default" is whatever sl.sample does with no method
SAMPLERS = [
    ("euler_maruyama", 400, {}),
    ("pc", 400, {}),
    ("ancestral", 400, {}),
    ("dpm_solver", 20, {}),
    ("dpm_solver", 50, {}),
    ("edm_heun", 39, {}),
    ("ode", 100, {"solver": "rk4"}),
]


# ------------------------------------------------------------------------------------------- reference
class EDMReference(torch.nn.Module):
    """Karras et al. 2022, Table 1: D(x; s) = c_skip x + c_out F(c_in x, c_noise), as a score under a VE SDE."""

    def __init__(self, dim, hidden, depth, sigma_data, sde):
        super().__init__()
        self.F = MLPScoreNet(dim, hidden=hidden, depth=depth)
        self.sd, self.sde = sigma_data, sde

    def denoise(self, x, s):
        s = s.reshape(-1, *([1] * (x.ndim - 1)))
        sd2 = self.sd**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sd / (s**2 + sd2).sqrt()
        c_in = 1 / (s**2 + sd2).sqrt()
        return c_skip * x + c_out * self.F(c_in * x, (s.log() / 4).reshape(-1))

    def score(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        s = self.sde.marginal_std(t).reshape(-1, *([1] * (x.ndim - 1)))
        return (self.denoise(x, s.reshape(-1)) - x) / s**2


def train_reference(data, tc, sde, hidden, depth, seed, steps=None):
    torch.manual_seed(seed)
    sd = float(data.pow(2).mean().sqrt())
    model = EDMReference(data.shape[1], hidden, depth, sd, sde)
    ema = EDMReference(data.shape[1], hidden, depth, sd, sde)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=tc["lr"])
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.process_time()
    for k in range(tc["steps"] if steps is None else steps):
        for grp in opt.param_groups:
            grp["lr"] = tc["lr"] * min(1.0, (k + 1) / max(1, tc["warmup"]))
        x0 = data[torch.randint(0, len(data), (tc["batch_size"],), generator=g)]
        s = torch.exp(-1.2 + 1.2 * torch.randn(len(x0), 1, generator=g))
        w = (s**2 + sd**2) / (s * sd) ** 2
        x = x0 + s * torch.randn(x0.shape, generator=g)
        loss = (w * (model.denoise(x, s.reshape(-1)) - x0) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        if tc["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc["grad_clip"])
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(p, 1 - tc["ema_decay"])
    ema.eval().requires_grad_(False)
    return ema.score, time.process_time() - t0


def train_scorelab(data, config, overrides, seed, out):
    path = Path(out) / "data.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, data.numpy())
    ov = [f"data.path={path}", f"train.seed={seed}", "train.tensorboard=false", *overrides]
    t0 = time.process_time()
    sl_train(load_config(config, ov), Path(out) / "run", progress=False)
    seconds = time.process_time() - t0
    run = sl.load(Path(out) / "run")
    return run.score, run.sde, seconds


# ------------------------------------------------------------------------------------------- evaluation
def evaluate(score, sde, gmm, n, seed, samplers=SAMPLERS, nll_n=0):
    rows = {}
    for method, nfe, opts in samplers:
        x = sample(score, sde, (n, gmm.d), method=method, nfe=nfe, generator=torch.Generator().manual_seed(seed),
                   **opts).x
        e = mixture_error(x, gmm)
        rows[f"{method}{nfe}"] = (e.moment_kl, e.mode_tv)
    x = sample(score, sde, (n, gmm.d), generator=torch.Generator().manual_seed(seed)).x
    e = mixture_error(x, gmm)
    rows["default"] = (e.moment_kl, e.mode_tv)
    if nll_n:
        xt = gmm.sample(nll_n, generator=torch.Generator().manual_seed(seed + 7)).float()
        ll = log_likelihood(score, sde, xt, eps=1e-3, rtol=1e-4, atol=1e-4)
        true = -gmm.log_prob(xt, torch.full((nll_n,), 1e-3), sde)
        rows["nll_gap"] = float(ll.nll.mean() - true.mean()) / gmm.d
    return rows


def floor(gmm, n, seed):
    e = mixture_error(gmm.sample(n, generator=torch.Generator().manual_seed(seed + 99)).float(), gmm)
    return e.moment_kl, e.mode_tv


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixtures", nargs="+", default=list(MIXTURES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--config", default="toy")
    ap.add_argument("--set", nargs="*", default=[], dest="overrides")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--ndata", type=int, default=20000)
    ap.add_argument("--nll", type=int, default=0)
    ap.add_argument("--reference", action="store_true")
    ap.add_argument("--equal-seconds", action="store_true", help="also train the reference for scorelab's CPU time")
    ap.add_argument("--table", default=None, help="write a markdown summary table here")
    ap.add_argument("--samplers", nargs="*", default=None)
    ap.add_argument("--out", default="/tmp/tr/bench")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    ov = list(a.overrides) + ([f"train.steps={a.steps}"] if a.steps else [])
    cfg = load_config(a.config, ["data.path=x.npy", *ov])
    samplers = SAMPLERS if a.samplers is None else [s for s in SAMPLERS if f"{s[0]}{s[1]}" in a.samplers]
    results = []
    for name in a.mixtures:
        gmm = MIXTURES[name]()
        for seed in a.seeds:
            data = gmm.sample(a.ndata, generator=torch.Generator().manual_seed(1000 + seed)).float()
            fl = floor(gmm, a.n, seed)
            score, sde, sec = train_scorelab(data, a.config, ov, seed, f"{a.out}/{name}-{seed}")
            r = {"mixture": name, "seed": seed, "who": "scorelab", "seconds": sec, "floor": fl,
                 **evaluate(score, sde, gmm, a.n, seed, samplers, a.nll)}
            print(json.dumps(r), flush=True)
            results.append(r)
            if a.reference:
                score, sec = train_reference(data, cfg["train"], sde, cfg["model"]["hidden"], cfg["model"]["depth"],
                                             seed)
                r = {"mixture": name, "seed": seed, "who": "edm_ref", "seconds": sec, "floor": fl,
                     **evaluate(score, sde, gmm, a.n, seed, samplers, a.nll)}
                print(json.dumps(r), flush=True)
                results.append(r)
                if a.equal_seconds:
                    steps = max(1, round(cfg["train"]["steps"] * results[-2]["seconds"] / sec))
                    score, sec = train_reference(data, cfg["train"], sde, cfg["model"]["hidden"],
                                                 cfg["model"]["depth"], seed, steps=steps)
                    r = {"mixture": name, "seed": seed, "who": "edm_ref_eqtime", "steps": steps, "seconds": sec,
                         "floor": fl, **evaluate(score, sde, gmm, a.n, seed, samplers, a.nll)}
                    print(json.dumps(r), flush=True)
                    results.append(r)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    if a.table:
        Path(a.table).write_text(summary(results, cfg["train"]["steps"]) + "\n")
    return results


def summary(results, steps):
    """Markdown table: per mixture and trainer, means over seeds of the best and default sampler's moment KL and
    mode TV, the best sampler's name(s), NLL gap (nats/dim) and CPU seconds; the ratio column is moment KL of
    scorelab / the row's (scorelab's row: 1)."""
    from statistics import mean

    lines = ["| mixture | trainer | steps | CPU s | floor KL / TV | best sampler | best KL | best TV | "
             "default KL | default TV | NLL gap | KL ratio scorelab/this (best, default) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mix in dict.fromkeys(r["mixture"] for r in results):
        own = [r for r in results if r["mixture"] == mix and r["who"] == "scorelab"]
        for who in dict.fromkeys(r["who"] for r in results if r["mixture"] == mix):
            rs = [r for r in results if r["mixture"] == mix and r["who"] == who]
            samp = [k for k in rs[0] if isinstance(rs[0][k], list) and k not in ("floor", "default")]
            best = [min(samp, key=lambda k, r=r: r[k][0]) for r in rs]
            bkl = mean(r[b][0] for r, b in zip(rs, best, strict=True))
            btv = mean(r[b][1] for r, b in zip(rs, best, strict=True))
            dkl, dtv = mean(r["default"][0] for r in rs), mean(r["default"][1] for r in rs)
            okl = mean(min(r[k][0] for k in samp) for r in own)
            odkl = mean(r["default"][0] for r in own)
            nll = f"{mean(r['nll_gap'] for r in rs):+.4f}" if "nll_gap" in rs[0] else "-"
            st = mean(r.get("steps", steps) for r in rs)
            lines.append(f"| {mix} | {who} | {st:.0f} | {mean(r['seconds'] for r in rs):.1f} | "
                         f"{mean(r['floor'][0] for r in rs):.4f} / {mean(r['floor'][1] for r in rs):.3f} | "
                         f"{', '.join(sorted(set(best)))} | {bkl:.4f} | {btv:.3f} | {dkl:.4f} | {dtv:.3f} | {nll} | "
                         f"{okl / bkl:.2f}, {odkl / dkl:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main() and 0)
