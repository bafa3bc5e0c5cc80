"""The training recipe: EDM preconditioning kept in the run, log-normal noise levels, lr schedules, power EMA."""

import math

import pytest
import torch

import scorelab as sl
from scorelab.config import load_config
from scorelab.models import MLPScoreNet, ScoreModel
from scorelab.objectives import sde_dsm_loss
from scorelab.sde import VESDE, VPSDE, SubVPSDE
from scorelab.train import ema_beta, scheduled_lr, train


def _cfg(**train):
    return load_config("toy", ["data.n=300", "model.hidden=16", "model.depth=1", "train.steps=12",
                               "train.batch_size=32", "train.log_every=4", "train.ckpt_every=6",
                               "train.tensorboard=false", *(f"train.{k}={v}" for k, v in train.items())])


def test_edm_run_keeps_the_measured_sigma_data_and_reloads_the_same_model(tmp_path):
    cfg = _cfg()
    assert cfg["model"]["parameterization"] == "edm" and cfg["model"]["sigma_data"] is None
    res = train(cfg, tmp_path / "run", progress=False)
    from scorelab.config import build_data
    data, _ = build_data(cfg["data"])
    sd = float(data.double().pow(2).mean().sqrt())
    assert res.model.sigma_data == pytest.approx(sd, rel=1e-12) and sd > 2  # the ring has radius 4
    run = sl.load(tmp_path / "run")
    assert run.config["model"]["sigma_data"] == pytest.approx(sd, rel=1e-12)
    x, t = torch.randn(5, 2), torch.full((5,), 0.3)
    torch.testing.assert_close(run.score(x, t), res.ema.score(x, t).detach())
    # resuming with the original config (sigma_data still null) continues the same run
    cfg2 = _cfg()
    cfg2["train"]["steps"] = 18
    train(cfg2, tmp_path / "run", resume=True, progress=False)
    assert sl.load(tmp_path / "run").step == 18


def test_lr_schedules_and_power_ema():
    tc = {"lr": 1.0, "warmup": 10, "steps": 110, "lr_schedule": "cosine"}
    assert scheduled_lr(0, tc) == pytest.approx(0.1)
    assert scheduled_lr(9, tc) == pytest.approx(1.0)
    assert scheduled_lr(60, tc) == pytest.approx(0.5)          # half way through the decay
    assert scheduled_lr(110, tc) == pytest.approx(0.0, abs=1e-12)
    tc["lr_schedule"] = "inv_sqrt"
    assert scheduled_lr(39, tc) == pytest.approx(0.5)          # 1/sqrt(40/10)
    tc["lr_schedule"] = "constant"
    assert scheduled_lr(100, tc) == 1.0
    assert ema_beta(5, {"ema_decay": 0.9, "ema_power": None}) == 0.9
    # power EMA (Karras et al. 2024): beta_k = (1 - 1/(k+1))^(gamma+1); the first update copies the weights
    assert ema_beta(0, {"ema_decay": 0.9, "ema_power": 6.94}) == 0.0
    assert ema_beta(99, {"ema_decay": 0.9, "ema_power": 6.94}) == pytest.approx(0.99**7.94)


def test_power_ema_averages_a_fixed_fraction_of_the_run(tmp_path):
    res = train(_cfg(ema_power=0.0), tmp_path / "run", progress=False)  # gamma = 0: the running mean
    assert res.step == 12
    with pytest.raises(ValueError, match="lr_schedule"):
        _cfg(lr_schedule="linear")


@pytest.mark.parametrize("sde", [VESDE(0.01, 10.0), VPSDE(), SubVPSDE()], ids=repr)
def test_lognormal_times_follow_the_noise_distribution(sde):
    """t drawn by noise="lognormal" has ln(s/m) ~ N(p_mean, p_std^2) inside the process's range."""
    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sde, self.t = sde, None

        def score(self, x, t):
            self.t = t
            return torch.zeros_like(x)

    rec = Recorder()
    sde_dsm_loss(rec, torch.zeros(20000, 1), torch.Generator().manual_seed(0), noise="lognormal", p_mean=-1.0,
                 p_std=0.5)
    lns = torch.log(sde.marginal_std(rec.t.double()) / sde.marginal_scale(rec.t.double()))
    assert float(lns.mean()) == pytest.approx(-1.0, abs=0.02) and float(lns.std()) == pytest.approx(0.5, abs=0.02)


def test_edm_weighting_is_the_denoiser_loss_over_c_out_squared():
    """lambda = 1/c_out^2 on |D - x0|^2 (Karras et al. 2022), D = E[x0 | x_t] via Tweedie, on the same draws."""
    torch.manual_seed(0)
    sde = VPSDE()
    model = ScoreModel(MLPScoreNet(2, hidden=16, depth=1), sde, "edm", sigma_data=1.3).double()
    x0 = torch.randn(64, 2, dtype=torch.float64)
    loss = sde_dsm_loss(model, x0, torch.Generator().manual_seed(1), noise="lognormal", weighting="edm")
    g = torch.Generator().manual_seed(1)
    n = torch.randn(64, generator=g, dtype=torch.float64)
    t = sde.t_from_std_ratio(torch.exp(-1.2 + 1.2 * n)).clamp(1e-5, 1.0)
    z = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    m, s = sde.marginal_scale(t)[:, None], sde.marginal_std(t)[:, None]
    xt = m * x0 + s * z
    sig = s / m
    denoised = (xt + s**2 * model.score(xt, t)) / m
    c_out2 = sig**2 * 1.3**2 / (sig**2 + 1.3**2)
    torch.testing.assert_close(loss, 0.5 * ((denoised - x0) ** 2 / c_out2).sum(1), rtol=1e-6, atol=1e-8)
    assert math.isfinite(float(loss.detach().mean()))
