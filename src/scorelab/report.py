"""A small report writer: sections, figures and tables, written as report.md and a self-contained report.html.

    rep = Report("scorelab demo")
    rep.add_section("Setup", "A VP SDE on a two-component mixture ...")
    rep.add_figure("fig1.png", "Data score vs learned score ...")     # a path, or a matplotlib Figure
    rep.add_table([{"sampler": "pc", "nfe": 100, "error": 0.031}], "Weights error by sampler")
    md_path, html_path = rep.write("out/")

report.html embeds every figure as a base64 data URI and carries its own styles (no external CSS, JS or CDN),
so it can be mailed or opened offline; report.md links the image files, which are copied next to it.
``format_table(rows)`` renders the same rows as a fixed-width text table for a terminal summary.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["Report", "format_table"]

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".svg": "image/svg+xml"}

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; line-height: 1.5; color: #222; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, caption { color: #444; font-size: .95em; margin-top: .4em; text-align: left; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: .25em .7em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
"""


def _cell(v, floatfmt: str) -> str:
    """One table value as text: floats through ``floatfmt``, everything else through str()."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        f = float(v)
        return format(f, floatfmt) if math.isfinite(f) else str(f)
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # a 0-d tensor or numpy scalar
        return _cell(v.item(), floatfmt)
    return str(v)


def _is_num(v) -> bool:
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _columns(rows) -> list[str]:
    """Validate rows (a non-empty list of dicts) and return the union of their keys, in first-seen order."""
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence) or isinstance(rows, str):
        raise ValueError(f"rows must be a list of dicts (one per table row), got {type(rows).__name__}.")
    if not rows:
        raise ValueError("rows is empty; a table needs at least one row (a dict column -> value).")
    cols: dict[str, None] = {}
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise ValueError(f"rows[{i}] must be a dict column -> value, got {type(r).__name__}.")
        for k in r:
            cols.setdefault(str(k), None)
    return list(cols)


def _table_cells(rows, floatfmt: str) -> tuple[list[str], list[list[str]], list[bool]]:
    cols = _columns(rows)
    rows = [{str(k): v for k, v in r.items()} for r in rows]
    body = [[_cell(r.get(c), floatfmt) for c in cols] for r in rows]
    # a column is right-aligned when every value it has is a number
    numeric = [all(_is_num(r[c]) for r in rows if r.get(c) is not None) for c in cols]
    return cols, body, numeric


def format_table(rows: Sequence[Mapping], floatfmt: str = ".4g") -> str:
    """A fixed-width text table of ``rows`` (list of dicts; columns are the union of the keys in first-seen
    order, missing cells blank): header, a rule, one line per row; numbers right-aligned, text left-aligned."""
    cols, body, numeric = _table_cells(rows, floatfmt)
    widths = [max(len(c), *(len(r[j]) for r in body)) for j, c in enumerate(cols)]

    def line(cells):
        return "  ".join(s.rjust(w) if num else s.ljust(w)
                         for s, w, num in zip(cells, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(cols), "  ".join("-" * w for w in widths)] + [line(r) for r in body])


def _md_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


class Report:
    """An ordered list of sections, figures and tables with one title; ``write(out_dir)`` renders it.

    Figures are kept as given: a path to an image file (copied into out_dir when it lives elsewhere) or a
    matplotlib Figure (saved as PNG into out_dir at write time).
    """

    def __init__(self, title: str, floatfmt: str = ".4g"):
        if not isinstance(title, str) or not title.strip():
            raise ValueError("Report needs a non-empty title string.")
        self.title = title
        self.floatfmt = floatfmt
        self.items: list[tuple] = []

    def add_section(self, title: str, text: str = "") -> Report:
        """A heading and its text; blank lines in ``text`` separate paragraphs."""
        if not isinstance(title, str) or not isinstance(text, str):
            raise TypeError("add_section(title, text) takes two strings.")
        self.items.append(("section", title, text))
        return self

    def add_figure(self, path_or_fig, caption: str = "") -> Report:
        """An image file (path) or a matplotlib Figure, with its caption."""
        if hasattr(path_or_fig, "savefig"):
            self.items.append(("figure", path_or_fig, caption))
            return self
        if not isinstance(path_or_fig, (str, Path)):
            raise TypeError(f"add_figure takes a file path or a matplotlib Figure, got {type(path_or_fig).__name__}.")
        p = Path(path_or_fig)
        if not p.is_file():
            raise ValueError(f"figure file {str(p)!r} does not exist; save the figure before adding it.")
        if p.suffix.lower() not in _MIME:
            raise ValueError(f"figure {p.name!r} must be one of {sorted(_MIME)}, got {p.suffix!r}.")
        self.items.append(("figure", p, caption))
        return self

    def add_table(self, rows: Sequence[Mapping], caption: str = "") -> Report:
        """A table from a list of dicts (one per row; columns are the union of keys in first-seen order)."""
        _columns(rows)  # fail now, not at write time
        self.items.append(("table", [dict(r) for r in rows], caption))
        return self

    # -----------------------------------------------------------------------------------------------------

    def _figure_files(self, out: Path) -> list[Path | None]:
        """Put every figure in out_dir as a file; returns one path per item (None for non-figures)."""
        files: list[Path | None] = []
        used: set[str] = set()
        for i, item in enumerate(self.items):
            if item[0] != "figure":
                files.append(None)
                continue
            src = item[1]
            if isinstance(src, Path):
                dest = out / src.name
                if dest.resolve() != src.resolve():
                    if dest.name in used:  # two sources with one file name
                        dest = out / f"figure{i}_{src.name}"
                    shutil.copyfile(src, dest)
            else:
                dest = out / f"figure{i}.png"
                src.savefig(dest, format="png")
            used.add(dest.name)
            files.append(dest)
        return files

    def to_markdown(self, figure_names: Sequence[str | None] | None = None) -> str:
        """The report as Markdown; figures are linked by file name (as placed by ``write``)."""
        out = [f"# {self.title}", ""]
        for i, item in enumerate(self.items):
            kind, a, b = item
            if kind == "section":
                out += [f"## {a}", ""] + ([b.strip(), ""] if b.strip() else [])
            elif kind == "figure":
                name = (figure_names[i] if figure_names else None) or (a.name if isinstance(a, Path)
                                                                       else f"figure{i}.png")
                out += [f"![{_md_escape(b) or name}]({name})", ""] + ([f"*{b.strip()}*", ""] if b.strip() else [])
            else:
                cols, body, _ = _table_cells(a, self.floatfmt)
                if b.strip():
                    out += [f"**{b.strip()}**", ""]
                out.append("| " + " | ".join(_md_escape(c) for c in cols) + " |")
                out.append("|" + "|".join("---" for _ in cols) + "|")
                out += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in body]
                out.append("")
        return "\n".join(out)

    def to_html(self, figure_files: Sequence[Path | None]) -> str:
        """The report as one HTML page with the figures (files) embedded as base64 data URIs."""
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for (kind, a, b), f in zip(self.items, figure_files, strict=True):
            if kind == "section":
                body.append(f"<h2>{e(a)}</h2>")
                body += [f"<p>{e(par.strip())}</p>" for par in b.split("\n\n") if par.strip()]
            elif kind == "figure":
                data = base64.b64encode(f.read_bytes()).decode("ascii")
                mime = _MIME[f.suffix.lower()]
                body.append(f'<figure><img src="data:{mime};base64,{data}" alt="{e(b or f.name)}">'
                            + (f"<figcaption>{e(b)}</figcaption>" if b else "") + "</figure>")
            else:
                cols, rows, numeric = _table_cells(a, self.floatfmt)
                cap = f"<caption>{e(b)}</caption>" if b else ""
                head = "".join(f"<th>{e(c)}</th>" for c in cols)
                trs = "".join("<tr>" + "".join(f'<td class="num">{e(s)}</td>' if num else f"<td>{e(s)}</td>"
                                               for s, num in zip(r, numeric, strict=True)) + "</tr>"
                              for r in rows)
                body.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{e(self.title)}</title><style>{_CSS}</style></head>\n<body>\n"
                + "\n".join(body) + "\n</body></html>\n")

    def write(self, out_dir) -> tuple[Path, Path]:
        """Write out_dir/report.md and out_dir/report.html (creating out_dir); returns (md_path, html_path)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = self._figure_files(out)
        md_path, html_path = out / "report.md", out / "report.html"
        md_path.write_text(self.to_markdown([f.name if f else None for f in files]), encoding="utf-8")
        html_path.write_text(self.to_html(files), encoding="utf-8")
        return md_path, html_path
