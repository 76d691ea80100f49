"""Metrics of a policy π in the τ-regularised preference game (paper §3, §5).

The game: player 1 picks π, player 2 picks π', player 1 earns
P(π ≻ π') − τ KL(π‖μ) + τ KL(π'‖μ). It is symmetric and antisymmetric
(P(π'≻π) = 1 − P(π≻π')), so its value is ½ and its unique NE is (π*_τ, π*_τ) with
π*_τ = softmax(log μ + P π*_τ / τ).

**Duality gap** of the symmetric profile (π, π) — what the best deviation of player 1
gains plus what the best deviation of player 2 gains. With the Gibbs variational
formula max_π' [P(π'≻π) − τ KL(π'‖μ)] = τ log Σ_y μ(y) e^{(Pπ)_y/τ}:

    gap(π) = max_π' [P(π'≻π) − τKL(π'‖μ) + τKL(π‖μ)]
             − min_π' [P(π≻π') − τKL(π‖μ) + τKL(π'‖μ)]
           = 2τ log Σ_y μ(y) e^{(Pπ)_y/τ} + 2τ KL(π‖μ) − 1    (docs/architecture.md §5).

It is ≥ 0 (take π' = π, which earns ½ in the first max) and = 0 iff π is its own
regularised best response, i.e. π = π*_τ. At τ = 0 it is 2·exploitability.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp, rel_entr


def kl_divergence(p: np.ndarray, q: np.ndarray | None, *, log_q: np.ndarray | None = None) -> float:
    """KL(p‖q) = Σ_y p(y) log(p(y)/q(y)) with 0·log 0 = 0 (inf where q = 0 < p).

    ``log_q`` (optional, then ``q`` may be None) gives log q exactly, for policies kept in
    log space whose probabilities underflow.
    """
    p = np.asarray(p, dtype=np.float64)
    if log_q is None:
        if q is None:
            raise ValueError("kl_divergence needs q or log_q")
        return float(np.sum(rel_entr(p, np.asarray(q, dtype=np.float64))))
    mask = p > 0
    return float(np.sum(p[mask] * (np.log(p[mask]) - log_q[mask])))


def win_rates(P: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """(Pπ)_y = P(y ≻ π) for every response y."""
    return P @ pi


def preference(P: np.ndarray, pi: np.ndarray, pi_prime: np.ndarray) -> float:
    """P(π ≻ π') = πᵀ P π'."""
    return float(pi @ P @ pi_prime)


def exploitability(P: np.ndarray, pi: np.ndarray) -> float:
    """max_y P(y ≻ π) − ½ = max_y (Pπ)_y − ½ (≥ 0; 0 iff π is a maximal lottery)."""
    return float(np.max(P @ pi) - 0.5)


def soft_value(P: np.ndarray, mu: np.ndarray, pi: np.ndarray, tau: float) -> float:
    """max_π' [P(π'≻π) − τ KL(π'‖μ)] = τ log Σ_y μ(y) e^{(Pπ)_y/τ} (= max_y (Pπ)_y at τ=0)."""
    u = P @ pi
    if tau == 0:
        return float(np.max(u))
    return float(tau * logsumexp(np.log(mu) + u / tau))


def duality_gap(P: np.ndarray, mu: np.ndarray, pi: np.ndarray, tau: float) -> float:
    """2τ log Σ_y μ(y) e^{(Pπ)_y/τ} + 2τ KL(π‖μ) − 1 (module docstring)."""
    kl = kl_divergence(pi, mu) if tau > 0 else 0.0
    return 2.0 * soft_value(P, mu, pi, tau) + 2.0 * tau * kl - 1.0


def regularized_best_response(
    P: np.ndarray, mu: np.ndarray, pi: np.ndarray, tau: float
) -> np.ndarray:
    """argmax_π' P(π'≻π) − τ KL(π'‖μ) = softmax(log μ + Pπ/τ) (τ > 0)."""
    z = np.log(mu) + (P @ pi) / tau
    return np.exp(z - logsumexp(z))
