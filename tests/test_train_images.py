"""Training on images: data_info in the run, periodic sample grids (owned, atomic, resume-safe), bf16 autocast,
the CPU thread default, and resuming runs written before these keys existed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scorelab import checkpoint as ckpt
from scorelab.data import load_dataset
from scorelab.run import load
from scorelab.train import _config_diff, autocast_device, cpu_threads, train


def tiny_digits(**train_kw):
    """A U-Net of width 8 on the digits' train split: a few steps take well under a second."""
    return {
        "data": {"name": "digits", "scale": [-1, 1], "n": 64},
        "sde": {"type": "vp"},
        "model": {"type": "unet", "base_channels": 8, "channel_mults": [1], "num_res_blocks": 1,
                  "attn_at_lowest": False, "embed_dim": 16, "parameterization": "edm"},
        "objective": {"name": "sde_dsm", "noise": "lognormal", "weighting": "edm"},
        "train": {"steps": 6, "batch_size": 8, "lr": 1e-3, "warmup": 2, "ema_power": 6.94, "log_every": 2,
                  "ckpt_every": 2, "seed": 1, "device": "cpu", "threads": 1, "sample_nfe": 2, **train_kw},
    }


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_data_info_is_recorded_and_loaded(tmp_path):
    train(tiny_digits(steps=2), tmp_path / "r", progress=False)
    run = load(tmp_path / "r")
    assert run.data_info == {"shape": [1, 8, 8], "range": [0.0, 16.0], "levels": 17, "source": "digits",
                             "split": "train"}
    assert run.data_info == load_dataset("digits", n=64, generator=torch.Generator().manual_seed(0))[1]
    # the scaler maps the set's known range, not the 64 images' min/max
    assert torch.allclose(run.to_model(torch.tensor([0.0, 16.0])), torch.tensor([-1.0, 1.0]))


def test_sample_grids_do_not_touch_training_and_resume_bit_for_bit(tmp_path):
    plain = train(tiny_digits(), tmp_path / "plain", progress=False)
    full = train(tiny_digits(sample_every=2), tmp_path / "full", progress=False)
    assert same_weights(plain.model, full.model) and same_weights(plain.ema, full.ema)
    names = sorted(p.name for p in (tmp_path / "full" / "samples").iterdir())
    assert names == ["latest.png", "step_000000002.png", "step_000000004.png", "step_000000006.png"]
    assert (tmp_path / "full" / "samples" / "latest.png").read_bytes() == \
        (tmp_path / "full" / "samples" / "step_000000006.png").read_bytes()
    assert ckpt.read_owned_outputs(tmp_path / "full") == [f"samples/{n}" for n in names]
    from PIL import Image
    with Image.open(tmp_path / "full" / "samples" / "latest.png") as im:
        assert im.mode == "L" and min(im.size) >= 8 * 8  # 64 digits of 8 x 8 pixels at least
    # the same grid twice from the same weights: the grids' generator is fixed by the seed
    part = train(tiny_digits(sample_every=2, steps=3), tmp_path / "part", progress=False)
    assert part.step == 3
    resumed = train(tiny_digits(sample_every=2), tmp_path / "part", resume=True, progress=False)
    assert same_weights(full.model, resumed.model) and same_weights(full.ema, resumed.ema)
    for n in ("step_000000004.png", "step_000000006.png"):
        assert (tmp_path / "part" / "samples" / n).read_bytes() == (tmp_path / "full" / "samples" / n).read_bytes()


def test_sample_grid_never_overwrites_a_users_file(tmp_path):
    out = tmp_path / "r"
    train(tiny_digits(steps=2), out, progress=False)
    (out / "samples").mkdir()
    (out / "samples" / "latest.png").write_bytes(b"mine")
    with pytest.warns(UserWarning, match="not written by this run"):
        train(tiny_digits(steps=4, sample_every=2), out, resume=True, progress=False)
    assert (out / "samples" / "latest.png").read_bytes() == b"mine"
    assert (out / "samples" / "step_000000004.png").is_file()
    assert "samples/latest.png" not in ckpt.read_owned_outputs(out)
    # a stale temporary of an interrupted grid write is removed at the next start, a user's look-alike is not
    (out / "samples" / ".latest.png.abc123.tmp").write_bytes(b"")
    (out / "samples" / "notes.tmp").write_bytes(b"keep")
    assert ckpt.clean_stale_temporaries(out) == ["samples/.latest.png.abc123.tmp"]
    assert (out / "samples" / "notes.tmp").is_file()
    # the ownership record keeps the outputs across checkpoints
    rec = json.loads((out / ckpt.RUN_MARKER).read_text())
    assert rec["files"] == ["weights-000000004.safetensors"] and "samples/step_000000004.png" in rec["outputs"]


