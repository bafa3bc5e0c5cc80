"""scorelab: score-based generative modelling, tested against exact Gaussian-mixture truth."""

from . import oracle
from .sde import SDE, SubVPSDE, VESDE, VPSDE

__all__ = ["SDE", "VESDE", "VPSDE", "SubVPSDE", "oracle"]
__version__ = "0.1.0"
