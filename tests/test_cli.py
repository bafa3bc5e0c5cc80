"""The command line: train/resume through click, and user errors as one line with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY, invoke, one_line_error
from scorelab.run import load

ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture
def data_path(tmp_path):
    p = tmp_path / "pts.npy"
    np.save(p, np.random.default_rng(2).standard_normal((50, 2)).astype(np.float32))
    return p


def test_train_then_resume(tmp_path, data_path):
    out = tmp_path / "run"
    res = invoke("train", "toy", "--set", f"data.path={data_path}", "--set", "train.steps=3", *TINY, "--out", out)
    assert res.exit_code == 0, res.output
    assert load(out).step == 3
    res = invoke("train", ROOT / "configs" / "toy.yaml", "--set", f"data.path={data_path}", "--set",
                 "train.steps=5", *TINY, "--out", out, "--resume")
    assert res.exit_code == 0, res.output
    assert load(out).step == 5


def test_missing_config_file(tmp_path):
    res = invoke("train", tmp_path / "nope.yaml", "--out", tmp_path / "r")
    one_line_error(res, "nope.yaml", "toy")
    assert not (tmp_path / "r").exists()


def test_bad_set_key_and_value(tmp_path, data_path):
    res = invoke("train", "toy", "--set", "train.lrr=1", "--out", tmp_path / "r")
    one_line_error(res, "train.lrr", "'lr'")
    res = invoke("train", "toy", "--set", "train.lr=-1", "--out", tmp_path / "r")
    one_line_error(res, "train.lr", "> 0")
    res = invoke("train", "toy", "--set", "nonsense", "--out", tmp_path / "r")
    one_line_error(res, "section.key=value")
    assert not (tmp_path / "r").exists()


def test_existing_run_without_resume(tmp_path, data_path):
    out = tmp_path / "run"
    assert invoke("train", "toy", "--set", f"data.path={data_path}", "--set", "train.steps=2", *TINY,
                  "--out", out).exit_code == 0
    res = invoke("train", "toy", "--set", f"data.path={data_path}", "--set", "train.steps=2", *TINY, "--out", out)
    one_line_error(res, "--resume")


def test_missing_option_is_a_usage_error(tmp_path):
    res = invoke("train", "toy")
    assert res.exit_code == 2 and "--out" in res.output


def test_subprocess_error_has_no_traceback(tmp_path):
    """The real entry point (python -m scorelab.cli): stderr is one line, exit code 2."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32))
    proc = subprocess.run([sys.executable, "-m", "scorelab.cli", "train", "toy", "--set", f"data.path={bad}",
                           "--out", str(tmp_path / "r")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ") and "NaN" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "r").exists()
