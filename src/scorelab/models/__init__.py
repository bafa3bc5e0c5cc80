"""Score networks and the ScoreModel wrapper that turns a network and a forward process into score(x, t).

    embedding          Gaussian Fourier features of the noise-conditioning scalar
    mlp                MLPScoreNet for vectors [B, *dims]
    unet               UNet for images [B, C, H, W]
    energy             EnergyNet, a scalar energy E(x, c)
    parameterization   exact score <-> eps <-> x0 conversions
    score_model        ScoreModel(net, sde, parameterization)
"""

from .embedding import GaussianFourierEmbedding
from .energy import EnergyNet
from .mlp import MLPScoreNet
from .parameterization import eps_to_score, score_to_eps, score_to_x0, x0_to_score
from .score_model import PARAMETERIZATIONS, ScoreModel
from .unet import UNet

__all__ = [
    "GaussianFourierEmbedding", "MLPScoreNet", "UNet", "EnergyNet", "ScoreModel", "PARAMETERIZATIONS",
    "score_to_eps", "eps_to_score", "score_to_x0", "x0_to_score",
]