def test_sample_every_needs_images(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((32, 2)).astype(np.float32))
    cfg = {"data": {"path": str(tmp_path / "x.npy")}, "model": {"type": "mlp", "hidden": 8, "depth": 1},
           "train": {"steps": 2, "batch_size": 4, "device": "cpu", "sample_every": 1}}
    with pytest.raises(ValueError, match=r"sample_every=1 writes image grids.*train.sample_every=0") as e:
        train(cfg, tmp_path / "r", progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "r").exists()


def test_bf16_autocast_on_the_cpu(tmp_path):
    """precision=bf16 runs the network's convolutions in bfloat16 (seen by a hook), keeps weights, EMA and the
    loss in float32, trains to finite weights and a different trajectory than float32 (so autocast acted)."""
    seen = []
    orig = torch.nn.Conv2d.forward

    def forward(self, x):
        out = orig(self, x)
        seen.append(out.dtype)
        return out

    torch.nn.Conv2d.forward = forward
    try:
        bf = train(tiny_digits(precision="bf16"), tmp_path / "bf", progress=False)
        conv_dtypes_bf16 = set(seen)
        seen.clear()
        fp = train(tiny_digits(precision="auto"), tmp_path / "fp", progress=False)  # auto on the CPU: fp32
        conv_dtypes_fp32 = set(seen)
    finally:
        torch.nn.Conv2d.forward = orig
    assert torch.bfloat16 in conv_dtypes_bf16 and conv_dtypes_fp32 == {torch.float32}
    assert np.isfinite(bf.last_loss) and np.isfinite(fp.last_loss)
    assert all(p.dtype == torch.float32 for p in [*bf.model.parameters(), *bf.ema.parameters()])
    assert not same_weights(bf.model, fp.model)
    # the trajectories are close: bf16 rounds the network, it does not change what is learned in 6 steps
    pairs = zip(bf.model.parameters(), fp.model.parameters(), strict=True)
    diffs = [float((a - b).detach().abs().max()) for a, b in pairs]
    assert max(diffs) < 0.05


def test_precision_and_thread_defaults():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_device("auto", cpu) is None and autocast_device("auto", cuda) == "cuda"
    assert autocast_device("fp32", cuda) is None and autocast_device("bf16", cpu) == "cpu"
    assert cpu_threads(None, cpu) == 1 and cpu_threads(None, cuda) is None and cpu_threads(3, cpu) == 3


def test_train_uses_one_thread_by_default(tmp_path, monkeypatch):
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    train(tiny_digits(steps=1, threads=None), tmp_path / "r", progress=False)
    assert calls[0] == 1  # set for training, then the caller's count restored


def test_resume_accepts_runs_older_than_the_new_keys():
    """A saved config without data.split / data.layout / train.precision / train.sample_* trained with their
    defaults, so it is no difference; any other value is."""
    from scorelab.config import load_config

    new = load_config(tiny_digits(sample_nfe=20))
    old = json.loads(json.dumps(new))
    for sec, key in (("data", "split"), ("data", "layout"), ("data", "dequantize"), ("train", "precision"),
                     ("train", "sample_every"),
                     ("train", "sample_nfe")):
        del old[sec][key]
    assert _config_diff(old, new) == []
    new["train"]["precision"] = "bf16"
    assert _config_diff(old, new) == [("train", "precision")]


def test_dequantized_training(tmp_path):
    """data.dequantize adds U[0, 1) data units (one bin: 2/16 in [-1, 1] for digits) from the loss generator, so
    the run trains on another path than without it and still resumes bit for bit; data without known levels
    refuses it."""
    from scorelab.config import load_data
    from scorelab.train import dequantization_width

    cfg = tiny_digits()
    cfg["data"]["dequantize"] = True
    from scorelab.config import load_config

    section = load_config(cfg)["data"]
    _, scaler, info = load_data(section)
    assert dequantization_width(section, info, scaler) == pytest.approx(0.125)
    assert dequantization_width(section, info, None) == 1.0
    assert dequantization_width({**section, "dequantize": False}, info, scaler) is None
    with pytest.raises(ValueError, match="data.dequantize=true needs quantised data"):
        dequantization_width(section, {**info, "levels": None}, scaler)
    cfg["train"]["steps"] = 4
    full = train(cfg, tmp_path / "full", progress=False)
    plain = train(tiny_digits(steps=4), tmp_path / "plain", progress=False)
    assert not same_weights(full.model, plain.model)
    cfg["train"]["steps"] = 2
    train(cfg, tmp_path / "part", progress=False)
    cfg["train"]["steps"] = 4
    resumed = train(cfg, tmp_path / "part", resume=True, progress=False)
    assert same_weights(full.model, resumed.model) and same_weights(full.ema, resumed.ema)
