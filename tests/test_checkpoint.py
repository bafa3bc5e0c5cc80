"""Checkpoints: safetensors + JSON only, atomic, and every kind of damage refused without touching the run."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import tiny_config
from scorelab import checkpoint as ckpt
from scorelab.config import build_model, build_sde, load_config
from scorelab.run import load
from scorelab.train import train


@pytest.fixture
def run_dir(tmp_path):
    p = tmp_path / "data.npy"
    np.save(p, np.random.default_rng(1).standard_normal((64, 2)).astype(np.float32))
    train(tiny_config(p), tmp_path / "run", progress=False)
    return tmp_path / "run"


def snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def weights_file(run_dir: Path) -> Path:
    (w,) = run_dir.glob("weights-*.safetensors")
    return w


def test_layout_and_round_trip(run_dir):
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == [".scorelab-run.json", "checkpoint.json", "config.yaml", "log.csv",
                     "weights-000000006.safetensors"]
    assert ckpt.read_owned(run_dir) == ["weights-000000006.safetensors"]
    meta = ckpt.read_meta(run_dir)
    assert meta["format_version"] == ckpt.FORMAT_VERSION and meta["step"] == 6 and meta["data_shape"] == [2]
    assert len(meta["generators"]["index"]) > 0 and all(0 <= b < 256 for b in meta["generators"]["loss"][0])
    assert meta["optimizer_param_groups"][0]["lr"] == 1e-3 and meta["optimizer_param_groups"][0]["betas"] == [0.9,
                                                                                                            0.999]
    tensors = ckpt.load_tensors(run_dir, meta)
    assert {k.split(".")[0] for k in tensors} == {"model", "ema", "optim"}
    assert {k.rsplit(".", 1)[1] for k in tensors if k.startswith("optim.")} == {"exp_avg", "exp_avg_sq", "step"}
    # the file is a plain safetensors file: its header is JSON
    raw = weights_file(run_dir).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert "model.net.mlp.inp.weight" in json.loads(raw[8:8 + n])


def test_generator_state_round_trip():
    g = torch.Generator().manual_seed(5)
    torch.rand(3, generator=g)
    state = ckpt.generator_state(g)
    a = torch.rand(4, generator=g)
    h = torch.Generator()
    ckpt.set_generator_state(h, json.loads(json.dumps(state)))
    assert torch.equal(torch.rand(4, generator=h), a)


def _refused(run_dir: Path, match: str):
    before = snapshot(run_dir)
    with pytest.raises(ValueError, match=match) as e:
        load(run_dir)
    assert "\n" not in str(e.value)
    assert snapshot(run_dir) == before  # a failed load writes nothing
    return str(e.value)


def test_truncated_weights_refused(run_dir):
    w = weights_file(run_dir)
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    msg = _refused(run_dir, "checksum")
    assert "retrain" in msg or "restore" in msg


def test_edited_weights_refused(run_dir):
    w = weights_file(run_dir)
    raw = bytearray(w.read_bytes())
    raw[-3] ^= 0xFF
    w.write_bytes(bytes(raw))
    _refused(run_dir, "checksum")


def test_pickle_renamed_safetensors_refused_without_unpickling(run_dir, tmp_path):
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    w = weights_file(run_dir)
    w.write_bytes(pickle.dumps({"model.x": Boom()}))
    _refused(run_dir, "checksum")
    # even with the checksum forged to match, the file is parsed as safetensors, never unpickled
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    meta["weights_sha256"] = ckpt._sha256(w)
    meta["record_sha256"] = ckpt.record_digest(meta)
    (run_dir / "checkpoint.json").write_text(json.dumps(meta))
    _refused(run_dir, "not a readable safetensors file")
    assert not marker.exists()


def test_truncated_or_edited_json_refused(run_dir):
    j = run_dir / "checkpoint.json"
    good = j.read_text()
    j.write_text(good[: len(good) // 2])
    _refused(run_dir, "not valid JSON")
    meta = json.loads(good)
    meta["format_version"] = 99
    j.write_text(json.dumps(meta))
    _refused(run_dir, "format version")
    meta = json.loads(good)
    del meta["weights_file"]
    j.write_text(json.dumps(meta))
    _refused(run_dir, "weights_file")
    meta = json.loads(good)
    meta["step"] = "six"
    j.write_text(json.dumps(meta))
    _refused(run_dir, "malformed entries \\['step'\\]")
    meta = json.loads(good)
    meta["weights_file"] = "../elsewhere.safetensors"
    j.write_text(json.dumps(meta))
    _refused(run_dir, "own checksum")
    meta["record_sha256"] = ckpt.record_digest(meta)  # forged: the path check still holds
    j.write_text(json.dumps(meta))
    _refused(run_dir, "missing")


def test_checkpoint_of_another_model_refused(run_dir):
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    cfg = load_config({**meta["config"], "model": {**meta["config"]["model"], "hidden": 32}})
    other = build_model(cfg["model"], build_sde(cfg["sde"]), (2,))
    tensors = ckpt.load_tensors(run_dir, meta)
    with pytest.raises(ValueError, match="shape mismatch.*another model config"):
        ckpt.load_module_state(other, ckpt.split_prefix(tensors, "ema"), "EMA")
    # a config edited to another width: the keys fit, the shapes do not
    meta["config"]["model"]["depth"] = 3
    (run_dir / "checkpoint.json").write_text(json.dumps(meta))
    _refused(run_dir, "own checksum")
    meta["record_sha256"] = ckpt.record_digest(meta)  # forged: the weights still do not fit
    (run_dir / "checkpoint.json").write_text(json.dumps(meta))
    _refused(run_dir, "missing")


def test_crash_mid_save_keeps_previous_checkpoint(run_dir, monkeypatch):
    """A save that dies while writing leaves the previous checkpoint loadable and no stray files."""
    before = snapshot(run_dir)
    run = load(run_dir)
    meta = ckpt.read_meta(run_dir)

    def dying_save(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", dying_save)
    opt = torch.optim.Adam(run.model.parameters())
    with pytest.raises(OSError):
        ckpt.save_checkpoint(run_dir, model=run.model, ema=run.model, optimizer=opt, meta={**meta, "step": 99})
    assert snapshot(run_dir) == before
    assert load(run_dir).step == 6


def test_new_checkpoint_replaces_old_only_when_complete(run_dir):
    meta = ckpt.read_meta(run_dir)
    run = load(run_dir)
    opt = torch.optim.Adam(run.model.parameters())
    keep = {k: v for k, v in meta.items() if k in ("config", "data_shape", "generators", "scaler")}
    ckpt.save_checkpoint(run_dir, model=run.model, ema=run.model, optimizer=opt, meta={**keep, "step": 7})
    assert [p.name for p in run_dir.glob("weights-*")] == ["weights-000000007.safetensors"]
    assert load(run_dir).step == 7


def test_resume_from_damaged_checkpoint_refused_and_untouched(run_dir, tmp_path):
    w = weights_file(run_dir)
    w.write_bytes(w.read_bytes()[:100])
    before = snapshot(run_dir)
    with pytest.raises(ValueError, match="checksum"):
        train(tiny_config(tmp_path / "data.npy", steps=9), run_dir, resume=True, progress=False)
    assert snapshot(run_dir) == before


def test_bad_objective_option_refused_before_writing(tmp_path):
    p = tmp_path / "data.npy"
    np.save(p, np.zeros((8, 2), np.float32))
    cfg = tiny_config(p)
    cfg["objective"] = {"name": "dsm", "sigma": -1.0}
    with pytest.raises(ValueError, match="sigma"):
        train(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_edited_generator_state_refused_on_resume(run_dir, tmp_path):
    j = run_dir / "checkpoint.json"
    meta = json.loads(j.read_text())
    meta["generators"]["index"] = [1, 2, 3]
    meta["record_sha256"] = ckpt.record_digest(meta)  # forged, so the generator check itself is exercised
    j.write_text(json.dumps(meta))
    before = snapshot(run_dir)
    with pytest.raises(ValueError, match="generator states"):
        train(tiny_config(tmp_path / "data.npy", steps=9), run_dir, resume=True, progress=False)
    assert snapshot(run_dir) == before
