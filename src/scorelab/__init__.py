"""scorelab: score-based generative modelling, tested against exact Gaussian-mixture truth."""

from . import data, divergence, ladders, latent, likelihood, metrics, oracle, sure, tweedie
from .latent import decode, encode, interpolate
from .likelihood import bits_per_dim, log_likelihood
from .sde import SDE, SubVPSDE, VESDE, VPSDE
from .sure import sure_loss
from .tweedie import denoise

__all__ = [
    "SDE", "VESDE", "VPSDE", "SubVPSDE",
    "oracle", "metrics", "data", "ladders", "divergence", "likelihood", "latent", "tweedie", "sure",
    "log_likelihood", "bits_per_dim", "encode", "decode", "interpolate", "denoise", "sure_loss",
]
__version__ = "0.1.0"
