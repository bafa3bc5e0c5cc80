"""Build the API reference (HTML, from the docstrings) with pdoc: ``python docs/build_api.py [OUT_DIR]``.

Every public module of the package is documented (the package's ``__all__`` alone would leave out modules such
as ``sde``, ``run`` or ``config`` whose names it re-exports). ``make docs`` runs this into docs/api/; the test
suite builds it into a temporary folder so the reference cannot rot.
"""

from __future__ import annotations

import pkgutil
import sys
import warnings
from pathlib import Path


def public_modules() -> list[str]:
    import scorelab

    names = ["scorelab"]
    for info in pkgutil.walk_packages(scorelab.__path__, "scorelab."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def build(out_dir: str | Path) -> list[str]:
    """Write the HTML reference into ``out_dir``; returns the documented module names."""
    import pdoc

    modules = public_modules()
    pdoc.render.configure(docformat="markdown", search=True, show_source=True)
    with warnings.catch_warnings():  # pdoc reaches subpackages' modules itself too; naming them all is harmless
        warnings.filterwarnings("ignore", message="The module specification .* adds a module named")
        pdoc.pdoc(*modules, output_directory=Path(out_dir))
    return modules


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "api")
    mods = build(out)
    print(f"API reference of {len(mods)} modules in {out}/index.html")
