"""scorelab.interop against the exact mixture oracle and the real peer packages (k-diffusion, diffusers).

The oracle gives the exact denoiser E[x_0 | x], the exact eps and the exact score of every process, so each
adapter is checked to round-off; the peers' samplers driven through the adapters are checked against scorelab's
own samplers on the same initial noise.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import scorelab as sl
from scorelab import interop
from scorelab._extras import MissingExtraError

F64 = torch.float64
PROCESSES = {"ve": lambda: sl.VESDE(0.002, 200.0), "vp": lambda: sl.VPSDE(), "subvp": lambda: sl.SubVPSDE()}


@pytest.fixture(scope="module")
def gmm():
    return sl.data.toy_mixture("ring")


def _x(n=6, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _ddpm_alphas_cumprod(n=1000, beta_start=1e-4, beta_end=0.02):
    """DDPM's linear-beta alphas_cumprod, as diffusers' DDPMScheduler computes it (float32 betas)."""
    betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, 0)


# --------------------------------------------------------------------------- exact identities (no peers needed)
@pytest.mark.parametrize("name", list(PROCESSES))
def test_denoiser_is_the_posterior_mean(gmm, name):
    sde, ve = PROCESSES[name](), sl.VESDE(0.002, 200.0)
    x, sig = _x(), torch.tensor([0.01, 0.1, 0.5, 1.0, 3.0, 10.0], dtype=F64)
    d = interop.k_diffusion_denoiser(gmm.score_fn(sde), sde)(x, sig)
    truth = gmm.posterior_mean(x, ve.t_from_std_ratio(sig), ve)  # x / m = x_0 + sigma z is VE at that sigma
    torch.testing.assert_close(d, truth, rtol=1e-10, atol=1e-10)
    d0 = interop.k_diffusion_denoiser(gmm.score_fn(sde), sde)(x, torch.tensor(0.5, dtype=F64))  # 0-d sigma
    torch.testing.assert_close(d0, gmm.posterior_mean(x, ve.t_from_std_ratio(torch.tensor(0.5, dtype=F64)), ve))


@pytest.mark.parametrize("src,dst", [("vp", "subvp"), ("ve", "vp"), ("subvp", "ve")])
def test_score_from_denoiser_recovers_the_score_of_another_process(gmm, src, dst):
    a, b = PROCESSES[src](), PROCESSES[dst]()
    score_fn, sde = interop.score_from_denoiser(interop.k_diffusion_denoiser(gmm.score_fn(a), a), b)
    t = torch.tensor([0.05, 0.1, 0.3, 0.5, 0.8, 0.95], dtype=F64)
    assert sde is b
    torch.testing.assert_close(score_fn(_x(), t), gmm.score(_x(), t, b), rtol=1e-8, atol=1e-8)
    assert isinstance(interop.score_from_denoiser(lambda x, s: x)[1], sl.VESDE)  # EDM's range by default


@pytest.mark.parametrize("name", list(PROCESSES))
def test_epsilon_model_matches_the_exact_eps(gmm, name):
    sde, vp = PROCESSES[name](), sl.VPSDE()
    ab = _ddpm_alphas_cumprod().to(F64)
    k = torch.tensor([0, 10, 100, 400, 800, 990])
    lam = torch.log(ab[k]) - torch.log1p(-ab[k])
    truth = -torch.sqrt(1 - ab[k])[:, None] * gmm.score(_x(), vp.t_from_log_snr(lam), vp)
    eps = interop.epsilon_model(gmm.score_fn(sde), sde, ab)(_x(), k)
    torch.testing.assert_close(eps, truth, rtol=1e-9, atol=1e-9)
    # an int timestep and a fractional one (interpolated in log-SNR) are accepted
    assert interop.epsilon_model(gmm.score_fn(sde), sde, ab)(_x(), 400).shape == (6, 2)
    e_half = interop.epsilon_model(gmm.score_fn(sde), sde, ab)(_x(), torch.full((6,), 400.5, dtype=F64))
    assert torch.isfinite(e_half).all()


def test_epsilon_model_refuses_a_non_ddpm_table(gmm):
    with pytest.raises(ValueError, match="alphas_cumprod"):
        interop.epsilon_model(gmm.score_fn(sl.VPSDE()), sl.VPSDE(), torch.tensor([0.5, 0.7]))


class _Scheduler:
    """The two attributes the adapters read from a diffusers scheduler."""

    class config:
        num_train_timesteps, beta_schedule, beta_start, beta_end = 1000, "linear", 1e-4, 0.02
        prediction_type = "epsilon"

    alphas_cumprod = _ddpm_alphas_cumprod()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_score_from_diffusers_converts_every_prediction_type(gmm, prediction):
    """A 'network' built from the exact eps in each parameterisation gives back the exact score."""
    vp = sl.VPSDE()
    ab = _Scheduler.alphas_cumprod.to(F64)
    eps_fn = interop.epsilon_model(gmm.score_fn(vp), vp, ab)

    def net(x, k):
        eps = eps_fn(x, k)
        lam = torch.log(ab) - torch.log1p(-ab)
        a = torch.sqrt(torch.sigmoid(interop._interp(k.to(F64), lam)))[:, None]  # the adapter's log-SNR interpolation
        s = torch.sqrt(1 - a**2)
        x0 = (x - s * eps) / a
        return {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[prediction]

    for sde in (None, sl.SubVPSDE()):
        score_fn, proc = interop.score_from_diffusers(net, _Scheduler, sde=sde, prediction_type=prediction)
        assert isinstance(proc, sl.VPSDE) and (sde is None or proc is sde)
        t = torch.tensor([0.1, 0.2, 0.35, 0.5, 0.7, 0.9], dtype=F64)
        torch.testing.assert_close(score_fn(_x(), t), gmm.score(_x(), t, proc), rtol=1e-7, atol=1e-7)


def test_sde_for_scheduler_is_ddpm_continuum_limit():
    sde = interop.sde_for_scheduler(_Scheduler)
    assert (sde.beta_min, sde.beta_max, sde.N) == pytest.approx((0.1, 20.0, 1000))
    t = torch.arange(1, 1001, dtype=F64) / 1000
    # alpha_bar(t_k) of the continuous process is within 1% (relative, in log) of DDPM's product for k >= 100
    rel = (torch.log(sde.alpha_bar(t)) / torch.log(_Scheduler.alphas_cumprod.to(F64)) - 1).abs()
    assert float(rel[100:].max()) < 0.01  # measured 0.0075 (the first steps differ by O(1/N) relatively)


def test_missing_k_diffusion_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "k_diffusion" else real(n, *a))
    with pytest.raises(MissingExtraError, match="pip install --no-deps k-diffusion"):
        interop.load_k_diffusion_sampling()


# --------------------------------------------------------------------------- the real peers
@pytest.fixture(scope="module")
def K():
    try:
        return interop.load_k_diffusion_sampling()
    except MissingExtraError as e:
        pytest.skip(f"k-diffusion not installed ({e})")


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers", reason="diffusers not installed (pip install 'scorelab[peers]')")


def _k_heun_vs_edm_heun(K, score_fn, sde, n=400, nfe=19, seed=3):
    """k-diffusion's Heun on the Karras grid through the adapter, and scorelab's edm_heun, same noise."""
    ref = sl.sample(score_fn, sde, (n, 2), method="edm_heun", nfe=nfe, generator=torch.Generator().manual_seed(seed))
    top = min(80.0, interop.sigma_range(sde)[1])  # edm_heun starts at EDM's sigma_max = 80 or sigma(T), if lower
    sigmas = K.get_sigmas_karras((nfe + 1) // 2, 0.002, top, rho=7.0)
    t0 = torch.tensor([float(sde.t_from_std_ratio(torch.tensor(top, dtype=F64))), sde.T], dtype=F64)
    v = sde.marginal_scale(t0) ** 2 + sde.marginal_std(t0) ** 2  # x_t0 has the prior's std scaled by sqrt(v0 / vT)
    std = sde.prior_std * float((v[0] / v[1]).sqrt() / sde.marginal_scale(t0[0]))
    x = torch.randn((n, 2), generator=torch.Generator().manual_seed(seed)) * std
    out = K.sample_heun(interop.k_diffusion_denoiser(score_fn, sde), x, sigmas.float(), disable=True)
    return out, ref.x


@pytest.mark.parametrize("name,tol", [("ve", 1e-4), ("vp", 5e-3)])
def test_k_diffusion_heun_reproduces_scorelab_edm_heun(K, gmm, name, tol):
    sde = sl.VESDE(0.002, 80.0) if name == "ve" else sl.VPSDE()
    out, ref = _k_heun_vs_edm_heun(K, gmm.score_fn(sde), sde)
    assert float((out - ref).abs().max()) < tol  # same algorithm, same grid up to float32 round-off


def test_k_diffusion_samples_a_trained_run(K, tmp_path):
    from scorelab.cli import main

    np.save(tmp_path / "p.npy", np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32))
    res = CliRunner().invoke(main, ["train", "toy", "--set", f"data.path={tmp_path / 'p.npy'}", "--set",
                                    "train.steps=3", "--set", "model.hidden=16", "--set", "model.depth=2",
                                    "--set", "train.device=cpu", "--set", "sde.type=ve", "--set",
                                    "sde.sigma_min=0.002", "--set", "sde.sigma_max=80.0", "--quiet",
                                    "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    run = sl.load(tmp_path / "run")
    out, ref = _k_heun_vs_edm_heun(K, run.score, run.sde, n=64, nfe=9)
    assert float((out - ref).abs().max()) < 1e-3 * (1 + float(ref.abs().max()))
    # and other k-diffusion samplers run on it (first-order Euler, DPM++ 2M)
    sig = K.get_sigmas_karras(8, 0.002, 80.0)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1)) * 80.0
    for fn in (K.sample_euler, K.sample_dpmpp_2m):
        assert torch.isfinite(fn(interop.k_diffusion_denoiser(run.score, run.sde), x, sig, disable=True)).all()


def _drive(scheduler, eps_model, n, seed):
    x = torch.randn((n, 2), generator=torch.Generator().manual_seed(seed)) * scheduler.init_noise_sigma
    for k in scheduler.timesteps:
        x = scheduler.step(eps_model(x, k), k, x).prev_sample
    return x


def test_diffusers_scheduler_drives_a_scorelab_score(diffusers, gmm):
    """DPM-Solver++ (diffusers) through the eps adapter vs scorelab's dpm_solver from the same noise: both
    integrate the same probability-flow ODE, so per-sample differences shrink as nfe grows; the VE and sub-VP
    views of the same mixture give the same trajectories as the VP view (round-off)."""
    common = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    vp, n, seed = sl.VPSDE(), 2000, 5
    medians = []
    for nfe in (20, 50):
        sch = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", **common)
        sch.set_timesteps(nfe)
        x = _drive(sch, interop.epsilon_model(gmm.score_fn(vp), vp, sch), n, seed)
        ref = sl.sample(gmm.score_fn(vp), vp, (n, 2), method="dpm_solver", nfe=nfe,
                        generator=torch.Generator().manual_seed(seed)).x
        medians.append(float((x - ref).norm(dim=1).median()))
    assert medians[1] < 0.05 and medians[1] < 0.6 * medians[0], medians  # measured 0.069 -> 0.024 (0.010 at nfe 100)
    assert sl.metrics.mixture_error(x, gmm).moment_kl < 0.1  # measured 0.035 (scorelab's dpm_solver: 0.009)
    for other in (sl.VESDE(0.002, 200.0), sl.SubVPSDE()):
        sch = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", **common)
        sch.set_timesteps(50)
        y = _drive(sch, interop.epsilon_model(gmm.score_fn(other), other, sch), n, seed)
        d = (y - x).norm(dim=1)
        assert float(d.median()) < 1e-5 and float((d > 1e-3).float().mean()) < 0.005, d.median()  # measured 2e-7
        # (float32 round-off; a sample on a boundary between modes may amplify it)


def test_unipc_with_denoise_to_zero_is_diffusers_unipc(diffusers):
    """scorelab's unipc(denoise_to_zero=True) on diffusers' UniPC timesteps is diffusers' UniPCMultistepScheduler with
    its defaults (bh2, order 2, lower_order_final, final_sigmas_type "zero") to float32 round-off, corrector and
    all, on Gaussian data (no mode boundary to amplify round-off): the final step to sigma = 0 is x0_hat, and the
    step before it keeps order 2."""
    common = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    vp, n, seed, nfe, v = sl.VPSDE(), 2000, 3, 10, 0.05

    def score(y, t):  # N(0, v I) data
        t = t.double()
        return (-y / (vp.marginal_scale(t) ** 2 * v + vp.marginal_std(t) ** 2).float()[:, None])
    sch = diffusers.UniPCMultistepScheduler(**common)
    sch.set_timesteps(nfe)
    x = _drive(sch, interop.epsilon_model(lambda y, t: score(y, t.clamp(max=vp.T)), vp, sch), n, seed)
    ab = torch.as_tensor(sch.alphas_cumprod).double()
    lam = torch.log(ab) - torch.log1p(-ab)
    times = torch.stack([vp.t_from_log_snr(lam[k]) for k in sch.timesteps.tolist()]).clamp(max=vp.T)
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    ours = sl.sample(score, vp, None, "unipc", nfe, x_init=x_T, grid=times, denoise_to_zero=True)
    assert ours.nfe == nfe
    d = (ours.x - x).norm(dim=1)
    assert float(d.max()) < 1e-4, d.max()  # measured 1.5e-6; without the fix to lower_order_final 0.012
    assert float((ours.x - x_T).norm(dim=1).median()) > 0.5  # it moved: the match is not that of two no-ops


def test_unipc_on_ddpms_grid_to_its_last_timestep_is_diffusers_unipc(diffusers):
    """What diffusers' UniPC does with 10 steps on DDPM's betas (timesteps 999, 899, ..., 100, then x0_hat) is
    scorelab's unipc on its own grid="ddpm" from sigma(T) to the level of k = 100 with denoise_to_zero: they agree to
    the difference between DDPM's discrete and continuous time at order 2 (diffusers' default). At order 3 they part by
    design: diffusers' lower_order_final drops the step before the final one to order 2, scorelab keeps order 3 up to
    its last solver step (the benchmark row unipc3/ddpm/dz, docs/samplers.md)."""
    common = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    vp, n, seed, nfe, v = sl.VPSDE(), 2000, 3, 10, 0.05

    def score(y, t):  # N(0, v I) data
        t = t.double()
        return (-y / (vp.marginal_scale(t) ** 2 * v + vp.marginal_std(t) ** 2).float()[:, None])
    dist = {}
    for order in (2, 3):
        sch = diffusers.UniPCMultistepScheduler(solver_order=order, **common)
        sch.set_timesteps(nfe)
        x = _drive(sch, interop.epsilon_model(lambda y, t: score(y, t.clamp(max=vp.T)), vp, sch), n, seed)
        ab = torch.as_tensor(sch.alphas_cumprod).double()
        last = float(((1 - ab[100]) / ab[100]).sqrt())  # 0.342
        x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
        seen = []  # the times the steps reach: diffusers' timesteps 899, ..., 100 in continuous time
        ours = sl.sample(score, vp, None, "unipc", nfe, x_init=x_T, grid="ddpm", sigma_min=last, order=order,
                         sigma_max=interop.sigma_range(vp)[1], denoise_to_zero=True,
                         callback=lambda i, t, y, seen=seen: seen.append(float(t)))
        assert ours.nfe == nfe
        theirs = [float(vp.t_from_log_snr(torch.log(ab[k]) - torch.log1p(-ab[k]))) for k in sch.timesteps[1:].tolist()]
        assert max(abs(a - b) for a, b in zip(seen, theirs, strict=True)) < 4e-3  # measured 2.6e-3 (discrete DDPM)
        dist[order] = float((ours.x - x).norm(dim=1).max())
        assert float((ours.x - x_T).norm(dim=1).median()) > 0.5  # it moved
    assert dist[2] < 2e-4, dist  # measured 3.4e-5
    assert dist[3] > 10 * dist[2], dist  # measured 6.3e-3: the order of the step before x0_hat


def test_diffusers_unet_as_a_scorelab_score(diffusers):
    """A (random) diffusers UNet2DModel: score_from_diffusers and epsilon_model invert each other at the
    scheduler's timesteps, and scorelab samplers run on it."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    sch = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02)
    score_fn, sde = interop.score_from_diffusers(unet, sch)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    k = torch.tensor([10, 250, 700])
    with torch.no_grad():
        eps = interop.epsilon_model(score_fn, sde, sch)(x, k)
        want = unet(x, k).sample
    torch.testing.assert_close(eps, want, rtol=2e-3, atol=2e-3)
    with torch.no_grad():
        res = sl.sample(score_fn, sde, (2, 1, 8, 8), method="dpm_solver", nfe=4,
                        generator=torch.Generator().manual_seed(0))
    assert res.x.shape == (2, 1, 8, 8) and torch.isfinite(res.x).all()


