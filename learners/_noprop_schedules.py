"""NoProp noise schedules and the closed forms built on them (Li, Teh, Pascanu 2025).

Time runs from noise to label, the opposite of DDPM: ``alpha_bar[0]`` is about 0
(pure noise) and ``alpha_bar[T]`` about 1 (the label embedding). Everything here
is a free function of tensors so the tests can check it against hand formulas.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

ALPHA_BAR_MIN, ALPHA_BAR_MAX = 1e-4, 0.9999


def cosine_alpha_bar(T: int, s: float = 0.008, clip: tuple[float, float] = (ALPHA_BAR_MIN, ALPHA_BAR_MAX)
                     ) -> torch.Tensor:
    """The DT schedule: ᾱ_t for t = 0..T (float64, shape (T+1,)).

    The paper only says "fixed cosine noise schedule" (§2.3.2). We take the
    Nichol–Dhariwal cosine in reversed time, the spec's suggested default:
    ᾱ_t = f(T−t)/f(0), f(k) = cos²(((k/T) + s)/(1 + s) · π/2), clipped to
    [1e-4, 0.9999] so that SNR(T) stays finite (spec pitfall 2).
    """
    k = torch.arange(T, -1, -1, dtype=torch.float64)          # T−t for t = 0..T
    f = torch.cos(((k / T) + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return (f / f0).clamp(*clip)


def alphas_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """α_t with ᾱ_t = ∏_{s=t}^{T} α_s: α_t = ᾱ_t/ᾱ_{t+1} for t < T and α_T = ᾱ_T (Eq. 5)."""
    return torch.cat([alpha_bar[:-1] / alpha_bar[1:], alpha_bar[-1:]])


def snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    return alpha_bar / (1 - alpha_bar)


def posterior_coefficients(alpha_bar_prev: torch.Tensor, alpha_bar_t: torch.Tensor):
    """(a_t, b_t, c_t) of q(z_t | z_{t−1}, y) = N(a_t u_y + b_t z_{t−1}, c_t I) (Eq. 6, 40–41).

    ``alpha_bar_prev`` is ᾱ_{t−1} (the noisier level), ``alpha_bar_t`` is ᾱ_t,
    and α_{t−1} = ᾱ_{t−1}/ᾱ_t. Works for any pair of levels, which is how CT
    uses it on its integration grid.
    """
    alpha_prev = alpha_bar_prev / alpha_bar_t
    denom = 1 - alpha_bar_prev
    a = alpha_bar_t.sqrt() * (1 - alpha_prev) / denom
    b = alpha_prev.sqrt() * (1 - alpha_bar_t) / denom
    c = (1 - alpha_bar_t) * (1 - alpha_prev) / denom
    return a, b, c


def sample_marginal(u: torch.Tensor, alpha_bar, generator: torch.Generator) -> torch.Tensor:
    """z ~ q(z_t | y) = N(√ᾱ_t u_y, (1 − ᾱ_t) I), reparameterised so gradients reach u and ᾱ."""
    eps = torch.randn(u.shape, generator=generator, dtype=u.dtype, device=u.device)
    return alpha_bar.sqrt() * u + (1 - alpha_bar).sqrt() * eps


def kl_to_standard_normal(u: torch.Tensor, alpha_bar_0) -> torch.Tensor:
    """KL(q(z_0|y) ‖ N(0, I)) per sample, in closed form (Eq. 8's second term).

    q(z_0|y) = N(√ᾱ_0 u_y, (1 − ᾱ_0) I) in d dimensions:
    ½ [d(1 − ᾱ_0) + ᾱ_0 ‖u_y‖² − d − d log(1 − ᾱ_0)].
    """
    d = u.shape[-1]
    return 0.5 * (d * (1 - alpha_bar_0) + alpha_bar_0 * (u ** 2).sum(-1) - d - d * torch.log1p(-alpha_bar_0))


class PositiveLinear(nn.Module):
    """A linear layer whose weights are kept positive (softplus), so it is monotone increasing."""

    def __init__(self, n_in: int, n_out: int, generator: torch.Generator):
        super().__init__()
        self.raw_weight = nn.Parameter(torch.randn(n_out, n_in, generator=generator) * 0.5)
        self.bias = nn.Parameter(torch.randn(n_out, generator=generator) * 0.5)

    def forward(self, x):
        return F.linear(x, F.softplus(self.raw_weight), self.bias)


class LearnedSchedule(nn.Module):
    """NoProp-CT's learned schedule, paper App. B Eq. 65–67.

    γ(t) = γ_0 + (γ_1 − γ_0)(1 − γ̄(t)),  γ̄(t) = (γ̃(t) − γ̃(0)) / (γ̃(1) − γ̃(0)),
    with γ̃ a two-layer MLP with positive weights (monotone increasing), so γ
    decreases from γ(0) = γ_1 to γ(1) = γ_0 (the paper requires γ "monotonically
    decreasing in t"); SNR(t) = exp(−γ(t)) and ᾱ_t = sigmoid(−γ(t)). With the
    equation as written, γ_1 is the noise end and γ_0 the label end (VDM's names
    with time reversed). The spec's property list says γ(0) = γ_0, γ(1) = γ_1,
    which contradicts Eq. 65; we follow the equation.
    """

    def __init__(self, hidden: int = 64, gamma_noise: float = 9.0, gamma_label: float = -9.0, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(int(seed))
        self.l1 = PositiveLinear(1, hidden, gen)
        self.l2 = PositiveLinear(hidden, 1, gen)
        self.gamma_0 = nn.Parameter(torch.tensor(float(gamma_label)))   # label end, γ(1)
        self.gamma_1 = nn.Parameter(torch.tensor(float(gamma_noise)))   # noise end, γ(0)

    def _tilde_and_slope(self, t: torch.Tensor):
        """γ̃(t) = w2 · σ(w1 t + b1) + b2 and its derivative w2 · (σ(1 − σ) ⊙ w1), written out."""
        w1, w2 = F.softplus(self.l1.raw_weight).reshape(-1), F.softplus(self.l2.raw_weight).reshape(-1)
        s = torch.sigmoid(t.reshape(-1, 1) * w1 + self.l1.bias)
        value = s @ w2 + self.l2.bias
        slope = (s * (1 - s) * w1) @ w2
        return value.reshape(t.shape), slope.reshape(t.shape)

    def gamma_tilde(self, t: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.sigmoid(self.l1(t.reshape(-1, 1)))).reshape(t.shape)

    def gamma_and_slope(self, t: torch.Tensor):
        """γ(t) and dγ/dt."""
        ends, _ = self._tilde_and_slope(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device))
        value, slope = self._tilde_and_slope(t)
        span = ends[1] - ends[0]
        gamma = self.gamma_0 + (self.gamma_1 - self.gamma_0) * (1 - (value - ends[0]) / span)
        return gamma, -(self.gamma_1 - self.gamma_0) * slope / span

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        return self.gamma_and_slope(t)[0]

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(-self.gamma(t))

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma(t))

    def snr_and_derivative(self, t: torch.Tensor):
        """SNR(t) and SNR'(t) = −γ'(t) exp(−γ(t)), both differentiable w.r.t. ψ.

        The paper takes SNR' by autograd w.r.t. t (App. B); the chain rule written
        out gives the same number (tested against autograd and finite differences)
        without a double backward, which made a CT step 2.5x slower on CPU.
        """
        gamma, slope = self.gamma_and_slope(t)
        snr_t = torch.exp(-gamma)
        return snr_t, -slope * snr_t


def times_uniform_in_snr(schedule: LearnedSchedule, u: torch.Tensor, iterations: int = 50):
    """(t, SNR(1) − SNR(0)): t with SNR(t) = SNR(0) + u (SNR(1) − SNR(0)), u in [0, 1), so that
    SNR(t) is uniform; the span, detached, normalises the sampling density.

    The density of such t is p(t) = SNR'(t) / (SNR(1) − SNR(0)), proportional to Eq. 9's weight,
    so E_p[SNR'(t) ‖û − u_y‖² / p(t)] is the paper's denoising term with a constant weight: the
    same expectation as t ~ U(0, 1), without the weight's spread of several orders of magnitude.
    γ is monotone, so the inverse is found by bisection (no gradient: t is a sample).
    """
    with torch.no_grad():
        ends = schedule.snr(torch.tensor([0.0, 1.0], dtype=u.dtype, device=u.device))
        target = -torch.log(ends[0] + u * (ends[1] - ends[0]))          # the γ to reach
        lo, hi = torch.zeros_like(u), torch.ones_like(u)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            above = schedule.gamma(mid) > target                         # γ decreases in t
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (lo + hi) / 2, ends[1] - ends[0]
