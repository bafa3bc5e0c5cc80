"""Classifier guidance against the mixture oracle: with the exact noisy classifier p_t(k | x) of a
Gaussian mixture's component label, the guided score is exactly the score of component k alone."""

import math

import pytest
import torch

from helpers import noisy_points, three_component_mixture
from scorelab.guidance import classifier_free, classifier_guided
from scorelab.oracle import GaussianMixture
from scorelab.sde import VESDE, VPSDE, SubVPSDE

SDES = [VESDE(0.01, 50.0), VPSDE(), SubVPSDE()]
IDS = ["ve", "vp", "subvp"]


def mixture(d=3, seed=0):
    return three_component_mixture(d, seed, jitter=0.1)


def exact_classifier(gmm, sde):
    """logits of p_t(k | x): the log-responsibilities (differentiable in x)."""
    return lambda x, t: torch.log(gmm.responsibilities(x, t, sde))


def component(gmm, k):
    return GaussianMixture(torch.ones(1), gmm.means[k:k + 1], gmm.covs[k:k + 1])


def noisy(gmm, sde, n=16, seed=1):
    return noisy_points(gmm, sde, n, seed, t_range=(0.02, 0.82))


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_guided_score_is_the_component_score(sde):
    gmm = mixture()
    x, t = noisy(gmm, sde)
    for k in range(gmm.K):
        guided = classifier_guided(gmm.score_fn(sde), exact_classifier(gmm, sde), k, scale=1.0)
        torch.testing.assert_close(guided(x, t), component(gmm, k).score(x, t, sde), atol=1e-8, rtol=1e-8)


def test_labels_as_tensor_pick_per_example_components():
    sde = VPSDE()
    gmm = mixture()
    x, t = noisy(gmm, sde, n=12)
    y = torch.arange(12) % 3
    got = classifier_guided(gmm.score_fn(sde), exact_classifier(gmm, sde), y)(x, t)
    want = torch.stack([component(gmm, int(y[i])).score(x[i:i + 1], t[i:i + 1], sde)[0] for i in range(12)])
    torch.testing.assert_close(got, want, atol=1e-8, rtol=1e-8)
    # a 0-d tensor label acts like the int
    a = classifier_guided(gmm.score_fn(sde), exact_classifier(gmm, sde), torch.tensor(2))(x, t)
    b = classifier_guided(gmm.score_fn(sde), exact_classifier(gmm, sde), 2)(x, t)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_scale_interpolates_and_zero_is_the_plain_score():
    sde = VESDE(0.01, 50.0)
    gmm = mixture()
    x, t = noisy(gmm, sde)
    s, clf = gmm.score_fn(sde), exact_classifier(gmm, sde)
    torch.testing.assert_close(classifier_guided(s, clf, 1, scale=0.0)(x, t), s(x, t), atol=0, rtol=0)
    # linear in the scale: s + w * grad log p(y|x)
    g1 = classifier_guided(s, clf, 1, scale=1.0)(x, t) - s(x, t)
    g3 = classifier_guided(s, clf, 1, scale=3.0)(x, t) - s(x, t)
    torch.testing.assert_close(g3, 3 * g1, atol=1e-9, rtol=1e-9)


def test_works_inside_no_grad_and_returns_a_detached_tensor():
    sde = VPSDE()
    gmm = mixture(d=2)
    x, t = noisy(gmm, sde, n=5)
    guided = classifier_guided(gmm.score_fn(sde), exact_classifier(gmm, sde), 0)
    with torch.no_grad():
        out = guided(x, t)
    assert not out.requires_grad and out.shape == x.shape and torch.isfinite(out).all()


def test_image_shaped_inputs():
    # x [B, C, H, W]; a linear classifier on the flattened image: grad log softmax(W x)[y] = W^T (e_y - p)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    W = torch.randn(5, 18, generator=g, dtype=torch.float64)

    def clf(x, t):
        return x.flatten(1) @ W.T

    y = torch.tensor([0, 4, 2, 2])
    got = classifier_guided(lambda x, t: torch.zeros_like(x), clf, y)(x, torch.full((4,), 0.5))
    p = torch.softmax(x.flatten(1) @ W.T, 1)
    want = ((torch.nn.functional.one_hot(y, 5) - p) @ W).reshape(x.shape)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_classifier_free_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    t = torch.full((6,), 0.3, dtype=torch.float64)

    def sc(x, t):
        return -x

    def su(x, t):
        return 2 * x

    torch.testing.assert_close(classifier_free(sc, su, 0.0)(x, t), -x)
    torch.testing.assert_close(classifier_free(sc, su, 2.0)(x, t), 3 * -x - 2 * (2 * x))


def test_bad_input():
    sde = VPSDE()
    gmm = mixture()
    x, t = noisy(gmm, sde, n=4)
    s, clf = gmm.score_fn(sde), exact_classifier(gmm, sde)
    with pytest.raises(ValueError, match="labels must lie in"):
        classifier_guided(s, clf, 3)(x, t)
    with pytest.raises(ValueError, match="labels must lie in"):
        classifier_guided(s, clf, torch.tensor([0, 1, 5, 2]))(x, t)
    with pytest.raises(ValueError, match=">= 0"):
        classifier_guided(s, clf, -1)
    with pytest.raises(ValueError, match=">= 0"):
        classifier_guided(s, clf, torch.tensor([0, -2]))
    with pytest.raises(ValueError, match="one label per example"):
        classifier_guided(s, clf, torch.tensor([0, 1]))(x, t)
    with pytest.raises(TypeError, match="integer class labels"):
        classifier_guided(s, clf, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[B, n_classes\]"):
        classifier_guided(s, lambda x, t: clf(x, t)[0], 0)(x, t)
    with pytest.raises(ValueError, match=r"\[B, n_classes\]"):
        classifier_guided(s, lambda x, t: clf(x, t)[:2], 0)(x, t)
    with pytest.raises(ValueError, match="finite"):
        classifier_guided(s, clf, 0, scale=float("nan"))
    with pytest.raises(TypeError, match="callable"):
        classifier_guided(s, "not a model", 0)
    with pytest.raises(ValueError, match="finite"):
        classifier_free(s, s, float("inf"))


def test_guided_sampling_lands_in_the_chosen_component():
    # End to end: sample with the guided score (the shared loop of scorelab.conditional with no constraint).
    from scorelab.conditional import sample_with_replacement

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    try:
        sde = VPSDE()
        gmm = mixture(d=2)
        for k, scale in [(0, 1.0), (0, 0.0)]:
            guided = classifier_guided(gmm.score_fn(sde), exact_classifier(gmm, sde), k, scale=scale)
            res = sample_with_replacement(guided, sde, (1500, 2), lambda x, t: x, nfe=200, dtype=torch.float64,
                                          generator=torch.Generator().manual_seed(0))
            frac = float((gmm.responsibilities(res.x).argmax(1) == k).double().mean())
            if scale == 1.0:
                assert frac > 0.97  # p(x | y=k) is component k alone (its overlap with the others is small)
            else:  # unguided: the prior weight 0.2, within 4 standard errors
                assert abs(frac - 0.2) < 4 * math.sqrt(0.16 / 1500)
    finally:
        torch.set_num_threads(n)
