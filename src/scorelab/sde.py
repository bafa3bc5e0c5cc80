"""Forward diffusion processes: the VE, VP and sub-VP SDEs of Song et al. 2021 (ICLR), "Score-Based
Generative Modeling through Stochastic Differential Equations".

All three are linear SDEs

    dx = a(t) x dt + g(t) dw,        t in [0, T], T = 1,

whose transition kernel is Gaussian,  p_0t(x_t | x_0) = N(m(t) x_0, s(t)^2 I).  Each process therefore
exposes the scalar functions ``marginal_scale`` m(t), ``marginal_std`` s(t), ``diffusion`` g(t) and
``drift_coeff`` a(t); samplers, losses and the likelihood use those and never ask which process they hold.

Tensors are ``[B, *dims]``; time is a tensor ``[B]`` (a float is broadcast at public entry points).

The marginals here are the exact solutions of the SDEs. For VE this means s(t)^2 = sigma(t)^2 - sigma_min^2
(the process starts from the data itself at t = 0), where the reference code of Song et al. uses
s(t) = sigma(t); the difference is below sigma_min and vanishes as sigma_min -> 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._checks import batch_view, check_batch, check_finite, check_positive, check_time

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def reverse_drift(a, g, x: torch.Tensor, score: torch.Tensor, c: float) -> torch.Tensor:
    """a x - c g^2 score: the drift of the reverse-time SDE (c = 1, Anderson 1982) or of the probability-flow
    ODE (c = 1/2, Song et al. 2021, eq. 13) of dx = a x dt + g dw. a, g broadcastable against x (or floats);
    written g (g score) so that g^2 never overflows a low-precision dtype. The one place this formula lives."""
    return a * x - c * g * (g * score)


class SDE:
    """A linear forward SDE dx = a(t) x dt + g(t) dw with Gaussian transition kernel N(m(t) x_0, s(t)^2 I).

    Subclasses implement the scalar schedule: ``drift_coeff``, ``diffusion``, ``marginal_scale``,
    ``marginal_std``, ``t_from_log_snr`` and the attribute ``prior_std``.
    """

    T: float = 1.0
    prior_std: float = 1.0

    def __init__(self, N: int = 1000):
        if not isinstance(N, int) or N < 1:
            raise ValueError(f"N (number of discretisation steps) must be a positive integer, got {N!r}.")
        self.N = N

    # ---- scalar schedule (unchecked, any tensor shape; used inside loops) ----
    def drift_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """a(t) such that the drift is f(x, t) = a(t) x."""
        raise NotImplementedError

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """g(t), the diffusion coefficient."""
        raise NotImplementedError

    def marginal_scale(self, t: torch.Tensor) -> torch.Tensor:
        """m(t): the mean of p_0t(x_t | x_0) is m(t) x_0."""
        raise NotImplementedError

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """s(t): the standard deviation of p_0t(x_t | x_0)."""
        raise NotImplementedError

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log(m(t)^2 / s(t)^2), strictly decreasing in t."""
        return 2 * (torch.log(self.marginal_scale(t)) - torch.log(self.marginal_std(t)))

    def t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """The inverse of ``log_snr``."""
        raise NotImplementedError

    def t_from_std_ratio(self, sigma: torch.Tensor) -> torch.Tensor:
        """Time at which s(t) / m(t) = sigma (the noise level of x_t / m(t), as in EDM's sigma)."""
        return self.t_from_log_snr(-2 * torch.log(sigma))

    # ---- vector-level methods (public ones validate, underscored ones do not) ----
    def _sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return batch_view(self.drift_coeff(t), x) * x, self.diffusion(t)

    def sde(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(x, t) [B, *dims] and diffusion g(t) [B] of the forward SDE."""
        check_batch(x)
        return self._sde(x, check_time(t, x, self.T))

    def marginal_prob(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean [B, *dims] and std [B] of p_0t(x_t | x_0) = N(m(t) x_0, s(t)^2 I)."""
        check_batch(x0, "x0")
        check_finite(x0, "x0")
        t = check_time(t, x0, self.T)
        return batch_view(self.marginal_scale(t), x0) * x0, self.marginal_std(t)

    def prior_sampling(self, shape, generator: torch.Generator | None = None, device=None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Samples of the prior p_T = N(0, prior_std^2 I), shape ``shape`` = (B, *dims)."""
        shape = tuple(int(s) for s in shape)
        if len(shape) < 1 or any(s < 1 for s in shape):
            raise ValueError(f"shape must be (B, *dims) with positive sizes, got {shape}.")
        if generator is not None and device is None:
            device = generator.device
        return self.prior_std * torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I), summed over all but the batch dimension: [B]."""
        check_batch(z, "z")
        D = z[0].numel()
        sq = z.flatten(1).pow(2).sum(1) if z.ndim > 1 else z.pow(2)
        return -0.5 * sq / self.prior_std**2 - D * (_HALF_LOG_2PI + math.log(self.prior_std))

    def transition(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward kernel p(x_t | x_s) = N(r x_s, v I) for s <= t: r = m(t) / m(s), v = s(t)^2 - r^2 s(s)^2.

        Returns (r, sqrt(v)), shaped like s and t. Every discretisation, ancestral step and re-noising step is
        built from it; call it in float64 and cast the result (the schedule's own precision)."""
        r = self.marginal_scale(t) / self.marginal_scale(s)
        v = self.marginal_std(t) ** 2 - (r * self.marginal_std(s)) ** 2
        return r, v.clamp_min(0.0).sqrt()

    def _discretize(self, x: torch.Tensor, t: torch.Tensor, dt) -> tuple[torch.Tensor, torch.Tensor]:
        # the exact kernel from t - dt to t: SMLD's for VE, DDPM's for VP
        r, G = self.transition((t - dt).clamp_min(0.0), t)
        return batch_view(r - 1, x) * x, G

    def _reverse_drift(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor, c: float) -> torch.Tensor:
        return reverse_drift(batch_view(self.drift_coeff(t), x), batch_view(self.diffusion(t), x), x, score, c)

    def discretize(self, x: torch.Tensor, t, dt: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the discretised forward process from t - dt to t: x_t = x_{t-dt} + f + G z.

        Returns f [B, *dims] (evaluated at x = x_{t-dt}) and G [B], from the exact kernel ``transition``: the
        SMLD kernel for VE, the DDPM kernel for VP. ``dt`` defaults to T / N.
        """
        check_batch(x)
        t = check_time(t, x, self.T)
        dt = self.T / self.N if dt is None else dt
        if isinstance(dt, (int, float)):
            dt = check_positive(dt, "dt")
        return self._discretize(x, t, dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or, with probability_flow=True, the probability-flow ODE) driven by score_fn."""
        if not callable(score_fn):
            raise TypeError("score_fn must be a callable score_fn(x, t) -> tensor shaped like x.")
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """dx = [f(x, t) - c g(t)^2 score(x, t)] dt + [c' g(t)] dw_bar, run from T down to 0.

    c = 1, c' = 1 for the reverse-time SDE (Anderson 1982); c = 1/2, c' = 0 for the probability-flow ODE.
    ``sde``/``discretize`` validate their inputs; ``_sde``/``_discretize`` do not (for sampler loops).
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)
        self.T = forward.T
        self.N = forward.N
        self._c = 0.5 if self.probability_flow else 1.0

    def sde(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse drift [B, *dims] and diffusion [B] (zero for the probability-flow ODE)."""
        check_batch(x)
        return self._sde(x, check_time(t, x, self.T))

    def _sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.forward.diffusion(t)
        drift = self.forward._reverse_drift(x, t, self.score_fn(x, t), self._c)
        return drift, (torch.zeros_like(g) if self.probability_flow else g)

    def discretize(self, x: torch.Tensor, t, dt: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse step x_{t-dt} = x_t - rev_f + rev_G z, built from the forward discretisation."""
        check_batch(x)
        t = check_time(t, x, self.T)
        return self._discretize(x, t, self.T / self.N if dt is None else dt)

    def _discretize(self, x: torch.Tensor, t: torch.Tensor, dt) -> tuple[torch.Tensor, torch.Tensor]:
        f, G = self.forward._discretize(x, t, dt)
        rev_f = f - self._c * batch_view(G * G, x) * self.score_fn(x, t)
        return rev_f, (torch.zeros_like(G) if self.probability_flow else G)


class VESDE(SDE):
    """Variance exploding: dx = sqrt(d sigma(t)^2 / dt) dw, sigma(t) = sigma_min (sigma_max / sigma_min)^t.

    Defaults sigma_min = 0.01, sigma_max = 50 (Song et al. 2021, CIFAR-10). The SMLD/NCSN noise ladder is
    its discretisation (Song & Ermon 2019).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        sigma_min = check_positive(sigma_min, "sigma_min")
        sigma_max = check_positive(sigma_max, "sigma_max")
        if sigma_min >= sigma_max:
            raise ValueError(
                f"VESDE needs sigma_min < sigma_max, got sigma_min={sigma_min} and sigma_max={sigma_max}; "
                "sigma_max is usually the largest pairwise distance in the data (Song & Ermon 2020)."
            )
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.prior_std = sigma_max
        self._log_ratio = math.log(sigma_max / sigma_min)

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, N={self.N})"

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def drift_coeff(self, t):
        return torch.zeros_like(t)

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2 * self._log_ratio)

    def marginal_scale(self, t):
        return torch.ones_like(t)

    def marginal_std(self, t):
        return self.sigma_min * torch.sqrt(torch.expm1(2 * self._log_ratio * t))

    def log_snr(self, t):
        return -2 * math.log(self.sigma_min) - torch.log(torch.expm1(2 * self._log_ratio * t))

    def t_from_log_snr(self, lam):
        return torch.log1p(torch.exp(-lam) / self.sigma_min**2) / (2 * self._log_ratio)


class _BetaSchedule:
    """beta(t) together with its integral B(t) = int_0^t beta and the inverse of B."""

    def beta(self, t):
        raise NotImplementedError

    def integral(self, t):
        raise NotImplementedError

    def t_from_integral(self, B):
        raise NotImplementedError


class LinearBeta(_BetaSchedule):
    """beta(t) = beta_min + t (beta_max - beta_min) (Ho et al. 2020 in the continuum limit)."""

    def __init__(self, beta_min: float, beta_max: float):
        self.beta_min, self.beta_max = beta_min, beta_max
        self._d = beta_max - beta_min

    def beta(self, t):
        return self.beta_min + t * self._d

    def integral(self, t):
        return self.beta_min * t + 0.5 * self._d * t * t

    def t_from_integral(self, B):
        # root of 0.5 d t^2 + beta_min t - B = 0, written to be stable when d -> 0
        return 2 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * self._d * B))


class TruncatedCosineBeta(_BetaSchedule):
    """alpha_bar(t) = f(t) / f(0), f(t) = cos(((t_max t + s) / (1 + s)) pi / 2)^2 (Nichol & Dhariwal 2021).

    t_max = 0.9946 keeps alpha_bar(1) > 0 (about 7e-5), so beta(t) stays finite on [0, 1] (the same
    truncation DPM-Solver uses for this schedule).
    """

    def __init__(self, s: float = 0.008, t_max: float = 0.9946):
        self.s, self.t_max = s, t_max
        self._log_f0 = 2 * math.log(math.cos(s / (1 + s) * math.pi / 2))

    def _angle(self, t):
        return (self.t_max * t + self.s) / (1 + self.s) * (math.pi / 2)

    def beta(self, t):
        return self.t_max * math.pi / (1 + self.s) * torch.tan(self._angle(t))

    def integral(self, t):
        return self._log_f0 - 2 * torch.log(torch.cos(self._angle(t)))

    def t_from_integral(self, B):
        angle = torch.acos(torch.exp(0.5 * (self._log_f0 - B)).clamp(max=1.0))
        return (angle * (2 / math.pi) * (1 + self.s) - self.s) / self.t_max


def _beta_schedule(name: str, beta_min: float, beta_max: float) -> _BetaSchedule:
    if name == "linear":
        if not (math.isfinite(beta_min) and math.isfinite(beta_max)) or beta_min < 0 or beta_max <= 0:
            raise ValueError(f"beta_min must be >= 0 and beta_max > 0, got {beta_min}, {beta_max}.")
        if beta_min > beta_max:
            raise ValueError(f"beta_min must not exceed beta_max, got beta_min={beta_min} > beta_max={beta_max}.")
        if 0.5 * (beta_min + beta_max) > 200:  # int_0^1 beta: alpha_bar(1) = exp(-it) underflows what steps resolve
            raise ValueError(f"int_0^1 beta = {0.5 * (beta_min + beta_max):.4g} > 200 leaves alpha_bar(1) = exp(-that) "
                             "(the data's scale m(T) below 1e-43): no sampler resolves it, even in float64; keep "
                             "beta_min + beta_max <= 400 (Song et al. 2021 use 0.1 and 20).")
        return LinearBeta(float(beta_min), float(beta_max))
    if name == "cosine":
        return TruncatedCosineBeta()
    raise ValueError(f"Unknown beta schedule {name!r}; choose 'linear' or 'cosine'.")


class VPSDE(SDE):
    """Variance preserving: dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw; the continuum limit of DDPM.

    Defaults beta_min = 0.1, beta_max = 20 (Song et al. 2021), matching DDPM's 1000 linear betas from
    1e-4 to 0.02 (Ho et al. 2020). ``schedule="cosine"`` uses the cosine alpha_bar of Nichol & Dhariwal 2021
    (beta_min/beta_max are then unused).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000, schedule: str = "linear"):
        super().__init__(N)
        self.beta_min, self.beta_max, self.schedule = beta_min, beta_max, schedule
        self._sched = _beta_schedule(schedule, beta_min, beta_max)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max}, N={self.N}, "
                f"schedule={self.schedule!r})")

    def beta(self, t):
        return self._sched.beta(t)

    def drift_coeff(self, t):
        return -0.5 * self._sched.beta(t)

    def diffusion(self, t):
        return torch.sqrt(self._sched.beta(t))

    def marginal_scale(self, t):
        return torch.exp(-0.5 * self._sched.integral(t))

    def marginal_std(self, t):
        return torch.sqrt(-torch.expm1(-self._sched.integral(t)))

    def log_snr(self, t):
        return -torch.log(torch.expm1(self._sched.integral(t)))

    def t_from_log_snr(self, lam):
        return self._sched.t_from_integral(torch.nn.functional.softplus(-lam))

    def alpha_bar(self, t):
        """alpha_bar(t) = m(t)^2 = exp(-int_0^t beta)."""
        return torch.exp(-self._sched.integral(t))

    def discrete_betas(self, N: int | None = None, dtype=torch.float64) -> torch.Tensor:
        """DDPM betas beta_i = 1 - alpha_bar(i/N) / alpha_bar((i-1)/N), i = 1..N: the chain whose marginals
        equal this SDE's at t = i/N. For the linear schedule they are ~ beta(t_i)/N (Ho et al.'s 1e-4..0.02)."""
        N = self.N if N is None else N
        t = torch.arange(N + 1, dtype=dtype) / N
        return -torch.expm1(-torch.diff(self._sched.integral(t)))


class SubVPSDE(VPSDE):
    """sub-VP: dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw (Song et al. 2021).

    Same mean as VP, variance s(t)^2 = (1 - exp(-int_0^t beta))^2, below VP's at every t > 0.
    """

    def diffusion(self, t):
        B = self._sched.integral(t)
        return torch.sqrt(self._sched.beta(t) * -torch.expm1(-2 * B))

    def marginal_std(self, t):
        return -torch.expm1(-self._sched.integral(t))

    def log_snr(self, t):
        B = self._sched.integral(t)
        return -B - 2 * torch.log(-torch.expm1(-B))

    def t_from_log_snr(self, lam):
        return self._sched.t_from_integral(2 * torch.asinh(0.5 * torch.exp(-0.5 * lam)))

