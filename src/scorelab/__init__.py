"""scorelab: score-based generative modelling, tested against exact Gaussian-mixture truth.

``plots``, ``figures`` and ``demo`` are imported on demand (they pull in matplotlib).
"""

from . import (
    conditional,
    data,
    divergence,
    guidance,
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
from .latent import decode, encode, interpolate
from .likelihood import bits_per_dim, log_likelihood
from .models import EnergyNet, MLPScoreNet, ScoreModel, UNet
from .objectives import OBJECTIVES, make_objective
from .run import Run, load
from .samplers import SampleResult, sample
from .sde import SDE, VESDE, VPSDE, SubVPSDE
from .sure import sure_loss
from .tweedie import denoise

__all__ = [
    "SDE", "VESDE", "VPSDE", "SubVPSDE",
    "oracle", "metrics", "data", "ladders", "models", "objectives", "guidance", "conditional",
    "divergence", "likelihood", "latent", "tweedie", "sure",
    "ScoreModel", "MLPScoreNet", "UNet", "EnergyNet", "OBJECTIVES", "make_objective",
    "sample", "samplers", "SampleResult", "inpaint", "colorize",
    "log_likelihood", "bits_per_dim", "encode", "decode", "interpolate", "denoise", "sure_loss",
    "load", "Run", "load_config",
]
__version__ = "0.1.0"
