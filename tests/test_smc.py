"""The default inpainting ("smc", twisted sequential Monte Carlo) against exact conditionals of Gaussian mixtures.

A Gaussian mixture conditioned on some coordinates is again a Gaussian mixture (``scorelab.smc.
conditional_mixture``, itself checked here against the 2-D closed form). The known part is placed between two
modes, where it is informative about the component: the replacement method gets the conditional weights wrong
there, a consistent method does not. Errors are ``scorelab.metrics`` moment KL and mode TV, with the noise floor
(the same metrics on as many exact draws) beside them.

The mixtures here were not used to design the method; the budget (nfe, particles) was raised on them until the
bound held (at nfe = 100 the model's discretised chain itself is off by up to 0.06 in mode TV; see
docs/controllable.md).
"""

import pytest
import torch

from scorelab.conditional import colorize, inpaint
from scorelab.metrics import mixture_error
from scorelab.oracle import GaussianMixture
from scorelab.sde import VESDE, VPSDE
from scorelab.smc import between_modes, conditional_mixture, effective_sample_size, systematic_resample

F64 = torch.float64


def mixture(d, seed, K=3):
    g = torch.Generator().manual_seed(seed)
    mu = 2.0 * torch.randn(K, d, generator=g, dtype=F64)
    A = torch.randn(K, d, d, generator=g, dtype=F64) / d**0.5
    S = 0.3 * (A @ A.transpose(1, 2)) + 0.1 * torch.eye(d, dtype=F64)
    return GaussianMixture(torch.rand(K, generator=g, dtype=F64) + 0.5, mu, S)


def impute(gmm, sde, known, y, n, seed=0, **kw):
    x = torch.zeros(n, gmm.d, dtype=F64)
    x[:, known] = y
    res = inpaint(gmm.score_fn(sde), sde, x, known.to(F64), generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(res.x[:, known], x[:, known])  # the known entries are the data, bit for bit
    return res


def floor(cond, n):
    return mixture_error(cond.sample(n, generator=torch.Generator().manual_seed(99)), cond)


def test_conditional_mixture_matches_the_2d_closed_form():
    gmm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0, -1.5], [1.0, 1.5]]),
                          torch.tensor([[[0.5, 0.3], [0.3, 0.4]], [[0.5, -0.2], [-0.2, 0.3]]]))
    x1 = 0.2
    mu, S = gmm.means, gmm.covs
    logw = torch.log(gmm.weights) - 0.5 * (x1 - mu[:, 0]) ** 2 / S[:, 0, 0] - 0.5 * torch.log(S[:, 0, 0])
    w, m, C = conditional_mixture(gmm, torch.tensor([True, False]), torch.tensor([x1]))
    torch.testing.assert_close(w, torch.softmax(logw, 0))
    torch.testing.assert_close(m[:, 0], mu[:, 1] + S[:, 1, 0] / S[:, 0, 0] * (x1 - mu[:, 0]))
    torch.testing.assert_close(C[:, 0, 0], S[:, 1, 1] - S[:, 1, 0] ** 2 / S[:, 0, 0])


# (d, seed, known coordinates, process): mixtures not used to set the method up; the known part between modes
CASES = [(2, 11, 1, VPSDE()), (3, 12, 1, VESDE(0.01, 20.0)), (4, 13, 2, VPSDE())]
N, NFE, PARTICLES = 600, 400, 16  # the stated budget: 400 score evaluations per particle (the default), 16 particles


@pytest.mark.parametrize("d,seed,k,sde", CASES, ids=[f"d{c[0]}-{type(c[3]).__name__}" for c in CASES])
def test_default_inpaint_matches_the_exact_conditional_and_replacement_does_not(d, seed, k, sde):
    gmm = mixture(d, seed)
    known = torch.arange(d) < k
    y, cond = between_modes(gmm, known)
    smc = mixture_error(impute(gmm, sde, known, y, N, nfe=NFE, particles=PARTICLES).x[:, ~known], cond)
    base = mixture_error(impute(gmm, sde, known, y, N, method="replacement", nfe=NFE).x[:, ~known], cond)
    fl = floor(cond, N)
    msg = f"smc {smc}, replacement {base}, floor {fl}"
    assert smc.mode_tv < 0.05 and smc.moment_kl < 0.2, msg
    # measured (smc | replacement | floor of 600 exact draws), mode TV: d2 0.018 | 0.30 | 0.029,
    # d3 0.011 | 0.099 | 0.029, d4 0.002 | 0.070 | 0.030; moment KL of smc 0.012, 0.049, 0.012
    assert base.mode_tv > smc.mode_tv + 0.04, msg  # the baseline is visibly worse


def test_error_falls_as_the_particles_grow():
    gmm = mixture(4, 21)
    known = torch.arange(4) < 2
    y, cond = between_modes(gmm, known, share=0.3)
    sde = VPSDE()
    errs = [mixture_error(impute(gmm, sde, known, y, 500, nfe=100, particles=p).x[:, ~known], cond)
            for p in (1, 8, 64)]
    # one particle is the model's chain with the known part tilted in, no reweighting at all (its mode weights
    # are those of the replacement method); then the error falls with the particles
    assert errs[0].moment_kl > errs[1].moment_kl > errs[2].moment_kl, errs
    assert errs[0].mode_tv > 0.2 and errs[2].mode_tv < errs[0].mode_tv / 3, errs


