"""ScoreModel: a network plus a forward process, exposing the score function score(x, t).

``model.score(x, t)`` (also ``model(x, t)``) is the seam: samplers, likelihoods and objectives use it and
``model.sde``, nothing else, so any object with those two (the oracle wrapped in a tiny class, say) can stand
in for a trained model.

The network sees the noise-conditioning scalar c = log s(t) (s(t) the marginal std of the process), the same
for every process: it names the noise level directly, is unbounded in both directions only as s -> 0 or
s -> inf, and is what NCSN++ feeds its Fourier embedding (Song et al. 2021). With a VE SDE sampled at a discrete
ladder of times this is exactly the noise-conditional score network of NCSN (Song & Ermon 2019).

Parameterisations (net = net(x, c), m = m(t), s = s(t)):

    "score"   score = net / s                  (output scaling of NCSN v2, Song & Ermon 2020, "Improved
                                                techniques": the net predicts s * score, which is O(1))
    "eps"     score = -net / s                 (the net predicts the noise, as in DDPM, Ho et al. 2020)
    "x0"      score = (m net - x) / s^2        (the net predicts the denoised x_0)
    "edm"     preconditioned denoiser (Karras et al. 2022, "EDM", Table 1), for every process through
              sigma = s/m and y = x/m (x_t / m = x_0 + sigma z):
                  D(y) = c_skip y + c_out net(c_in y, c_noise),   score = (m D - x) / s^2
              c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd/sqrt(sigma^2+sd^2), c_in = 1/sqrt(sigma^2+sd^2),
              c_noise = ln(sigma)/4, sd = sigma_data (the data's RMS, measured at training time; EDM's 0.5
              for images in [-1, 1] when not given). The network then sees unit-variance inputs and regresses
              a unit-variance target at every noise level.
    "energy"  score = -grad_x E(x, c)          (net is an EnergyNet returning [B]; the gradient keeps its
                                                graph whenever autograd is on, so training differentiates
                                                through it: double backprop)

All but "energy" are undefined at s(t) = 0, i.e. at t = 0: evaluate at t >= a small eps.

A class-conditional network (``net.num_classes`` = K > 0, see models/mlp.py) is called as net(x, c, y):
``score(x, t, y)`` is s(x, t | y) for labels y (an int or [B]) and, with y=None, the unconditional score of
the same network (its null class, trained by label dropout; Ho & Salimans 2021).
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import batch_view
from .parameterization import eps_to_score, x0_to_score

PARAMETERIZATIONS = ("score", "eps", "x0", "edm", "energy")
EDM_SIGMA_DATA = 0.5  # Karras et al. 2022, for images scaled to [-1, 1]


class ScoreModel(nn.Module):
    """score(x [B, *dims], t [B] or float) -> [B, *dims] from ``net(x, c)`` and the forward process ``sde``."""

    def __init__(self, net: nn.Module, sde, parameterization: str = "score", sigma_data: float | None = None):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"Unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}.")
        if not callable(net):
            raise TypeError(f"net must be an nn.Module net(x, c), got {type(net).__name__}.")
        for attr in ("marginal_scale", "marginal_std"):
            if not callable(getattr(sde, attr, None)):
                raise TypeError(f"sde must be a scorelab process (VESDE/VPSDE/SubVPSDE), got {type(sde).__name__}.")
        self.net = net
        self.sde = sde
        self.parameterization = parameterization
        if sigma_data is None:
            sigma_data = EDM_SIGMA_DATA
        if not (isinstance(sigma_data, (int, float)) and not isinstance(sigma_data, bool) and sigma_data > 0
                and sigma_data < float("inf")):
            raise ValueError(f"sigma_data (the data's RMS) must be a positive number, got {sigma_data!r}.")
        self.sigma_data = float(sigma_data)  # used by "edm" (and by the EDM loss weighting)
        self.num_classes = int(getattr(net, "num_classes", 0) or 0)  # K > 0: class-conditional net(x, c, y)

    def extra_repr(self) -> str:
        extra = f", sigma_data={self.sigma_data:.4g}" if self.parameterization == "edm" else ""
        return f"sde={self.sde!r}, parameterization={self.parameterization!r}{extra}"

    def conditioning(self, t: torch.Tensor) -> torch.Tensor:
        """c [B], the scalar the network is conditioned on: log s(t), or ln(s/m)/4 for "edm" (EDM's c_noise)."""
        if self.parameterization == "edm":
            return 0.25 * torch.log(self.sde.marginal_std(t) / self.sde.marginal_scale(t))
        return torch.log(self.sde.marginal_std(t))

    def _time(self, t, x: torch.Tensor) -> torch.Tensor:
        # no data-dependent checks here: this runs inside sampler loops
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return t.expand(x.shape[0]) if t.ndim == 0 else t

    def _net(self, x: torch.Tensor, c: torch.Tensor, y) -> torch.Tensor:
        if not self.num_classes:
            if y is not None:
                raise ValueError("this score model is not class-conditional (no label embedding); sample it "
                                 "without a class, or train one with model.num_classes.")
            return self.net(x, c)
        return self.net(x, c, y)

    def score(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        """The model's grad_x log p_t(x), or grad_x log p_t(x | y) for labels y (class-conditional nets), shaped
        like x."""
        t = self._time(t, x)
        c = self.conditioning(t)
        if self.parameterization == "energy":
            if y is not None:
                raise ValueError("an energy model is not class-conditional; call score(x, t) without labels.")
            return self._energy_score(x, c)
        if self.parameterization == "edm":
            return self._edm_score(x, t, y)
        out = self._net(x, c, y)
        if out.shape != x.shape:
            hint = " (a scalar per example: use parameterization='energy')" if out.shape == x.shape[:1] else ""
            raise ValueError(f"net returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)}{hint}.")
        if self.parameterization == "score":
            return out / batch_view(self.sde.marginal_std(t), x)
        if self.parameterization == "eps":
            return eps_to_score(out, x, t, self.sde)
        return x0_to_score(out, x, t, self.sde)

    def _edm_score(self, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        # score_y = (D - y)/sigma^2 = -y/(sigma^2+sd^2) + sd/(sigma sqrt(sigma^2+sd^2)) F, written without the
        # cancellation of D - y at small sigma; score_x = score_y / m.
        m64 = self.sde.marginal_scale(t)
        sigma = self.sde.marginal_std(t) / m64
        sd = self.sigma_data
        norm = torch.sqrt(sigma * sigma + sd * sd)
        m, sig, nrm = (batch_view(v, x) for v in (m64, sigma, norm))
        label, y = y, x / m
        out = self._net(y / nrm, 0.25 * torch.log(sigma), label)
        if out.shape != x.shape:
            raise ValueError(f"net returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)}.")
        return (-y / (nrm * nrm) + (sd / (sig * nrm)) * out) / m

    def _energy_score(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # keep the graph of the gradient whenever the caller records one (training, ISM's trace), so the
        # loss can be differentiated through -grad_x E; under no_grad (sampling) the gradient is plain.
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            energy = self.net(xg, c)
            if energy.shape != x.shape[:1]:
                raise ValueError(f"parameterization='energy' needs a net returning [B] = [{x.shape[0]}] "
                                 f"(an EnergyNet), got shape {tuple(energy.shape)}.")
            (grad,) = torch.autograd.grad(energy.sum(), xg, create_graph=create_graph)
        return -grad

    def energy(self, x: torch.Tensor, t) -> torch.Tensor:
        """E(x, c(t)) [B] for parameterization='energy' (log p_t = -E + const)."""
        if self.parameterization != "energy":
            raise ValueError(f"energy() needs parameterization='energy', this model uses {self.parameterization!r}.")
        t = self._time(t, x)
        return self.net(x, self.conditioning(t))

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        return self.score(x, t, y)
