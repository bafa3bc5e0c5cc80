"""encode/decode/interpolate through the probability-flow ODE, on the exact score of a mixture."""

import math

import pytest
import torch

from scorelab.latent import decode, encode, interpolate, round_trip_error, slerp
from scorelab.oracle import GaussianMixture
from scorelab.sde import VESDE, VPSDE, SubVPSDE


def mixture(d=2):
    g = torch.Generator().manual_seed(0)
    means = 2 * torch.randn(3, d, generator=g, dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.3, 0.3, 0.4]), means, torch.full((3,), 0.1, dtype=torch.float64))


@pytest.mark.parametrize("sde", [VESDE(0.01, 50.0), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_round_trip(sde):
    gmm = mixture()
    x = gmm.sample(16, generator=torch.Generator().manual_seed(1))
    err = round_trip_error(gmm.score_fn(sde), sde, x)
    assert float(err.max()) < 1e-3, err


def test_latents_follow_the_prior_and_decode_to_data():
    sde = VPSDE()
    gmm = mixture()
    s = gmm.score_fn(sde)
    x = gmm.sample(400, generator=torch.Generator().manual_seed(2))
    z, nfe = encode(s, sde, x, rtol=1e-4, atol=1e-4, return_nfe=True)
    assert nfe > 0 and z.shape == x.shape
    # p_T is N(m(T) mu, ...) with m(T) ~ 0.0066: the latents are standard normal to sampling accuracy
    assert float(z.mean(0).abs().max()) < 4 / math.sqrt(400)
    assert float((z.std(0) - 1).abs().max()) < 0.15
    # decoding prior draws gives data: mean log p_0 of decoded draws matches that of true samples
    zp = sde.prior_sampling((400, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    xd = decode(s, sde, zp, rtol=1e-4, atol=1e-4)
    lp_model, lp_true = gmm.log_prob(xd, 1e-3, sde).mean(), gmm.log_prob(x, 1e-3, sde).mean()
    assert abs(float(lp_model - lp_true)) < 0.25


def test_fixed_step_round_trip_improves_with_steps():
    sde = VPSDE()
    gmm = mixture()
    x = gmm.sample(8, generator=torch.Generator().manual_seed(4))
    e_few = round_trip_error(gmm.score_fn(sde), sde, x, solver="euler", steps=20).mean()
    e_many = round_trip_error(gmm.score_fn(sde), sde, x, solver="rk4", steps=50).mean()
    assert e_many < e_few / 10


def test_slerp():
    g = torch.Generator().manual_seed(5)
    za, zb = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    zb = zb / zb.norm(dim=1, keepdim=True) * za.norm(dim=1, keepdim=True)
    path = slerp(za, zb, torch.linspace(0, 1, 7, dtype=torch.float64))
    assert path.shape == (7, 3, 4)
    torch.testing.assert_close(path[0], za)
    torch.testing.assert_close(path[-1], zb)
    # equal norms stay on the sphere; a straight line would dip inside it
    torch.testing.assert_close(path.norm(dim=-1), za.norm(dim=1).expand(7, 3))
    # parallel vectors: falls back to the straight line, no NaN
    par = slerp(za, 2 * za, torch.tensor([0.5], dtype=torch.float64))
    torch.testing.assert_close(par[0], 1.5 * za)


def test_interpolate_ends_at_the_data():
    sde = VPSDE()
    gmm = mixture()
    x = gmm.sample(4, generator=torch.Generator().manual_seed(6))
    path = interpolate(gmm.score_fn(sde), sde, x[:2], x[2:], n=5)
    assert path.shape == (5, 2, 2)
    torch.testing.assert_close(path[0], x[:2], atol=1e-3, rtol=0)
    torch.testing.assert_close(path[-1], x[2:], atol=1e-3, rtol=0)
    assert bool(torch.isfinite(path).all())


def test_bad_input():
    sde = VPSDE()
    s = mixture().score_fn(sde)
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="n "):
        interpolate(s, sde, x, x, n=1)
    with pytest.raises(ValueError, match="same shape"):
        interpolate(s, sde, x, x[:1], n=3)
    with pytest.raises(ValueError, match="non-finite"):
        encode(s, sde, torch.full((1, 2), float("inf")))
    with pytest.raises(ValueError, match="solver"):
        decode(s, sde, x, solver="verlet")
    with pytest.raises(ValueError, match="steps"):
        encode(s, sde, x, solver="rk4")
    with pytest.raises(ValueError, match=r"use one of \['euler', 'midpoint', 'heun', 'heun3', 'rk4'\]\.$"):
        encode(s, sde, x, steps=4)  # the names, not the tableaux
    with pytest.raises(TypeError, match="score_fn"):
        encode(None, sde, x)
