"""Class-conditional score models (label embedding + null class, label dropout), trained noise-conditional
classifiers, and guided sampling from them: checked against exact Gaussian mixtures whose classes are the
mixture components, and the CLI's bad-input lines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scorelab as sl
from helpers import invoke, one_line_error, tiny_config
from scorelab.classifier import CLASSIFIER_FILE, load_for_run, save_classifier, train_classifier, train_for_run
from scorelab.config import build_labels, load_config
from scorelab.data import data_labels, digits, get_dataset, toy_mixture
from scorelab.guidance import classifier_free, classifier_guided
from scorelab.models import MLPScoreNet, ScoreModel, UNet
from scorelab.objectives import conditioned, drop_labels, sde_dsm_loss
from scorelab.oracle import GaussianMixture
from scorelab.sde import VESDE, VPSDE
from scorelab.train import train

# three well separated components in 2-D, the requested one (0) the rarest
MIX = GaussianMixture(torch.tensor([0.2, 0.3, 0.5]), torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 4.0]]),
                      torch.full((3,), 0.5**2))


def mixture_with_labels(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.multinomial(MIX.weights, n, replacement=True, generator=g)
    x = MIX.means[k] + 0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x.float(), k


def share(x, k, gmm=MIX):
    """Fraction of samples whose most responsible component is k."""
    return float((gmm.responsibilities(x.double()).argmax(1) == k).double().mean())


# ------------------------------------------------------------------ networks


@pytest.mark.parametrize("net", [MLPScoreNet(2, hidden=16, depth=2, embed_dim=8, num_classes=3),
                                 UNet(1, base_channels=8, channel_mults=(1, 2), embed_dim=16, num_classes=3)])
def test_label_embedding_with_a_null_class(net):
    torch.manual_seed(0)
    x = torch.randn(4, *((2,) if isinstance(net, MLPScoreNet) else (1, 8, 8)))
    c = torch.zeros(4)
    null = net(x, c)
    assert torch.equal(null, net(x, c, torch.full((4,), 3)))  # y=None is the null class K
    a, b = net(x, c, 0), net(x, c, torch.tensor([0, 1, 0, 1]))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1]) and not torch.allclose(a, null)


def test_unconditional_networks_are_unchanged_and_refuse_labels():
    torch.manual_seed(0)
    net = MLPScoreNet(2, hidden=16, depth=2, embed_dim=8)
    assert net.num_classes == 0 and not any("label" in k for k in net.state_dict())
    model = ScoreModel(net, VPSDE())
    with pytest.raises(ValueError, match="not class-conditional"):
        model.score(torch.zeros(2, 2), 0.5, y=1)
    with pytest.raises(ValueError, match="num_classes"):
        MLPScoreNet(2, num_classes=1)


def test_drop_labels_rate_and_determinism():
    y = torch.zeros(20000, dtype=torch.long)
    d = drop_labels(y, 0.15, 10, torch.Generator().manual_seed(0))
    assert abs(float((d == 10).double().mean()) - 0.15) < 0.01 and set(d.unique().tolist()) == {0, 10}
    assert torch.equal(d, drop_labels(y, 0.15, 10, torch.Generator().manual_seed(0)))
    assert torch.equal(drop_labels(y, 0.0, 10), y)


def test_conditioned_objective_trains_the_conditional_score():
    # an exact conditional score (the component's own Gaussian) has a lower DSM loss with the right labels
    sde = VPSDE()

    class Exact:
        def __init__(self):
            self.sde = sde

        def score(self, x, t, y=None):
            comps = [GaussianMixture(torch.ones(1), MIX.means[k:k + 1], MIX.covs[k:k + 1]) for k in range(3)]
            return torch.stack([c.score(x, t, sde) for c in comps])[y, torch.arange(x.shape[0])]

    x, k = mixture_with_labels(4000)
    x = x.double()
    right = sde_dsm_loss(conditioned(Exact(), k), x, torch.Generator().manual_seed(0)).mean()
    wrong = sde_dsm_loss(conditioned(Exact(), (k + 1) % 3), x, torch.Generator().manual_seed(0)).mean()
    assert right < 0.5 * wrong


# ------------------------------------------------------------------ labels from the data


def test_labels_follow_the_examples():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    x, y = get_dataset("ring", n=2000, generator=g()), data_labels("ring", n=2000, generator=g())
    assert share(x, 0, toy_mixture("ring")) > 0 and bool((toy_mixture("ring").responsibilities(x.double())
                                                           .argmax(1) == y).all())
    full = digits()
    xs, ys = get_dataset("digits", n=300, generator=g()), data_labels("digits", n=300, generator=g())
    rows = [int((full.x == xi).flatten(1).all(1).nonzero()[0]) for xi in xs[:40]]
    assert torch.equal(full.y[rows], ys[:40])
    assert data_labels("swiss_roll", n=10) is None


def test_npy_labels_file(tmp_path):
    x = np.arange(50, dtype=np.float32).reshape(25, 2)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(25) % 3)
    cfg = load_config({"data": {"path": str(tmp_path / "x.npy"), "labels": str(tmp_path / "y.npy"), "n": 10}})
    xs, _ = sl.config.build_data(cfg["data"])
    y = build_labels(cfg["data"], xs.shape[0])
    assert torch.equal(y, (xs[:, 0] / 2).long() % 3)  # the label of row r is r % 3, and x[r, 0] = 2 r
    np.save(tmp_path / "bad.npy", np.arange(24))
    with pytest.raises(ValueError, match="24 labels but"):
        build_labels({**cfg["data"], "labels": str(tmp_path / "bad.npy")}, 10)
    np.save(tmp_path / "float.npy", np.zeros(25))
    with pytest.raises(ValueError, match="integer class labels"):
        build_labels({**cfg["data"], "labels": str(tmp_path / "float.npy")}, 10)


def test_config_checks(tmp_path):
    with pytest.raises(ValueError, match="label_dropout"):
        load_config({"data": {"name": "ring"}, "objective": {"label_dropout": 1.0}})
    with pytest.raises(ValueError, match="num_classes"):
        load_config({"data": {"name": "ring"}, "model": {"type": "energy", "num_classes": 3}})
    with pytest.raises(ValueError, match="needs class labels"):
        train({"data": {"name": "moons", "n": 64}, "model": {"num_classes": 2}}, tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="set model.num_classes=8"):
        train({"data": {"name": "ring", "n": 64}, "model": {"num_classes": 3}}, tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------ the must-shows


def test_trained_noisy_classifier_guides_into_the_requested_component():
    torch.set_num_threads(1)
    x, y = mixture_with_labels(4000)
    for sde in (VPSDE(), VESDE(sigma_max=10.0)):
        clf = train_classifier(x, y, sde=sde, steps=500, seed=0)
        shares = []
        for w in (0.0, 0.5, 1.0, 3.0):
            res = sl.sample(classifier_guided(MIX.score_fn(sde), clf, 0, w), sde, (1000, 2), nfe=100,
                            generator=torch.Generator().manual_seed(1))
            shares.append(share(res.x, 0))
        assert abs(shares[0] - 0.2) < 0.05, shares  # no guidance: the prior weight
        assert shares[2] >= 0.95 and shares[0] < shares[1] < shares[2] <= shares[3], shares


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    """A class-conditional VE run on the three-component mixture, labels from a .npy file (a few seconds)."""
    d = tmp_path_factory.mktemp("cond")
    x, y = mixture_with_labels(4000, seed=2)
    np.save(d / "x.npy", x.numpy())
    np.save(d / "y.npy", y.numpy())
    cfg = {"data": {"path": str(d / "x.npy"), "labels": str(d / "y.npy")},
           "sde": {"type": "ve", "sigma_max": 10.0},
           "model": {"type": "mlp", "hidden": 64, "depth": 3, "parameterization": "edm", "num_classes": 3},
           "objective": {"name": "sde_dsm", "noise": "lognormal", "p_mean": -0.8, "p_std": 1.4, "weighting": "edm",
                         "label_dropout": 0.2},
           "train": {"steps": 800, "batch_size": 256, "lr": 3e-3, "warmup": 50, "lr_schedule": "cosine",
                     "ema_power": 6.94, "log_every": 400, "ckpt_every": 800, "device": "cpu", "threads": 1}}
    train(cfg, d / "run", progress=False)
    return d


def test_classifier_free_guidance_from_one_trained_run(cond_run):
    run = sl.load(cond_run / "run")
    assert run.num_classes == 3
    shares = []
    for gamma in (0.0, 1.0, 3.0):  # uncond + gamma (cond - uncond): 0 unconditional, 1 the conditional
        score = classifier_free(lambda x, t: run.score(x, t, 0), run.score, gamma - 1)
        res = sl.sample(score, run.sde, (1000, 2), nfe=100, generator=torch.Generator().manual_seed(0))
        shares.append(share(res.x, 0))
    assert abs(shares[0] - 0.2) < 0.07, shares
    assert shares[1] >= 0.95 and shares[0] < shares[1] <= shares[2], shares
    with pytest.raises(ValueError, match="out of range"):
        run.score(torch.zeros(2, 2), 0.5, 3)


def test_conditional_run_resumes_exactly(tmp_path):
    x, y = mixture_with_labels(64)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    cfg = tiny_config(tmp_path / "x.npy")
    cfg["data"]["labels"] = str(tmp_path / "y.npy")
    cfg["model"]["num_classes"] = 3
    train(cfg, tmp_path / "full", progress=False)
    train({**cfg, "train": {**cfg["train"], "steps": 3}}, tmp_path / "part", progress=False)
    train(cfg, tmp_path / "part", resume=True, progress=False)
    a, b = sl.load(tmp_path / "full"), sl.load(tmp_path / "part")
    for (k, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), k


# ------------------------------------------------------------------ classifiers stored like runs, and the CLI


@pytest.fixture(scope="module")
def clf_dirs(cond_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("clf")
    for name, sets in (("ve", ()), ("vp", ("sde.type=vp",))):
        src = cond_run / "run" if not sets else str(cond_run / "run" / "config.yaml")
        clf, info = train_for_run(src, steps=300, overrides=sets)
        save_classifier(clf, d / name / CLASSIFIER_FILE, info)
    return d


def test_classifier_for_a_run_and_refused_for_another_process(cond_run, clf_dirs):
    run = sl.load(cond_run / "run")
    clf = load_for_run(clf_dirs / "ve", run)
    res = sl.sample(classifier_guided(run.score, clf, 0, 1.0), run.sde, (500, 2), nfe=100,
                    generator=torch.Generator().manual_seed(0))
    assert share(res.x, 0) >= 0.9
    with pytest.raises(ValueError, match="another process"):
        load_for_run(clf_dirs / "vp", run)


def test_cli_guided_sampling_and_bad_input(cond_run, clf_dirs, tmp_path):
    run = cond_run / "run"
    res = invoke("sample", run, "--class", "all", "-n", "50", "--nfe", "60", "--out", tmp_path / "all.npy", "--quiet")
    assert res.exit_code == 0, res.output
    x = torch.from_numpy(np.load(tmp_path / "all.npy"))
    assert x.shape == (150, 2)
    assert all(share(x[50 * k:50 * (k + 1)], k) >= 0.9 for k in range(3))
    res = invoke("sample", run, "--class", "0", "--classifier", clf_dirs / "ve", "--guidance", "2", "-n", "50",
                 "--nfe", "60", "--out", tmp_path / "c.npy", "--quiet")
    assert res.exit_code == 0 and share(torch.from_numpy(np.load(tmp_path / "c.npy")), 0) >= 0.9, res.output
    one_line_error(invoke("sample", run, "--class", "3", "--out", tmp_path / "x.npy"), "out of range", "3 classes")
    one_line_error(invoke("sample", run, "--class", "1", "--guidance", "-0.5", "--out", tmp_path / "x.npy"),
                   "--guidance", ">= 0")
    one_line_error(invoke("sample", run, "--guidance", "2", "--out", tmp_path / "x.npy"), "--class")
    one_line_error(invoke("sample", run, "--class", "0", "--classifier", clf_dirs / "vp", "--out",
                          tmp_path / "x.npy"), "another process")
    one_line_error(invoke("colorize", run, "--input", tmp_path / "c.npy", "--out", tmp_path / "x.npy"), "RGB")


def test_cli_run_without_labels(tmp_path):
    x = torch.randn(64, 2)
    np.save(tmp_path / "x.npy", x.numpy())
    train(tiny_config(tmp_path / "x.npy"), tmp_path / "run", progress=False)
    one_line_error(invoke("sample", tmp_path / "run", "--class", "0", "--out", tmp_path / "s.npy"), "no labels",
                   "--classifier")
    one_line_error(invoke("classifier", tmp_path / "run", "--out", tmp_path / "clf", "--steps", "2"),
                   "no class labels")
    np.save(tmp_path / "m.npy", np.ones((3,), dtype=np.float32))
    one_line_error(invoke("inpaint", tmp_path / "run", "--input", tmp_path / "x.npy", "--mask", tmp_path / "m.npy",
                          "--out", tmp_path / "f.npy"), "--mask")


def test_cli_colorize_rgb_and_grey_runs(tmp_path):
    imgs = torch.rand(16, 3, 4, 4)
    np.save(tmp_path / "rgb.npy", imgs.numpy())
    cfg = tiny_config(tmp_path / "rgb.npy", steps=2)
    train(cfg, tmp_path / "rgb", progress=False)
    np.save(tmp_path / "gray.npy", imgs[:2].mean(1).numpy())
    res = invoke("colorize", tmp_path / "rgb", "--input", tmp_path / "gray.npy", "--out", tmp_path / "c.npy",
                 "--nfe", "10", "--particles", "2")
    assert res.exit_code == 0, res.output
    out = np.load(tmp_path / "c.npy")
    assert out.shape == (2, 3, 4, 4) and np.allclose(out.mean(1), imgs[:2].mean(1).numpy(), atol=1e-5)
    np.save(tmp_path / "grey_imgs.npy", imgs[:, :1].numpy())
    train(tiny_config(tmp_path / "grey_imgs.npy", steps=2), tmp_path / "grey", progress=False)
    one_line_error(invoke("colorize", tmp_path / "grey", "--input", tmp_path / "gray.npy", "--out",
                          tmp_path / "d.npy"), "RGB", "grey")
    np.save(tmp_path / "wrong.npy", np.zeros((2, 5, 5), dtype=np.float32))
    one_line_error(invoke("colorize", tmp_path / "rgb", "--input", tmp_path / "wrong.npy", "--out",
                          tmp_path / "d.npy"), "--input")