# --------------------------------------------------------------------------- save_run
def _fit_tiny(sde, steps=30):
    torch.manual_seed(0)
    model = sl.ScoreModel(sl.MLPScoreNet(2, hidden=16, depth=2, embed_dim=8), sde)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = sl.data.toy_mixture("ring").sample(256, generator=torch.Generator().manual_seed(0)).float()
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = sl.OBJECTIVES["sde_dsm"](model, data[torch.randint(0, 256, (64,), generator=g)], generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_save_run_then_load_and_cli(tmp_path):
    from scorelab.cli import main

    sde = sl.VPSDE(beta_min=0.1, beta_max=15.0)
    model = _fit_tiny(sde)
    out = sl.save_run(model, tmp_path / "run", (2,), model_config={"hidden": 16, "depth": 2, "embed_dim": 8},
                      step=30)
    run = sl.load(out)
    assert run.step == 30 and run.sde.beta_max == 15.0 and run.data_shape == (2,)
    x, t = _x().float(), torch.linspace(0.1, 0.9, 6)
    with torch.no_grad():
        torch.testing.assert_close(run.score(x, t), model.score(x, t))
    res = CliRunner().invoke(main, ["sample", str(out), "--nfe", "6", "-n", "5", "--device", "cpu", "--quiet",
                                    "--out", str(tmp_path / "s.npy")])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "s.npy").shape == (5, 2)
    with pytest.raises(ValueError, match="overwrite=True"):
        sl.save_run(model, out, (2,), model_config={"hidden": 16, "depth": 2, "embed_dim": 8})
    sl.save_run(model, out, (2,), model_config={"hidden": 16, "depth": 2, "embed_dim": 8}, step=31, overwrite=True)
    assert sl.load(out).step == 31


def test_save_run_refuses_what_load_cannot_rebuild(tmp_path):
    model = _fit_tiny(sl.VPSDE(), steps=1)
    with pytest.raises(ValueError, match="model_config"):  # defaults (hidden 128) do not fit a 16-wide net
        sl.save_run(model, tmp_path / "a", (2,))
    with pytest.raises(TypeError, match="ScoreModel"):
        sl.save_run(torch.nn.Linear(2, 2), tmp_path / "b", (2,))

    class Custom(torch.nn.Module):
        def forward(self, x, c):
            return x

    with pytest.raises(TypeError, match="MLPScoreNet"):
        sl.save_run(sl.ScoreModel(Custom(), sl.VPSDE()), tmp_path / "c", (2,))
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
