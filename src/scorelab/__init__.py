"""scorelab: score-based generative modelling, tested against exact Gaussian-mixture truth.

Every public name is imported on first use (PEP 562), so ``import scorelab`` and ``scorelab --help`` do not pay
for torch until something needs it. ``sl.VPSDE``, ``sl.sample``, ``sl.oracle`` ... work as ordinary attributes.
``plots``, ``figures`` and ``demo`` need the ``[plots]`` extra (matplotlib, Pillow).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# name -> (module, attribute or None for the module itself)
_SUBMODULES = ("oracle", "metrics", "data", "ladders", "models", "objectives", "guidance", "conditional",
               "divergence", "likelihood", "latent", "tweedie", "sure", "interop", "samplers", "sde")
_NAMES = {
    "SDE": "sde", "VESDE": "sde", "VPSDE": "sde", "SubVPSDE": "sde",
    "ScoreModel": "models", "MLPScoreNet": "models", "UNet": "models", "EnergyNet": "models",
    "OBJECTIVES": "objectives", "make_objective": "objectives",
    "sample": "samplers", "SampleResult": "samplers",
    "inpaint": "conditional", "colorize": "conditional",
    "log_likelihood": "likelihood", "bits_per_dim": "likelihood",
    "encode": "latent", "decode": "latent", "interpolate": "latent",
    "denoise": "tweedie", "sure_loss": "sure",
    "load": "run", "Run": "run", "load_config": "config", "save_run": "interop",
}

__all__ = [
    "SDE", "VESDE", "VPSDE", "SubVPSDE",
    "oracle", "metrics", "data", "ladders", "models", "objectives", "guidance", "conditional",
    "divergence", "likelihood", "latent", "tweedie", "sure", "interop",
    "ScoreModel", "MLPScoreNet", "UNet", "EnergyNet", "OBJECTIVES", "make_objective",
    "sample", "samplers", "SampleResult", "inpaint", "colorize",
    "log_likelihood", "bits_per_dim", "encode", "decode", "interpolate", "denoise", "sure_loss",
    "load", "Run", "load_config", "save_run", "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'scorelab' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from . import (
        conditional,
        data,
        divergence,
        guidance,
        interop,
        ladders,
        latent,
        likelihood,
        metrics,
        models,
        objectives,
        oracle,
        samplers,  # a callable module: sl.samplers() lists the methods
        sure,
        tweedie,
    )
    from .conditional import colorize, inpaint
    from .config import load_config
    from .interop import save_run
    from .latent import decode, encode, interpolate
    from .likelihood import bits_per_dim, log_likelihood
    from .models import EnergyNet, MLPScoreNet, ScoreModel, UNet
    from .objectives import OBJECTIVES, make_objective
    from .run import Run, load
    from .samplers import SampleResult, sample
    from .sde import SDE, VESDE, VPSDE, SubVPSDE
    from .sure import sure_loss
    from .tweedie import denoise
