"""report.md / report.html contents, embedded images, tables, and the terminal table."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from scorelab.report import Report, format_table

ROWS = [{"sampler": "euler", "nfe": 100, "error": 0.031234567},
        {"sampler": "pc | corrector", "nfe": 200, "error": torch.tensor(0.0125)},
        {"sampler": "ode", "nfe": np.int64(57), "kl": float("nan")}]


def _png(path, colour):
    Image.new("RGB", (8, 6), colour).save(path)
    return path


def test_write_md_and_html(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    a = _png(src / "a.png", (255, 0, 0))
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])

    rep = Report("scorelab demo <quick>")
    rep.add_section("Setup", "First paragraph.\n\nSecond & last paragraph.")
    rep.add_figure(a, "Figure A: data vs learned score, error 0.31")
    rep.add_figure(fig, "Figure B: a matplotlib figure")
    rep.add_table(ROWS, "Sampler errors")
    out = tmp_path / "out"
    md_path, html_path = rep.write(out)
    assert md_path == out / "report.md" and html_path == out / "report.html"

    md = md_path.read_text()
    assert md.startswith("# scorelab demo <quick>")
    assert "## Setup" in md and "(a.png)" in md and "(figure2.png)" in md
    assert (out / "a.png").read_bytes() == a.read_bytes()  # copied beside report.md
    assert (out / "figure2.png").is_file()
    assert "| sampler | nfe | error | kl |" in md
    assert "| euler | 100 | 0.03123 |  |" in md
    assert "| pc \\| corrector | 200 | 0.0125 |  |" in md  # pipes escaped
    assert "| ode | 57 |  | nan |" in md
    assert "**Sampler errors**" in md

    h = html_path.read_text()
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', h)
    assert len(uris) == 2
    assert base64.b64decode(uris[0]) == a.read_bytes()
    assert base64.b64decode(uris[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Figure A: data vs learned score, error 0.31" in h and "Figure B: a matplotlib figure" in h
    assert "scorelab demo &lt;quick&gt;" in h and "Second &amp; last paragraph." in h
    assert "<caption>Sampler errors</caption>" in h and '<td class="num">0.03123</td>' in h
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r'(src|href)="(http|//)', h) and "<script" not in h


def test_figure_in_out_dir_not_copied(tmp_path):
    a = _png(tmp_path / "fig.png", (0, 0, 255))
    md, _ = Report("t").add_figure(a, "cap").write(tmp_path)
    assert "(fig.png)" in md.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "report.html", "report.md"]


def test_same_name_from_two_folders(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a, b = _png(tmp_path / "x" / "f.png", (1, 2, 3)), _png(tmp_path / "y" / "f.png", (4, 5, 6))
    md, _ = Report("t").add_figure(a, "one").add_figure(b, "two").write(tmp_path / "out")
    text = md.read_text()
    assert "(f.png)" in text and "(figure1_f.png)" in text
    assert (tmp_path / "out" / "figure1_f.png").read_bytes() == b.read_bytes()


def test_format_table():
    s = format_table(ROWS)
    lines = s.splitlines()
    assert lines[0].split() == ["sampler", "nfe", "error", "kl"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len(lines) == 2 + len(ROWS)
    # fixed width: every column starts at the same offset on every line
    starts = [m.start() for m in re.finditer(r"-+", lines[1])]
    assert lines[2][starts[1]:starts[2]].strip() == "100"
    assert lines[3][starts[2]:starts[3]].strip() == "0.0125"
    # numbers right-aligned, text left-aligned
    assert lines[2][starts[2]:starts[3]].rstrip() == lines[2][starts[2]:starts[3]].rstrip().rjust(
        starts[3] - starts[2] - 2)
    assert lines[2].startswith("euler ")
    assert format_table([{"a": 1.23456789}], floatfmt=".2f").splitlines()[2].strip() == "1.23"


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        format_table([])
    with pytest.raises(ValueError, match="list of dicts"):
        Report("t").add_table({"a": 1})
    with pytest.raises(ValueError, match=r"rows\[1\]"):
        format_table([{"a": 1}, [1, 2]])
    with pytest.raises(ValueError, match="does not exist"):
        Report("t").add_figure(tmp_path / "missing.png", "x")
    with pytest.raises(TypeError):
        Report("t").add_figure(42, "x")
    with pytest.raises(ValueError, match="title"):
        Report("")
