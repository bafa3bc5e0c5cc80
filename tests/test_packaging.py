"""The package as users get it: a wheel built from this tree, its metadata, and an install into a fresh venv.

Offline throughout: the wheel is built without build isolation, pip runs with --no-index, and the fresh venv
reuses the torch (and the other core dependencies) of the running interpreter through a .pth file pointing at
a folder of links, so nothing is downloaded and no second copy of torch is made. A different torch release is
shown to resolve next to the wheel with pip's resolver (--dry-run) against a metadata-only stand-in wheel.
"""

from __future__ import annotations

import email
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
packaging = pytest.importorskip("packaging")
from packaging.markers import default_environment  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402

pytestmark = pytest.mark.slow

CORE = {"torch", "numpy", "safetensors", "torchdiffeq", "tqdm", "pyyaml", "click"}
QUICK_START = """
import sys, torch, scorelab as sl
assert 'matplotlib' not in sys.modules and 'sklearn' not in sys.modules
g = torch.Generator().manual_seed(0)
sde = sl.VPSDE()
gmm = sl.data.toy_mixture("ring")
res = sl.sample(gmm.score_fn(sde), sde, (400, 2), method="dpm_solver", nfe=10, generator=g)
err = sl.metrics.mixture_error(res.x, gmm)
ll = sl.log_likelihood(gmm.score_fn(sde), sde, res.x[:8])
print("OK", sl.__version__, sl.__file__, torch.__version__, float(ll.nll.mean()))
"""


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_NO_INDEX"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _pip(*args, python=None, check=True):
    cmd = [sys.executable, "-m", "pip"]
    if python is not None:
        cmd += ["--python", str(python)]
    res = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, env=_env(), timeout=180)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the tree (building in place would write build/ into the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "configs", src / "configs", ignore=ignore)
    shutil.copytree(ROOT / "src", src / "src", symlinks=True, ignore=ignore)
    out = tmp_path_factory.mktemp("wheelhouse")
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, src)
    (whl,) = out.glob("scorelab-*.whl")
    return whl


def _metadata(whl: Path) -> email.message.Message:
    with zipfile.ZipFile(whl) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_string(z.read(name).decode())


def test_wheel_contents_and_metadata(wheel):
    import scorelab

    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert "scorelab/py.typed" in names
    assert "scorelab/configs/toy.yaml" in names and "scorelab/configs/digits.yaml" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    meta = _metadata(wheel)
    assert meta["Version"] == scorelab.__version__  # one version source: scorelab/_version.py
    assert meta["License-Expression"] == "MIT"
    classifiers = meta.get_all("Classifier")
    assert {"Programming Language :: Python :: 3.12", "Programming Language :: Python :: 3.13"} <= set(classifiers)
    # the library's required dependencies are the core only; the rest are extras
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    core = {_norm(r.name) for r in reqs if r.marker is None}
    assert core == CORE, core
    extras = set(meta.get_all("Provides-Extra"))
    assert {"plots", "data", "tensorboard", "peers", "test"} <= extras
    # a range, not a pin: other torch releases and Pythons 3.11-3.13 are accepted
    (torch_req,) = [r for r in reqs if r.name == "torch"]
    for version in ("2.2.0", "2.13.0", "2.13.0+cpu", "2.14.1", "3.0.0"):
        assert torch_req.specifier.contains(version, prereleases=False), (torch_req, version)
    assert not torch_req.specifier.contains("2.1.0")
    requires_python = packaging.specifiers.SpecifierSet(meta["Requires-Python"])
    assert all(requires_python.contains(v) for v in ("3.11.7", "3.12.0", "3.13.1"))


def _closure(names: set[str]) -> list[md.Distribution]:
    """The installed distributions that ``names`` need (markers evaluated, extras not followed)."""
    env = default_environment()
    seen: dict[str, md.Distribution] = {}
    todo = list(names)
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = dist
        for r in map(Requirement, dist.requires or []):
            if r.marker is None or r.marker.evaluate({**env, "extra": ""}):
                todo.append(r.name)
    return list(seen.values())


def _link_site(dists: list[md.Distribution], to: Path) -> None:
    """A folder of symlinks to exactly these distributions' top-level files and dist-info folders."""
    to.mkdir()
    for d in dists:
        for f in d.files or []:
            top = f.parts[0]
            if top.startswith("..") or top == "__pycache__":
                continue
            src = Path(d.locate_file(top))
            if src.exists() and not (to / top).exists():
                (to / top).symlink_to(src)


@pytest.fixture
def fresh_venv(tmp_path_factory) -> Path:
    """A fresh venv (no system site-packages) that sees only the core dependencies of the running interpreter."""
    base = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False, symlinks=True).create(base / "v")
    py = base / "v" / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, env=_env()).stdout.strip())
    _link_site(_closure(CORE), base / "reused")
    (site / "reused.pth").write_text(str(base / "reused") + "\n")
    return py


def test_wheel_installs_into_fresh_venv_and_runs_quick_start(wheel, fresh_venv, tmp_path):
    out = _pip("install", "--no-index", "--find-links", wheel.parent, "scorelab", python=fresh_venv)
    assert "Successfully installed scorelab" in out.stdout, out.stdout
    res = subprocess.run([fresh_venv, "-c", QUICK_START], capture_output=True, text=True, env=_env(),
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    ok, version, where, torch_version, _ = res.stdout.split()
    assert ok == "OK" and version == _metadata(wheel)["Version"]
    assert str(fresh_venv.parents[1]) in where  # the wheel's copy, not the checkout's
    import torch

    assert torch_version == torch.__version__  # reused, not reinstalled
    cli = subprocess.run([fresh_venv.parent / "scorelab", "--version"], capture_output=True, text=True,
                         env=_env(), cwd=tmp_path, timeout=60)
    assert cli.returncode == 0 and version in cli.stdout, cli.stdout + cli.stderr
    # a missing extra is one clear line naming it
    res = subprocess.run([fresh_venv, "-c", "import scorelab.plots"], capture_output=True, text=True, env=_env(),
                         cwd=tmp_path, timeout=60)
    assert res.returncode != 0 and "pip install 'scorelab[plots]'" in res.stderr


def _stand_in_wheel(name: str, version: str, to: Path) -> Path:
    """A metadata-only wheel: enough for pip's resolver to decide whether ``name==version`` fits."""
    dist_info = f"{name}-{version}.dist-info"
    files = {f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist_info}/RECORD"] = "".join(f"{k},,\n" for k in [*files, f"{dist_info}/RECORD"])
    path = to / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
    return path


def test_wheel_resolves_next_to_a_different_torch(wheel, fresh_venv, tmp_path):
    """pip's resolver (dry run, offline) accepts the wheel together with torch 2.14.1, which the old
    ``torch==2.13.0`` pin refused."""
    other = tmp_path / "other"
    other.mkdir()
    _stand_in_wheel("torch", "2.14.1", other)
    report = tmp_path / "report.json"
    _pip("install", "--dry-run", "--no-index", "--find-links", wheel.parent, "--find-links", other,
         "--report", report, "scorelab", "torch==2.14.1", python=fresh_venv)
    plan = {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert plan.get("torch") == "2.14.1" and "scorelab" in plan, plan
    # and the same resolver refuses a torch below the range, so the check can fail
    _stand_in_wheel("torch", "2.1.0", other)
    res = _pip("install", "--dry-run", "--no-index", "--find-links", wheel.parent, "--find-links", other,
               "scorelab", "torch==2.1.0", python=fresh_venv, check=False)
    assert res.returncode != 0 and "torch" in res.stderr
