"""The API reference builds from the docstrings (pdoc), so it cannot rot; every public module has a page."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("pdoc", reason="pdoc not installed (pip install 'scorelab[docs]')")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_builds(tmp_path):
    spec = importlib.util.spec_from_file_location("build_api", ROOT / "docs" / "build_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    modules = mod.build(tmp_path)
    for name in ("scorelab", "scorelab.sde", "scorelab.interop", "scorelab.run", "scorelab.config",
                 "scorelab.samplers", "scorelab.samplers.ode", "scorelab.models.score_model", "scorelab.cli"):
        assert name in modules
        page = tmp_path / (name.replace(".", "/") + ".html")
        assert page.is_file(), page
    assert not any("._" in m for m in modules)  # private modules stay out
    page = (tmp_path / "scorelab" / "interop.html").read_text()
    assert "save_run" in page and "k_diffusion_denoiser" in page and "Tweedie" in page  # docstrings rendered
    assert (tmp_path / "index.html").is_file() and (tmp_path / "search.js").is_file()