def test_same_seed_same_numbers_and_images_with_masks():
    sde = VESDE(0.01, 10.0)
    gmm = GaussianMixture(torch.ones(2), torch.randn(2, 12, generator=torch.Generator().manual_seed(0)),
                          torch.ones(2))
    x = gmm.sample(3, generator=torch.Generator().manual_seed(1)).reshape(3, 3, 2, 2)
    mask = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(2)) > 0.5
    runs = [inpaint(gmm.score_fn(sde), sde, x, mask, nfe=20, particles=8,
                    generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0].x, runs[1].x) and runs[0].nfe == 20 and runs[0].particles == 8
    known = mask.expand_as(x)
    assert torch.equal(runs[0].x[known], x[known]) and not torch.equal(runs[0].x[~known], x[~known])
    other = inpaint(gmm.score_fn(sde), sde, x, mask, nfe=20, particles=8, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(other.x, runs[0].x)


def test_nfe_counts_batched_calls_one_per_step():
    sde = VPSDE()
    shapes = []

    def score(x, t):
        shapes.append(tuple(x.shape))
        return -x

    x = torch.zeros(5, 3)
    res = inpaint(score, sde, x, torch.tensor([1.0, 0.0, 1.0]), nfe=7, particles=4, generator=torch.Generator())
    assert res.nfe == res.steps == len(shapes) == 7 and set(shapes) == {(20, 3)}


def test_systematic_resampling_follows_the_weights():
    logw = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 0.0]], dtype=F64))
    counts = torch.zeros(2, 4, dtype=F64)
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        idx = systematic_resample(logw, g)
        counts += torch.nn.functional.one_hot(idx, 4).sum(1)
    torch.testing.assert_close(counts / counts.sum(1, keepdim=True), logw.exp(), atol=0.01, rtol=0)
    # systematic: each index appears floor(P w) or ceil(P w) times
    idx = systematic_resample(torch.log(torch.tensor([[0.5, 0.25, 0.25, 0.0]], dtype=F64)), g)
    assert sorted(idx[0].tolist()) == [0, 0, 1, 2]
    torch.testing.assert_close(effective_sample_size(logw), torch.tensor([1 / 0.3, 1.0], dtype=F64))


def test_colorize_uses_the_consistent_method_and_keeps_the_gray_image():
    sde = VPSDE()
    gen = torch.Generator().manual_seed(0)
    gmm = GaussianMixture(torch.ones(3), torch.randn(3, 12, generator=gen, dtype=F64), 0.3 * torch.ones(3))
    gray = gmm.sample(4, generator=gen).reshape(4, 3, 2, 2).mean(1, keepdim=True)
    res = colorize(gmm.score_fn(sde), sde, gray, generator=gen, nfe=20, particles=4)
    assert res.particles == 4 and res.nfe == 20
    torch.testing.assert_close(res.x.mean(1, keepdim=True), gray, atol=1e-13, rtol=0)


def test_bad_smc_options_say_what_to_do():
    sde = VPSDE()
    x = torch.zeros(2, 2)
    mask = torch.tensor([1.0, 0.0])
    s = lambda x, t: -x  # noqa: E731
    for kw, match in [({"particles": 0}, "particles"), ({"ess": 1.5}, "ess"), ({"eps": 0.0}, "eps"),
                      ({"grid": "cosine"}, "grid"), ({"nfe": 0}, "nfe")]:
        with pytest.raises(ValueError, match=match):
            inpaint(s, sde, x, mask, **{"nfe": 5, **kw})
    with pytest.raises(TypeError, match="resample belongs to method='pc'"):
        inpaint(s, sde, x, mask, nfe=5, resample=2)


def test_images_follow_the_same_path_as_vectors():
    """[B, C, H, W] images with a pixel mask give the numbers of the flat [B, d] problem with the flat mask
    (so the image path inherits the vector path's accuracy above)."""
    gmm = mixture(8, 31)
    mask = torch.zeros(2, 2, 2, dtype=torch.bool)
    mask[:, 0, :] = True
    known = mask.reshape(-1)
    y, _ = between_modes(gmm, known)
    sde = VPSDE()
    x = torch.zeros(50, 8, dtype=F64)
    x[:, known] = y
    kw = {"nfe": 30, "particles": 8}
    img = inpaint(gmm.score_fn(sde), sde, x.reshape(50, 2, 2, 2), mask, generator=torch.Generator().manual_seed(0),
                  **kw)
    flat = inpaint(gmm.score_fn(sde), sde, x, known, generator=torch.Generator().manual_seed(0), **kw)
    assert img.x.shape == (50, 2, 2, 2) and img.resampled == flat.resampled
    torch.testing.assert_close(img.x.reshape(50, 8), flat.x, atol=1e-12, rtol=0)
