"""scorelab: score-based generative modelling, tested against exact Gaussian-mixture truth."""

from . import data, divergence, ladders, latent, likelihood, metrics, models, objectives, oracle, sure, tweedie
from .latent import decode, encode, interpolate
from .likelihood import bits_per_dim, log_likelihood
from .models import EnergyNet, MLPScoreNet, ScoreModel, UNet
from .objectives import OBJECTIVES, make_objective
from .sde import SDE, VESDE, VPSDE, SubVPSDE
from .sure import sure_loss
from .tweedie import denoise

__all__ = [
    "SDE", "VESDE", "VPSDE", "SubVPSDE",
    "oracle", "metrics", "data", "ladders", "models", "objectives",
    "ScoreModel", "MLPScoreNet", "UNet", "EnergyNet", "OBJECTIVES", "make_objective",
    "divergence", "likelihood", "latent", "tweedie", "sure",
    "log_likelihood", "bits_per_dim", "encode", "decode", "interpolate", "denoise", "sure_loss",
]
__version__ = "0.1.0"
