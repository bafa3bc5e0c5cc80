"""Hostile and careless input (issue 15): nothing of the user's is lost, no silent wrong result, and every bad
input is one line (exit 2) or correct behaviour. One test per class of input; each fails on the old code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from helpers import invoke, one_line_error, tiny_config
from scorelab import checkpoint as ckpt
from scorelab import train as train_mod
from scorelab.config import load_config
from scorelab.data import load_array
from scorelab.likelihood import log_likelihood
from scorelab.run import load
from scorelab.sde import VPSDE
from scorelab.train import train

ROOT = Path(__file__).resolve().parents[1]




@pytest.fixture
def data_path(tmp_path):
    p = tmp_path / "data.npy"
    np.save(p, np.random.default_rng(1).standard_normal((64, 2)).astype(np.float32))
    return p


@pytest.fixture
def run_dir(tmp_path, data_path):
    train(tiny_config(data_path), tmp_path / "run", progress=False)
    return tmp_path / "run"


def snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def forge(run_dir: Path, edit_meta=None, edit_tensors=None) -> None:
    """Edit a checkpoint and recompute both checksums, as a determined user could."""
    meta = json.loads((run_dir / ckpt.META_NAME).read_text())
    if edit_tensors is not None:
        w = run_dir / meta["weights_file"]
        tensors = edit_tensors(load_file(w))
        save_file(tensors, w)
        meta["weights_sha256"] = ckpt._sha256(w)
    if edit_meta is not None:
        edit_meta(meta)
    meta["record_sha256"] = ckpt.record_digest(meta)
    (run_dir / ckpt.META_NAME).write_text(json.dumps(meta))


# --------------------------------------------------------------------------- data loss
def test_foreign_or_unnamed_directory_refused_untouched(tmp_path, data_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "weights-final.safetensors").write_bytes(b"precious")
    (user / "config.yaml").write_text("mine: 1\n")
    before = snapshot(user)
    with pytest.raises(ValueError, match="not empty .* not a scorelab run"):
        train(tiny_config(data_path), user, progress=False)
    assert snapshot(user) == before
    with pytest.raises(ValueError, match="--out is empty"):
        train(tiny_config(data_path), "", progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        train(tiny_config(data_path), tmp_path / "file", progress=False)


def test_only_files_the_run_wrote_are_deleted(run_dir, data_path):
    (run_dir / "weights-final.safetensors").write_bytes(b"user 1")
    (run_dir / "weights-000000001.safetensors").write_bytes(b"user 2")  # the run's naming, not the run's file
    train(tiny_config(data_path, steps=9), run_dir, resume=True, progress=False)
    assert (run_dir / "weights-final.safetensors").read_bytes() == b"user 1"
    assert (run_dir / "weights-000000001.safetensors").read_bytes() == b"user 2"
    assert not (run_dir / "weights-000000006.safetensors").exists()  # its own previous checkpoint went
    assert load(run_dir).step == 9


def test_second_writer_refused_by_the_lock(run_dir, data_path, tmp_path):
    fd = ckpt.lock_run_dir(run_dir)
    try:
        before = snapshot(run_dir)
        with pytest.raises(ValueError, match="another scorelab process"):
            train(tiny_config(data_path, steps=9), run_dir, resume=True, progress=False)
        assert snapshot(run_dir) == before
        (tmp_path / "fresh").mkdir()
        fd2 = ckpt.lock_run_dir(tmp_path / "fresh")
        with pytest.raises(ValueError, match="another scorelab process"):
            train(tiny_config(data_path), tmp_path / "fresh", progress=False)
        ckpt.unlock_run_dir(fd2)
        assert list((tmp_path / "fresh").iterdir()) == []
    finally:
        ckpt.unlock_run_dir(fd)
    train(tiny_config(data_path, steps=9), run_dir, resume=True, progress=False)  # released: the run continues


def _nan_after(n_calls):
    """build_objective replacement whose losses turn NaN from the n-th call on (the preflight is call 1)."""
    real = train_mod.build_objective
    calls = [0]

    def bind(*args, **kwargs):
        fn = real(*args, **kwargs)

        def wrapped(model, x, generator=None):
            calls[0] += 1
            loss = fn(model, x, generator=generator)
            return loss * float("nan") if calls[0] > n_calls else loss
        return wrapped
    return bind


def test_divergence_never_checkpointed_last_finite_kept(tmp_path, data_path, monkeypatch):
    # steps 1..4 finite (calls 2..5), NaN from step 5; checkpoints every step, logs only every 100
    monkeypatch.setattr(train_mod, "build_objective", _nan_after(5))
    with pytest.raises(ValueError, match=r"NaN/inf at step 5 .* checkpoint of step 4 is kept.*sde"):
        train(tiny_config(data_path, steps=20, ckpt_every=1, log_every=100), tmp_path / "r", progress=False)
    run = load(tmp_path / "r")
    assert run.step == 4 and all(bool(torch.isfinite(p).all()) for p in run.model.parameters())
    assert [p.name for p in (tmp_path / "r").glob("weights-*")] == ["weights-000000004.safetensors"]


def test_non_finite_weights_refused_on_load(run_dir):
    forge(run_dir, edit_tensors=lambda t: {k: (v * float("nan") if k.startswith("ema.") else v) for k, v in t.items()})
    with pytest.raises(ValueError, match="non-finite weights"):
        load(run_dir)
    one_line_error(invoke("sample", run_dir, "-n", 4, "--out", run_dir.parent / "s.npy"), "non-finite")


def test_stale_temporaries_cleaned_user_files_kept(run_dir, data_path):
    (run_dir / ".log.csv.k2j3h4.tmp").write_text("half a log")
    (run_dir / ".weights-000000003.safetensors.abc_12.tmp").write_bytes(b"half")
    (run_dir / ".notes.tmp").write_text("mine")
    train(tiny_config(data_path, steps=9), run_dir, resume=True, progress=False)
    names = {p.name for p in run_dir.iterdir()}
    assert ".notes.tmp" in names and not any(n.startswith((".log.csv.", ".weights-")) for n in names)
    rows = (run_dir / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "3", "6", "9"]


def test_sigint_saves_the_current_step(tmp_path, data_path):
    cfg = tiny_config(data_path, steps=10**6, ckpt_every=10**5, log_every=5)
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "scorelab.cli", "train", str(tmp_path / "c.yaml"), "--out",
                             str(tmp_path / "r"), "--quiet"], env=env, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "r" / "log.csv"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and (not log.exists() or
                                                                  len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "SIGINT" in lines[0] and "--resume" in lines[0], err
    step = load(tmp_path / "r").step
    assert step >= 10 and step % 10**5 != 0


# --------------------------------------------------------------------------- what a checkpoint means
def test_edited_meaning_refused(run_dir, data_path):
    j = run_dir / ckpt.META_NAME
    meta = json.loads(j.read_text())
    meta["config"]["model"]["parameterization"] = "eps"
    j.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="own checksum"):
        load(run_dir)


def test_resume_without_or_with_wrong_optimiser_state_refused(tmp_path, data_path):
    for name, edit, msg in [
        ("gone", lambda t: {k: v for k, v in t.items() if not k.startswith("optim.")}, "lacks the optimiser state"),
        ("shape", lambda t: {k: (torch.zeros(3) if k == "optim.0.exp_avg" else v) for k, v in t.items()},
         "shape"),
    ]:
        d = tmp_path / name
        train(tiny_config(data_path), d, progress=False)
        forge(d, edit_tensors=edit)
        before = snapshot(d)
        with pytest.raises(ValueError, match=msg):
            train(tiny_config(data_path, steps=9), d, resume=True, progress=False)
        assert snapshot(d) == before


def test_malformed_records_are_one_line(run_dir, data_path):
    forge(run_dir, edit_meta=lambda m: m.pop("generators"))
    with pytest.raises(ValueError, match="lacks the generator states"):
        train(tiny_config(data_path, steps=9), run_dir, resume=True, progress=False)
    (run_dir / ckpt.META_NAME).write_text("[" * 100000 + "]" * 100000)
    one_line_error(invoke("sample", run_dir, "-n", 2, "--out", run_dir.parent / "s.npy"), "nested too deeply")


# --------------------------------------------------------------------------- CLI: one line, before any work
def test_cli_out_paths(run_dir, tmp_path, data_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    one_line_error(invoke("sample", run_dir, "-n", 2, "--out", blocker / "s.npy"), "does not exist")
    one_line_error(invoke("sample", run_dir, "-n", 2, "--out", tmp_path / "s.txt"), ".npy or .png")
    res = invoke("sample", run_dir, "-n", 2, "--out", tmp_path)  # click's own usage error: exit 2, no traceback
    assert res.exit_code == 2 and "is a directory" in res.output and res.exception is None or \
        isinstance(res.exception, SystemExit)
    one_line_error(invoke("train", "toy", "--out", blocker / "r", "--quiet"), "not a writable folder")
    one_line_error(invoke("demo", "--quick", "--out", blocker / "d"), "not a writable folder")
    one_line_error(invoke("figures", "--quick", "--out", blocker / "f"), "not a writable folder")
    np.save(tmp_path / "noisy.npy", np.zeros((3, 2), np.float32))
    one_line_error(invoke("denoise", run_dir, "--data", tmp_path / "noisy.npy", "--sigma", 0.1, "--out",
                    tmp_path / "x.txt"), ".npy")
    res = invoke("denoise", run_dir, "--data", tmp_path / "noisy.npy", "--sigma", 0.1, "--out", tmp_path / "d.npy")
    assert res.exit_code == 0 and np.load(tmp_path / "d.npy").shape == (3, 2)
    assert not (tmp_path / "d.npy.npy").exists()
    res = invoke("sample", run_dir, "-n", 5, "--nfe", 4, "--out", tmp_path / "S.NPY")
    assert res.exit_code == 0 and np.load(tmp_path / "S.NPY").shape == (5, 2), res.output


def test_cli_sizes_and_numbers(run_dir, tmp_path, monkeypatch):
    one_line_error(invoke("sample", run_dir, "-n", 10**13, "--out", tmp_path / "s.npy"), "GiB")
    one_line_error(invoke("sample", run_dir, "--nfe", 10**12, "-n", 2, "--out", tmp_path / "s.npy"), "--nfe")
    one_line_error(invoke("sample", run_dir, "-n", 2, "--seed", 10**30, "--out", tmp_path / "s.npy"), "--seed")
    np.save(tmp_path / "ints.npy", np.zeros((2, 2), np.float32))
    one_line_error(invoke("likelihood", run_dir, "--data", tmp_path / "ints.npy", "--bits-per-dim", "--bits", 5000),
             "--bits")
    np.save(tmp_path / "far.npy", np.full((2, 2), 1e30, np.float32))
    one_line_error(invoke("likelihood", run_dir, "--data", tmp_path / "far.npy"), "trained on data in")  # check_data
    one_line_error(invoke("sample", run_dir, "--method", "mala", "-n", 2, "--out", tmp_path / "s.npy"), "energy")
    import scorelab.cli as cli

    def boom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:114] DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(cli, "_load_run", boom)
    one_line_error(invoke("sample", run_dir, "-n", 2, "--out", tmp_path / "s.npy"), "out of memory")

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_load_run", interrupt)
    one_line_error(invoke("sample", run_dir, "-n", 2, "--out", tmp_path / "s.npy"), "interrupted", code=130)


def test_cli_config_values(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("".join(f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}]\n" if i else "l0: &l0 [x]\n"
                            for i in range(12)) + "train: {steps: *l11}\n")
    t0 = time.perf_counter()
    one_line_error(invoke("train", bomb, "--out", tmp_path / "r"), "alias")
    assert time.perf_counter() - t0 < 5
    for override, word in [("train.device=meta", "train.device"), ("objective.eps=abc", "objective.eps"),
                           ("train.seed=99999999999999999999999", "train.seed")]:
        one_line_error(invoke("train", "toy", "--set", override, "--out", tmp_path / "r", "--quiet"), word)
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- data files
def test_data_files(tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf1.5,2\n3,4\n")
    assert load_array(bom).tolist() == [[1.5, 2.0], [3.0, 4.0]]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("temp\xe9rature,b\n1,2\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.csv.*UTF-8"):
        load_array(latin)
    np.save(tmp_path / "c.npy", np.ones((3, 2), np.complex64))
    with pytest.raises(ValueError, match="complex"):
        load_array(tmp_path / "c.npy")
    liar = tmp_path / "liar.npy"
    with open(liar, "wb") as f:  # a header announcing 10^12 rows, then 16 bytes
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 2)})
        f.write(np.zeros(4, np.float32).tobytes())
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_array(liar)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arr=st.lists(st.lists(st.floats(-1e30, 1e30, allow_nan=False).map(lambda v: float(np.float32(v))),
                             min_size=2, max_size=2), min_size=1, max_size=6),
       bom=st.booleans(), header=st.booleans())
def test_property_csv_round_trip(tmp_path, arr, bom, header):
    p = tmp_path / "p.csv"
    text = ("a,b\n" if header else "") + "".join(f"{x!r},{y!r}\n" for x, y in arr)
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    np.testing.assert_array_equal(load_array(p).numpy(), np.asarray(arr, np.float32))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["step", "seconds", "data_shape", "scaler", "world_size", "torch_version"]),
       value=st.one_of(st.integers(-3, 10**6), st.text(max_size=5), st.lists(st.integers(0, 9), max_size=3)))
def test_property_any_edit_of_the_record_refused(run_once, key, value):
    run_dir = run_once
    j = run_dir / ckpt.META_NAME
    good = j.read_text()
    meta = json.loads(good)
    if meta.get(key) == value:
        return
    meta[key] = value
    j.write_text(json.dumps(meta))
    try:
        with pytest.raises(ValueError):
            ckpt.read_meta(run_dir)
    finally:
        j.write_text(good)


@pytest.fixture(scope="module")
def run_once(tmp_path_factory):
    d = tmp_path_factory.mktemp("once")
    np.save(d / "data.npy", np.random.default_rng(1).standard_normal((64, 2)).astype(np.float32))
    train(tiny_config(d / "data.npy"), d / "run", progress=False)
    return d / "run"


# --------------------------------------------------------------------------- API
def test_run_score_inputs(run_once):
    run = load(run_once)
    x = torch.randn(4, 2)
    ref = run.score(x, 0.5)
    for dt in (torch.float64, torch.float16):
        out = run.score(x.to(dt), 0.5)
        assert out.dtype == dt and torch.allclose(out.float(), ref, atol=5e-2 if dt == torch.float16 else 1e-5)
    assert bool(torch.isfinite(run.score(x, 0.0)).all()) and bool(torch.isfinite(run.score(x, torch.zeros(4))).all())
    for t in (-0.1, float("nan"), float("inf"), 1.5, torch.tensor([0.5, float("nan"), 0.5, 0.5]),
              torch.full((4,), -1.0)):
        with pytest.raises(ValueError, match="t must lie in"):
            run.score(x, t)
    with pytest.raises(ValueError, match="trained on"):
        run.score(torch.randn(4, 3), 0.5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load(run_once, device="cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            load(run_once, device=torch.device("cuda"))


def test_log_likelihood_inputs():
    sde = VPSDE()

    def exact(x, t):  # N(0, I) data: p_t = N(0, I) under the VP process, score -x
        return -x
    x = torch.randn(3, 2)
    assert bool(torch.isfinite(log_likelihood(exact, sde, x, solver="euler", steps=4).nll).all())
    with pytest.raises(ValueError, match="shaped like x"):
        log_likelihood(lambda x, t: x[:, :1], sde, x, solver="euler", steps=4)
    with pytest.raises(ValueError, match="not finite|could not be solved"):
        log_likelihood(lambda x, t: x * float("nan"), sde, x)
    with pytest.raises(ValueError, match="not finite|could not be solved"):
        log_likelihood(exact, sde, torch.full((2, 2), 1e30))
    with pytest.raises(TypeError, match="float32 or float64"):
        log_likelihood(exact, sde, x.half())
    with pytest.raises(ValueError, match="empty"):
        log_likelihood(exact, sde, torch.zeros(0, 2))


def test_config_seed_and_device_lines():
    with pytest.raises(ValueError, match=r"train.seed must be in \[0, 2\^63 - 1\]"):
        load_config("toy", ["train.seed=18446744073709551616"])
    with pytest.raises(ValueError, match="cannot train"):
        load_config("toy", ["train.device=meta"])


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(1, 5), step=st.integers(1, 10**8), scale=st.floats(-1e30, 1e30, allow_nan=False))
def test_property_checkpoint_round_trip(tmp_path_factory, width, step, scale):
    """Any finite weights at any step come back bit for bit; the record passes its own checksum."""
    d = tmp_path_factory.mktemp("rt")
    g = torch.Generator().manual_seed(step)
    model = torch.nn.Linear(width, 2)
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, width, generator=g) * np.float32(scale))
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, width)).sum().backward()
    opt.step()
    ckpt.save_checkpoint(d, model=model, ema=model, optimizer=opt,
                         meta={"step": step, "config": {"k": [scale]}, "data_shape": [width]})
    meta = ckpt.read_meta(d)
    tensors = ckpt.load_tensors(d, meta)
    assert meta["step"] == step and meta["config"] == {"k": [scale]}
    for k, v in model.state_dict().items():
        assert torch.equal(tensors[f"model.{k}"], v)
    assert sorted(p.name for p in d.iterdir()) == [".scorelab-run.json", "checkpoint.json",
                                                    f"weights-{step:09d}.safetensors"]


def test_deeply_nested_yaml_is_one_line(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("train: " + "[" * 50000 + "]" * 50000 + "\n")
    one_line_error(invoke("train", deep, "--out", tmp_path / "r"), "nested too deeply")
    one_line_error(invoke("train", "toy", "--set", "train.steps=" + "[" * 50000, "--out", tmp_path / "r"))


def test_extreme_process_not_blamed_on_the_learning_rate(tmp_path, data_path):
    cfg = tiny_config(data_path)
    cfg["sde"] = {"type": "ve", "sigma_min": 0.01, "sigma_max": 1e30}
    with pytest.raises(ValueError, match="initial weights.*sigma_max=1e\\+30") as err:
        train(cfg, tmp_path / "r", progress=False)
    assert "train.lr" not in str(err.value) and not (tmp_path / "r").exists()


@settings(max_examples=30, deadline=None)
@given(t=st.one_of(st.floats(0.0, 1.0), st.just(0.0), st.just(1.0)), dt=st.sampled_from([torch.float32,
                                                                                          torch.float64]))
def test_property_run_score_finite_on_the_time_range(run_once, t, dt):
    run = load(run_once)
    x = torch.linspace(-3, 3, 8, dtype=dt).reshape(4, 2)
    out = run.score(x, torch.full((4,), t, dtype=dt))
    assert out.shape == x.shape and out.dtype == dt and bool(torch.isfinite(out).all())


def test_load_while_a_trainer_replaces_the_checkpoint(run_dir, monkeypatch):
    """The tensor file named in the record read first was deleted by a newer commit: load the newer one."""
    stale = ckpt.read_meta(run_dir)
    run = load(run_dir)
    opt = torch.optim.Adam(run.model.parameters())
    keep = {k: v for k, v in stale.items() if k in ("config", "data_shape", "generators", "scaler")}
    ckpt.save_checkpoint(run_dir, model=run.model, ema=run.model, optimizer=opt, meta={**keep, "step": 7})
    real, calls = ckpt.read_meta, [0]

    def first_stale(d):
        calls[0] += 1
        return stale if calls[0] == 1 else real(d)
    monkeypatch.setattr(ckpt, "read_meta", first_stale)
    assert load(run_dir).step == 7


def test_cli_mala_works_for_an_energy_run(tmp_path, data_path):
    cfg = tiny_config(data_path)
    cfg["model"] = {"type": "energy", "hidden": 16, "depth": 2, "embed_dim": 8}
    train(cfg, tmp_path / "e", progress=False)
    res = invoke("sample", tmp_path / "e", "--method", "mala", "--nfe", 5, "-n", 6, "--out", tmp_path / "m.npy")
    assert res.exit_code == 0, res.output
    x = np.load(tmp_path / "m.npy")
    assert x.shape == (6, 2) and np.isfinite(x).all()
