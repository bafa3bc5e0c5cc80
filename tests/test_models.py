"""Score networks, the ScoreModel parameterisations and their conversions."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scorelab.models import (
    PARAMETERIZATIONS,
    EnergyNet,
    MLPScoreNet,
    ScoreModel,
    UNet,
    eps_to_score,
    score_to_eps,
    score_to_x0,
    x0_to_score,
)
from scorelab.objectives import OBJECTIVES
from scorelab.oracle import GaussianMixture
from scorelab.sde import VESDE, VPSDE, SubVPSDE

D64 = torch.float64


def gmm2():
    return GaussianMixture([1.0, 2.0, 3.0], [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]],
                           [[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.4]], [[0.1, 0.0], [0.0, 0.1]]])


# ---------------------------------------------------------------- networks
@pytest.mark.parametrize("shape", [(5, 2), (5, 16), (5, 4, 4)])
def test_mlp_shapes(shape):
    torch.manual_seed(0)
    net = MLPScoreNet(dim=math.prod(shape[1:]), hidden=32, depth=2, embed_dim=8)
    out = net(torch.randn(shape), torch.randn(shape[0]))
    assert out.shape == shape
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("shape,mults", [((3, 1, 8, 8), (1, 2)), ((3, 1, 28, 28), (1, 2)),
                                         ((2, 1, 28, 28), (1, 2, 2)), ((2, 3, 8, 8), (1, 2, 2))])
def test_unet_shapes(shape, mults):
    torch.manual_seed(0)
    net = UNet(in_channels=shape[1], base_channels=8, channel_mults=mults, embed_dim=16)
    out = net(torch.randn(shape), torch.randn(shape[0]))
    assert out.shape == shape
    assert bool(torch.isfinite(out).all())


def test_unet_examples_are_independent():
    # GroupNorm normalises within an example, so one image's output does not depend on the rest of the batch
    torch.manual_seed(0)
    net = UNet(base_channels=8, embed_dim=16)
    x, c = torch.randn(4, 1, 8, 8), torch.randn(4)
    torch.testing.assert_close(net(x, c)[:1], net(x[:1], c[:1]), rtol=1e-5, atol=1e-5)


def test_energy_shape_and_score_is_minus_grad():
    torch.manual_seed(0)
    net = EnergyNet(dim=3, hidden=16, depth=2, embed_dim=8).double()
    model = ScoreModel(net, VPSDE(), parameterization="energy")
    x, t = torch.randn(6, 3, dtype=D64), torch.rand(6, dtype=D64) * 0.9 + 0.05
    assert model.energy(x, t).shape == (6,)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xg, model.conditioning(t)).sum(), xg)
    torch.testing.assert_close(model.score(x, t), -g)
    with torch.no_grad():  # sampling: the score is still available, without a graph
        s = model.score(x, t)
    assert not s.requires_grad
    torch.testing.assert_close(s, -g)


def test_fourier_features_are_saved_and_reloaded():
    torch.manual_seed(0)
    a = MLPScoreNet(2, hidden=16)
    assert any(k.endswith("embed.W") for k in a.state_dict())
    torch.manual_seed(1)
    b = MLPScoreNet(2, hidden=16)
    x, c = torch.randn(4, 2), torch.randn(4)
    assert not torch.allclose(a(x, c), b(x, c))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x, c), b(x, c))


# ---------------------------------------------------------------- conversions and parameterisations
SDES = [VESDE(0.01, 10.0), VPSDE(), SubVPSDE()]


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_conversions_are_mutual_inverses_and_match_the_oracle(sde):
    gmm = gmm2()
    g = torch.Generator().manual_seed(0)
    t = torch.rand(64, generator=g, dtype=D64) * 0.98 + 0.01
    x = gmm.sample(64, t=t, sde=sde, generator=g)
    score = gmm.score(x, t, sde)
    torch.testing.assert_close(eps_to_score(score_to_eps(score, x, t, sde), x, t, sde), score)
    torch.testing.assert_close(x0_to_score(score_to_x0(score, x, t, sde), x, t, sde), score)
    r = torch.randn(64, 2, generator=g, dtype=D64)  # and on arbitrary fields, not only true scores
    torch.testing.assert_close(score_to_eps(eps_to_score(r, x, t, sde), x, t, sde), r)
    torch.testing.assert_close(score_to_x0(x0_to_score(r, x, t, sde), x, t, sde), r)
    # Tweedie: x0 of the true score is the posterior mean; eps is E[z | x_t] = (x - m E[x_0 | x_t]) / s
    x0 = gmm.posterior_mean(x, t, sde)
    torch.testing.assert_close(score_to_x0(score, x, t, sde), x0)
    m, s = sde.marginal_scale(t)[:, None], sde.marginal_std(t)[:, None]
    torch.testing.assert_close(score_to_eps(score, x, t, sde), (x - m * x0) / s)


class OracleNet(torch.nn.Module):
    """Predicts whatever a parameterisation asks for, exactly, from the oracle (recovering t from c = log s)."""

    def __init__(self, gmm, sde, target):
        super().__init__()
        self.gmm, self.sde, self.target = gmm, sde, target

    def forward(self, x, c):
        s = torch.exp(c)
        m = torch.sqrt(1 - s**2) if isinstance(self.sde, VPSDE) else torch.ones_like(s)  # VP: m^2 + s^2 = 1
        t = self.sde.t_from_std_ratio(s / m)
        score = self.gmm.score(x, t, self.sde)
        if self.target == "score":
            return s[:, None] * score
        if self.target == "eps":
            return -s[:, None] * score
        return self.gmm.posterior_mean(x, t, self.sde)


@pytest.mark.parametrize("param", ["score", "eps", "x0"])
@pytest.mark.parametrize("sde", [VESDE(0.01, 10.0), VPSDE()], ids=repr)
def test_each_parameterization_recovers_the_score(param, sde):
    gmm = gmm2()
    model = ScoreModel(OracleNet(gmm, sde, param), sde, parameterization=param)
    g = torch.Generator().manual_seed(1)
    t = torch.rand(32, generator=g, dtype=D64) * 0.9 + 0.05
    x = gmm.sample(32, t=t, sde=sde, generator=g)
    torch.testing.assert_close(model.score(x, t), gmm.score(x, t, sde), rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(model(x, float(t[0])), gmm.score(x, t[:1].expand(32), sde), rtol=1e-7, atol=1e-7)


def test_score_parameterization_scales_by_one_over_std():
    torch.manual_seed(0)
    sde = VESDE()
    net = MLPScoreNet(2, hidden=16).double()
    model = ScoreModel(net, sde)
    x, t = torch.randn(5, 2, dtype=D64), torch.full((5,), 0.3, dtype=D64)
    torch.testing.assert_close(model.score(x, t), net(x, torch.log(sde.marginal_std(t))) / sde.marginal_std(t)[:, None])


# ---------------------------------------------------------------- training through the objectives
def _one_step(model, name, x, **opts):
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss = OBJECTIVES[name](model, x, torch.Generator().manual_seed(0), **opts).mean()
    opt.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(gr is not None and bool(torch.isfinite(gr).all()) for gr in grads), name
    assert sum(float(gr.abs().sum()) for gr in grads) > 0, name
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)), name


@pytest.mark.parametrize("name,opts", [("ism", {"t": 0.05}), ("ssm", {"t": 0.05, "n_projections": 2}),
                                       ("ssm_vr", {"t": 0.05}), ("dsm", {"sigma": 0.2}), ("sde_dsm", {}),
                                       ("ncsn", {}), ("ddpm", {})])
def test_energy_model_trains_by_double_backprop(name, opts):
    torch.manual_seed(0)
    model = ScoreModel(EnergyNet(dim=2, hidden=16, depth=2, embed_dim=8), VESDE(0.01, 10.0), "energy")
    _one_step(model, name, torch.randn(16, 2), **opts)


@pytest.mark.parametrize("param", PARAMETERIZATIONS[:3])
def test_mlp_model_trains_with_ism_and_dsm(param):
    torch.manual_seed(0)
    model = ScoreModel(MLPScoreNet(2, hidden=16, depth=2, embed_dim=8), VPSDE(), param)
    _one_step(model, "ism", torch.randn(16, 2), t=0.05)
    _one_step(model, "sde_dsm", torch.randn(16, 2))


def test_unet_model_trains_with_dsm():
    torch.manual_seed(0)
    model = ScoreModel(UNet(base_channels=8, embed_dim=16), VESDE())
    _one_step(model, "sde_dsm", torch.randn(2, 1, 8, 8))


# ---------------------------------------------------------------- bad input
def test_bad_input():
    with pytest.raises(ValueError, match="choose one of.*energy"):
        ScoreModel(MLPScoreNet(2), VESDE(), parameterization="v")
    with pytest.raises(TypeError, match="sde"):
        ScoreModel(MLPScoreNet(2), "ve")
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        MLPScoreNet(2)(torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\[B, 5\]"):
        ScoreModel(EnergyNet(5), VESDE(), "energy").score(torch.randn(4, 3), 0.5)
    with pytest.raises(ValueError, match="in_channels"):
        UNet(in_channels=1, base_channels=8)(torch.randn(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="parameterization='energy'"):
        ScoreModel(EnergyNet(2), VESDE()).score(torch.randn(4, 2), 0.5)
    with pytest.raises(ValueError, match="EnergyNet"):
        ScoreModel(MLPScoreNet(2), VESDE(), "energy").score(torch.randn(4, 2), 0.5)
    with pytest.raises(ValueError, match="positive integer"):
        MLPScoreNet(0)
    with pytest.raises(ValueError, match="channel_mults"):
        UNet(channel_mults=())
    with pytest.raises(ValueError, match="even"):
        MLPScoreNet(2, embed_dim=7)


# ---------------------------------------------------------------- properties

@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 5), dims=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       param=st.sampled_from(["score", "eps", "x0"]), t=st.floats(1e-4, 1.0))
def test_score_model_shape_dtype_and_determinism(batch, dims, param, t):
    torch.manual_seed(0)
    net = MLPScoreNet(math.prod(dims), hidden=8, depth=1, embed_dim=4).double()
    model = ScoreModel(net, VPSDE(), param)
    x = torch.randn(batch, *dims, dtype=D64)
    out = model.score(x, t)
    assert out.shape == x.shape and out.dtype == D64
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(model(x, torch.full((batch,), t, dtype=D64)), out)


# ---------------------------------------------------------------- EDM preconditioning
class EDMOracleNet(torch.nn.Module):
    """The network output F* = (E[x0 | y] - c_skip y) / c_out that makes EDM's denoiser exact, recovering sigma and
    y from what the network is given (c_in y, ln(sigma)/4)."""

    def __init__(self, gmm, sde, sigma_data):
        super().__init__()
        self.gmm, self.sde, self.sd = gmm, sde, sigma_data

    def forward(self, x_in, c):
        sig = torch.exp(4 * c)[:, None]
        norm = torch.sqrt(sig**2 + self.sd**2)
        y = x_in * norm
        t = self.sde.t_from_std_ratio(sig[:, 0])
        x0 = self.gmm.posterior_mean(self.sde.marginal_scale(t)[:, None] * y, t, self.sde)
        return (x0 - self.sd**2 / norm**2 * y) * norm / (sig * self.sd)


@pytest.mark.parametrize("sde", [VESDE(0.01, 10.0), VPSDE(), SubVPSDE(), VPSDE(schedule="cosine")], ids=repr)
def test_edm_parameterization_with_the_optimal_network_is_the_oracle_score(sde):
    gmm = gmm2()
    model = ScoreModel(EDMOracleNet(gmm, sde, 1.7), sde, parameterization="edm", sigma_data=1.7)
    g = torch.Generator().manual_seed(2)
    t = torch.rand(64, generator=g, dtype=D64) * 0.95 + 0.02
    x = gmm.sample(64, t=t, sde=sde, generator=g)
    torch.testing.assert_close(model.score(x, t), gmm.score(x, t, sde), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sde", [VESDE(1e-4, 1e3), VPSDE(), SubVPSDE()], ids=repr)
def test_edm_score_is_finite_and_sigma_data_kept_at_tiny_and_huge_noise(sde):
    torch.manual_seed(0)
    model = ScoreModel(MLPScoreNet(2, hidden=16, depth=2, embed_dim=8), sde, "edm", sigma_data=2.0)
    assert model.sigma_data == 2.0 and "sigma_data=2" in repr(model)
    for t in (1e-5, 1e-3, 0.5, 1.0):
        x = torch.randn(8, 2) * 3
        out = model.score(x, t)
        assert bool(torch.isfinite(out).all()), t
    # an untrained (zero-output) network gives the score of N(0, sigma_data^2) smoothed to p_t, exactly
    torch.nn.init.zeros_(model.net.mlp.out.weight)
    torch.nn.init.zeros_(model.net.mlp.out.bias)
    t = torch.full((4,), 0.3, dtype=D64)
    model.double()
    x = torch.randn(4, 2, dtype=D64)
    m, s = sde.marginal_scale(t)[:, None], sde.marginal_std(t)[:, None]
    torch.testing.assert_close(model.score(x, t), -x / (m**2 * 4.0 + s**2))


def test_edm_model_trains_with_lognormal_edm_loss():
    torch.manual_seed(0)
    model = ScoreModel(MLPScoreNet(2, hidden=16, depth=2, embed_dim=8), VPSDE(), "edm", sigma_data=1.0)
    _one_step(model, "sde_dsm", torch.randn(16, 2), noise="lognormal", weighting="edm")
    with pytest.raises(ValueError, match="sigma_data"):
        ScoreModel(MLPScoreNet(2), VESDE(), "edm", sigma_data=-1.0)
