"""Optional dependencies: import them where a feature needs them, with the install line when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency of one feature is not installed; the message names the pip extra."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """``importlib.import_module(module)``, or a MissingExtraError saying ``pip install 'scorelab[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:
            raise  # the package is there but broken: show the real error
        raise MissingExtraError(f"{feature} needs {top}, which is not installed; install it with "
                                f"pip install 'scorelab[{extra}]'.") from None
