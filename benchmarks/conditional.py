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

Guided share of the requested class versus the guidance scale (``--guided``): on the ring (8 components,
weights 1..8 / 36: class 0 has prior weight 0.028, class 3 0.111), with (a) a *trained* noise-conditional
classifier (``classifier.train_classifier``, 1000 steps on 10000 labelled draws) guiding the exact score, VP and
VE, and (b) classifier-free guidance from a class-conditional run trained by ``scorelab.train`` (the bundled
toy config with model.num_classes=8, label dropout 0.1, 2000 steps). Share = fraction of 2000 samples (default
sampler, nfe 200) whose most responsible component is the requested one; its binomial noise is at most 0.011.
``--digits-run DIR`` adds the class-conditional digits run: the share of CFG samples that a clean classifier
(``train_classifier(..., sde=None)`` on the digits train split, its test accuracy printed) labels as the
requested class, per guidance scale; with ``--digits-classifier CLF`` (``scorelab classifier RUN --out CLF``)
also classifier guidance of the run's unconditional score.

    .venv/bin/python benchmarks/conditional.py --guided [--digits-run runs/digits_cond [--digits-classifier CLF]]
"""

from __future__ import annotations

import argparse
import time

import torch

from scorelab.conditional import inpaint
from scorelab.metrics import mixture_error
from scorelab.oracle import GaussianMixture
from scorelab.sde import VPSDE
from scorelab.smc import between_modes

F64 = torch.float64


def mixture(d: int, seed: int, K: int = 3) -> GaussianMixture:
    g = torch.Generator().manual_seed(1000 + seed)
    mu = 2.0 * torch.randn(K, d, generator=g, dtype=F64)
    A = torch.randn(K, d, d, generator=g, dtype=F64) / d**0.5
    S = 0.3 * (A @ A.transpose(1, 2)) + 0.1 * torch.eye(d, dtype=F64)
    return GaussianMixture(torch.rand(K, generator=g, dtype=F64) + 0.5, mu, S)


def methods(quick: bool):
    rows = [("replacement (pc)", {"method": "replacement"}), ("RePaint (rd, r=10)",
            {"method": "reverse_diffusion", "resample": 10})]
    return rows + [(f"smc P={p}", {"particles": p}) for p in ((4, 16) if quick else (4, 16, 64))]


SCALES = (0.0, 0.5, 1.0, 2.0, 4.0)


def _share(x: torch.Tensor, k: int, gmm: GaussianMixture) -> float:
    return float((gmm.responsibilities(x.double()).argmax(1) == k).double().mean())


def guided_toy(n: int = 2000, nfe: int = 200) -> None:
    import tempfile

    import scorelab as sl
    from scorelab.classifier import train_classifier
    from scorelab.data import data_labels, get_dataset, toy_mixture
    from scorelab.guidance import classifier_free, classifier_guided
    from scorelab.sde import VESDE
    from scorelab.train import train

    gmm = toy_mixture("ring")
    x = get_dataset("ring", n=10000, generator=torch.Generator().manual_seed(0))
    y = data_labels("ring", n=10000, generator=torch.Generator().manual_seed(0))
    print(f"guided share of the requested component vs scale (ring, {n} samples, nfe {nfe}; prior weights "
          f"class 0: 0.028, class 3: 0.111)")
    print(f"{'guidance':>34} {'class':>5} " + " ".join(f"{w:>6g}" for w in SCALES) + f" {'train s':>8}")
    for sde in (VPSDE(), VESDE(sigma_max=10.0)):
        t0 = time.perf_counter()
        clf = train_classifier(x, y, sde=sde, steps=1000, seed=0)
        sec = time.perf_counter() - t0
        for k in (0, 3):
            shares = [_share(sl.sample(classifier_guided(gmm.score_fn(sde), clf, k, w), sde, (n, 2), nfe=nfe,
                                       generator=torch.Generator().manual_seed(1)).x, k, gmm) for w in SCALES]
            print(f"{'trained classifier, ' + type(sde).__name__:>34} {k:>5} "
                  + " ".join(f"{v:6.3f}" for v in shares) + f" {sec:8.1f}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        train("toy", d, overrides=["model.num_classes=8", "train.steps=2000"], progress=False)
        sec = time.perf_counter() - t0
        run = sl.load(d)
        for k in (0, 3):
            shares = []
            for w in SCALES:  # uncond + w (cond - uncond) = classifier_free(cond, uncond, w - 1)
                score = classifier_free(lambda x, t, k=k: run.score(x, t, k), run.score, w - 1)
                shares.append(_share(sl.sample(score, run.sde, (n, 2), nfe=nfe,
                                               generator=torch.Generator().manual_seed(1)).x, k, gmm))
            print(f"{'classifier-free, trained run (VE)':>34} {k:>5} " + " ".join(f"{v:6.3f}" for v in shares)
                  + f" {sec:8.1f}", flush=True)


def guided_digits(run_dir: str, clf_dir: str | None = None, per_class: int = 100, nfe: int = 100) -> None:
    import scorelab as sl
    from scorelab.classifier import accuracy, load_for_run, predict, train_classifier
    from scorelab.data import digits
    from scorelab.guidance import classifier_free, classifier_guided

    run = sl.load(run_dir)
    tr, te = digits("train"), digits("test")
    t0 = time.perf_counter()
    clf = train_classifier(run.to_model(tr.x), tr.y, sde=None, steps=2000, seed=0)
    print(f"clean classifier: test accuracy {accuracy(clf, run.to_model(te.x), te.y):.3f} "
          f"({time.perf_counter() - t0:.0f} s); run {run_dir} at step {run.step}")
    print(f"share of CFG samples ({per_class} per class, nfe {nfe}, default sampler) the clean classifier labels "
          "as the requested class")
    noisy = None if clf_dir is None else load_for_run(clf_dir, run)
    print(f"{'kind':>10} {'guidance':>8} {'share':>6} {'min class':>9} {'confidence':>10} {'sec':>6}")
    for kind, w in [("cfg", w) for w in (0.0, 1.0, 2.0, 4.0)] + ([("classifier", w) for w in (1.0, 2.0, 4.0)]
                                                                  if noisy is not None else []):
        t0, hits, conf = time.perf_counter(), [], []
        for k in range(run.num_classes):
            if kind == "cfg":
                score = classifier_free(lambda x, t, k=k: run.score(x, t, k), run.score, w - 1)
            else:  # the unconditional score of the same run (its null class) + a trained noisy classifier
                score = classifier_guided(run.score, noisy, k, w)
            xs = sl.sample(score, run.sde, (per_class, *run.data_shape), nfe=nfe,
                           generator=torch.Generator().manual_seed(k)).x
            p = predict(clf, xs)
            hits.append(float((p.argmax(1) == k).double().mean()))
            conf.append(float(p.max(1).values.mean()))
        print(f"{kind:>10} {w:8g} {sum(hits) / len(hits):6.3f} {min(hits):9.3f} {sum(conf) / len(conf):10.3f} "
              f"{time.perf_counter() - t0:6.0f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--guided", action="store_true", help="the guided-share tables instead of imputation")
    ap.add_argument("--digits-run", default=None, help="a class-conditional digits run for the guided table")
    ap.add_argument("--digits-classifier", default=None, help="its noise-conditional classifier (scorelab classifier)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.guided or args.digits_run:
        if args.guided:
            guided_toy()
        if args.digits_run:
            guided_digits(args.digits_run, args.digits_classifier)
        return
    seeds, dims, n, budgets = ((0,), (3, 4), 500, (100,)) if args.quick else ((0, 1, 2), (3, 4, 6), 1000, (100, 400))
    sde = VPSDE()
    print(f"n = {n}; moment KL / mode TV against the exact conditional; floor = {n} exact draws")
    print(f"{'mixture':>10} {'method':>20} {'nfe':>5} {'moment KL':>10} {'mode TV':>8} {'sec':>6}")
    totals: dict = {}
    for d in dims:
        for seed in seeds:
            gmm = mixture(d, seed)
            known = torch.arange(d) < d // 2
            y, cond = between_modes(gmm, known)
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
