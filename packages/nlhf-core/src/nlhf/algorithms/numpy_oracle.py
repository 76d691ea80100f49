"""The float64 NumPy oracle of every kernel in :mod:`nlhf.algorithms.protocols`.

Pure NumPy, written for clarity, not speed. Every backend is compared against these
functions by the conformance kit (:mod:`nlhf.testing`); the analytic gradients
(``*_grad``) are what backends' autograd results are checked against.

Conventions (as in protocols.py): shapes B batch, T tokens, V vocabulary;
``mask`` is 1 for real completion tokens and 0 for padding; all log-probabilities use
the sampling temperature, log π(·) = log_softmax(logits / T).

The forward functions also accept complex arrays: :class:`NumpyKernels` differentiates
them by the complex step, f'(x) = Im f(x + ih)/h (Squire & Trapp 1998), which is exact
to rounding and turns the stop-gradient sg(·) into ``Re(·)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nlhf.algorithms.params import KLEstimator

ESTIMATORS: tuple[KLEstimator, ...] = ("sampled", "k3", "exact")

# --------------------------------------------------------------------------- helpers


def _arr(x: Any) -> np.ndarray:
    """float64 (or complex128, for the complex step) copy-free view of ``x``."""
    a = np.asarray(x)
    if np.iscomplexobj(a):
        return a.astype(np.complex128, copy=False)
    return a.astype(np.float64, copy=False)


def sg(x: np.ndarray) -> np.ndarray:
    """Stop-gradient: the identity on real arrays, the real part under the complex step."""
    return np.real(x) if np.iscomplexobj(x) else x


def log_softmax(z: Any, axis: int = -1) -> np.ndarray:
    """log softmax(z) = z − max z − log Σ exp(z − max z) (max over the real part)."""
    z = _arr(z)
    shifted = z - np.max(np.real(z), axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def log_sigmoid(z: Any) -> np.ndarray:
    """log σ(z), stable for both signs: −log1p(e^{−z}) for z ≥ 0, z − log1p(e^{z}) else."""
    z = _arr(z)
    pos = np.real(z) >= 0
    zp = np.where(pos, z, 0.0)
    zn = np.where(pos, 0.0, z)
    return np.where(pos, -np.log1p(np.exp(-zp)), zn - np.log1p(np.exp(zn)))


def sigmoid(z: Any) -> np.ndarray:
    """σ(z) = exp(log σ(z))."""
    return np.exp(log_sigmoid(z))


def token_logprobs(logits: Any, tokens: Any, temperature: float) -> np.ndarray:
    """log π(y_n | ·) = log_softmax(logits / T)[..., y_n]; logits (B,T,V), tokens (B,T)."""
    lp = log_softmax(_arr(logits) / temperature)
    return np.take_along_axis(lp, np.asarray(tokens, dtype=np.int64)[..., None], axis=-1)[..., 0]


def _onehot(tokens: Any, vocab: int) -> np.ndarray:
    return (np.asarray(tokens, dtype=np.int64)[..., None] == np.arange(vocab)).astype(np.float64)


def sequence_logprobs(logits: Any, tokens: Any, mask: Any, temperature: float) -> np.ndarray:
    """log π(y|x) = Σ_n m_n log_softmax(ℓ_n / T)[y_n], shape (B,)."""
    return np.sum(_arr(mask) * token_logprobs(logits, tokens, temperature), axis=-1)


def sequence_logprobs_grad(
    logits: Any, tokens: Any, mask: Any, temperature: float, row_weights: Any | None = None
) -> np.ndarray:
    """∇_logits Σ_b w_b log π(y_b|x_b) = w_b·m_bn·(1[v = y_bn] − π_v)/T, shape (B, T, V)."""
    z = np.real(_arr(logits))
    w = np.ones(z.shape[0]) if row_weights is None else np.real(_arr(row_weights))
    pi = np.exp(log_softmax(z / temperature))
    dlogp = (_onehot(tokens, z.shape[-1]) - pi) / temperature
    return w[:, None, None] * np.real(_arr(mask))[..., None] * dlogp


# ----------------------------------------------------------------- preference loss


def preference_loss(v_fwd: Any, v_bwd: Any, target: Any) -> np.ndarray:
    """Pairwise preference cross-entropy (paper §3):
    loss = mean_b −[p_b log σ(z_b) + (1−p_b) log σ(−z_b)], z_b = v_fwd_b − v_bwd_b."""
    z = _arr(v_fwd) - _arr(v_bwd)
    p = _arr(target)
    return np.mean(-(p * log_sigmoid(z) + (1.0 - p) * log_sigmoid(-z)))


def preference_loss_grad(v_fwd: Any, v_bwd: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """∂loss/∂v_fwd = (σ(z) − p)/B and ∂loss/∂v_bwd = −(σ(z) − p)/B."""
    z = _arr(v_fwd) - _arr(v_bwd)
    g = (sigmoid(z) - _arr(target)) / z.size
    return g, -g


# ------------------------------------------------------------- mixture and sampling


def mixture_logprobs(
    policy_logits: Any, reference_logits: Any, beta: float, temperature: float
) -> np.ndarray:
    """Geometric mixture π̃_β ∝ π^(1−β) μ^β (arXiv:2312.00886 v4, App. F.3, eq. 15), per
    token as in its App. F.1: log π̃ = log_softmax(((1−β)·ℓ_π + β·ℓ_μ) / T) over the last
    axis."""
    mixed = (1.0 - beta) * _arr(policy_logits) + beta * _arr(reference_logits)
    return log_softmax(mixed / temperature)


def sample(logprobs: Any, uniforms: Any) -> np.ndarray:
    """Inverse-CDF sampling: the smallest v with Σ_{w≤v} p_w > u, clamped to V−1 (int64)."""
    lp = np.real(_arr(logprobs))
    cdf = np.cumsum(np.exp(lp), axis=-1)
    u = np.asarray(uniforms, dtype=np.float64)[..., None]
    idx = np.sum(cdf <= u, axis=-1)
    return np.minimum(idx, lp.shape[-1] - 1).astype(np.int64)


def cdf_margin(logprobs: Any, uniforms: Any) -> float:
    """min |u − CDF_v| over all boundaries: how far the uniforms are from a tie."""
    cdf = np.cumsum(np.exp(np.real(_arr(logprobs))), axis=-1)
    u = np.asarray(uniforms, dtype=np.float64)[..., None]
    return float(np.min(np.abs(cdf - u)))


# ------------------------------------------------------------------------------- KL


def kl(
    policy_logits: Any,
    reference_logits: Any,
    tokens: Any,
    mask: Any,
    estimator: KLEstimator,
    temperature: float,
) -> tuple[np.ndarray, np.ndarray]:
    """KL(π_θ‖μ) of sampled sequences per row: ``(surrogate, value)``, each (B,).

    ℓ_n = log π_θ(y_n|·) − log μ(y_n|·) at temperature T, m_n the mask:
    - sampled: value = Σ_n m_n ℓ_n; surrogate = Σ_n m_n log π_θ(y_n|·)·sg(Σ_{m≥n} m_m ℓ_m)
      (score function with reward-to-go; gradient unbiased for ∇KL).
    - k3: value = surrogate = Σ_n m_n (e^{−ℓ_n} − 1 + ℓ_n) (Schulman 2020).
    - exact: value = surrogate = Σ_n m_n Σ_v π(v|·)(log π(v|·) − log μ(v|·)); unbiased for
      the sequence KL, but its gradient omits earlier tokens' effect on later states.
    """
    m = _arr(mask)
    if estimator == "exact":
        lp = log_softmax(_arr(policy_logits) / temperature)
        lq = log_softmax(_arr(reference_logits) / temperature)
        per_token = np.sum(np.exp(lp) * (lp - lq), axis=-1)
        value = np.sum(m * per_token, axis=-1)
        return value, value
    lp_tok = token_logprobs(policy_logits, tokens, temperature)
    lq_tok = token_logprobs(reference_logits, tokens, temperature)
    ratio = lp_tok - lq_tok
    if estimator == "k3":
        value = np.sum(m * (np.exp(-ratio) - 1.0 + ratio), axis=-1)
        return value, value
    if estimator == "sampled":
        value = np.sum(m * ratio, axis=-1)
        to_go = np.cumsum((m * sg(ratio))[..., ::-1], axis=-1)[..., ::-1]
        surrogate = np.sum(m * lp_tok * to_go, axis=-1)
        return surrogate, value
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {ESTIMATORS}")


def kl_grad(
    policy_logits: Any,
    reference_logits: Any,
    tokens: Any,
    mask: Any,
    estimator: KLEstimator,
    temperature: float,
    row_weights: Any | None = None,
) -> np.ndarray:
    """∇_{policy_logits} Σ_b w_b·surrogate_b (analytic; w = 1 by default), shape (B,T,V).

    With π = softmax(z/T), ∂ log π(y)/∂z_v = (1[v=y] − π_v)/T, so
    - sampled: m_n·R_n·(1[v=y_n] − π_v)/T with R_n = Σ_{m≥n} m_m ℓ_m held constant;
    - k3: m_n·(1 − e^{−ℓ_n})·(1[v=y_n] − π_v)/T;
    - exact: m_n·π_v·(d_v − KL_n)/T with d_v = log π_v − log μ_v, KL_n = Σ_v π_v d_v.
    """
    z = np.real(_arr(policy_logits))
    m = np.real(_arr(mask))
    w = np.ones(z.shape[0]) if row_weights is None else np.real(_arr(row_weights))
    lp = log_softmax(z / temperature)
    pi = np.exp(lp)
    if estimator == "exact":
        d = lp - log_softmax(np.real(_arr(reference_logits)) / temperature)
        per_token_kl = np.sum(pi * d, axis=-1, keepdims=True)
        g = pi * (d - per_token_kl) / temperature
        return w[:, None, None] * m[..., None] * g
    dlogp = (_onehot(tokens, z.shape[-1]) - pi) / temperature
    ratio = token_logprobs(z, tokens, temperature) - token_logprobs(
        reference_logits, tokens, temperature
    )
    if estimator == "k3":
        coef = 1.0 - np.exp(-ratio)
    elif estimator == "sampled":
        coef = np.cumsum((m * ratio)[..., ::-1], axis=-1)[..., ::-1]
    else:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {ESTIMATORS}")
    return w[:, None, None] * (m * coef)[..., None] * dlogp


# ---------------------------------------------------------------------- Nash-MD-PG


def nash_md_pg_loss(
    policy_logits: Any,
    reference_logits: Any,
    tokens: Any,
    mask: Any,
    preference: Any,
    tau: float,
    temperature: float,
    estimator: KLEstimator,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Nash-MD-PG loss (arXiv:2312.00886 v4, §7; the gradient estimate of its App. F.2,
    eq. 13): mean_b[−(P_b − ½)·Σ_n m_bn log π_θ(y_bn|·) + τ·KL_b],
    P_b constant, KL_b the surrogate of :func:`kl`. Metrics: ``score`` (mean of the first
    term), ``kl`` (mean KL value), ``preference`` (mean P)."""
    m = _arr(mask)
    p = sg(_arr(preference))
    logp_seq = np.sum(m * token_logprobs(policy_logits, tokens, temperature), axis=-1)
    score_rows = -(p - 0.5) * logp_seq
    surrogate, value = kl(policy_logits, reference_logits, tokens, mask, estimator, temperature)
    loss = np.mean(score_rows + tau * surrogate)
    metrics = {
        "score": np.mean(score_rows),
        "kl": np.mean(value),
        "preference": np.mean(p),
    }
    return loss, metrics


def nash_md_pg_loss_grad(
    policy_logits: Any,
    reference_logits: Any,
    tokens: Any,
    mask: Any,
    preference: Any,
    tau: float,
    temperature: float,
    estimator: KLEstimator,
) -> np.ndarray:
    """∇_{policy_logits} loss = (1/B)[−(P_b − ½)·m_bn·(1[v=y_bn] − π_v)/T + τ·∂KL_b/∂z]."""
    z = np.real(_arr(policy_logits))
    m = np.real(_arr(mask))
    p = np.real(_arr(preference))
    batch = z.shape[0]
    pi = np.exp(log_softmax(z / temperature))
    dlogp = (_onehot(tokens, z.shape[-1]) - pi) / temperature
    score = (-(p - 0.5))[:, None, None] * m[..., None] * dlogp
    g_kl = kl_grad(z, reference_logits, tokens, mask, estimator, temperature)
    return (score + tau * g_kl) / batch


# ---------------------------------------------------------------------- online IPO


def online_ipo_loss(
    logits_y: Any,
    reference_logits_y: Any,
    y: Any,
    y_mask: Any,
    logits_y_prime: Any,
    reference_logits_y_prime: Any,
    y_prime: Any,
    y_prime_mask: Any,
    preference: Any,
    tau: float,
    temperature: float,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Online IPO (Calandriello et al. 2024, arXiv:2403.08635, §4, eq. 11; IPO-MD when y' comes
    from the mixture, its §5): the sampled IPO loss (arXiv:2310.12036 v2, eq. 17) on pairs
    sampled online, its label y_w ~ Bernoulli(P) averaged out. With
    h_b = log π/μ(y_b) − log π/μ(y'_b) (sequence log-ratios), E[(h(y_w, y_l) − 1/(2τ))²] =
    (h_b − (P_b − ½)/τ)² + a constant in θ, so loss = mean_b (h_b − (P_b − ½)/τ)² (for
    P ∈ {0, 1} the sampled loss itself): its fixed point is the regularised Nash equilibrium
    of P, where ordering pairs by sign(P − ½) would solve the game of the 0/1 majority
    instead. Metrics: ``preference`` (mean P), ``margin`` (mean s·h with s = sign(P − ½),
    +1 at ½: the preferred response's margin), ``kl`` (mean log π/μ(y))."""

    ratio_y = sequence_logprobs(logits_y, y, y_mask, temperature) - sequence_logprobs(
        sg(_arr(reference_logits_y)), y, y_mask, temperature
    )
    ratio_yp = sequence_logprobs(
        logits_y_prime, y_prime, y_prime_mask, temperature
    ) - sequence_logprobs(sg(_arr(reference_logits_y_prime)), y_prime, y_prime_mask, temperature)
    p = np.real(_arr(preference))
    h = ratio_y - ratio_yp
    margin = np.where(p >= 0.5, 1.0, -1.0) * h
    loss = np.mean((h - (p - 0.5) / tau) ** 2)
    return loss, {"preference": np.mean(p), "margin": np.mean(margin), "kl": np.mean(ratio_y)}


def online_ipo_loss_grad(
    logits_y: Any,
    reference_logits_y: Any,
    y: Any,
    y_mask: Any,
    logits_y_prime: Any,
    reference_logits_y_prime: Any,
    y_prime: Any,
    y_prime_mask: Any,
    preference: Any,
    tau: float,
    temperature: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(∇_{logits_y}, ∇_{logits_y'}) of the online IPO loss: with e_b = h_b − (P_b − ½)/τ,
    ∂loss/∂h_b = 2·e_b/B, so ∇_{logits_y} = (2 e_b/B)·∇ log π(y_b) and
    ∇_{logits_y'} = −(2 e_b/B)·∇ log π(y'_b) (:func:`sequence_logprobs_grad`)."""
    args = (logits_y, reference_logits_y, y, y_mask)
    args_p = (logits_y_prime, reference_logits_y_prime, y_prime, y_prime_mask)
    h = (
        sequence_logprobs(args[0], y, y_mask, temperature)
        - sequence_logprobs(args[1], y, y_mask, temperature)
        - sequence_logprobs(args_p[0], y_prime, y_prime_mask, temperature)
        + sequence_logprobs(args_p[1], y_prime, y_prime_mask, temperature)
    )
    h = np.real(h)
    p = np.real(_arr(preference))
    coef = 2.0 * (h - (p - 0.5) / tau) / h.size
    g_y = sequence_logprobs_grad(logits_y, y, y_mask, temperature, coef)
    g_yp = sequence_logprobs_grad(logits_y_prime, y_prime, y_prime_mask, temperature, -coef)
    return g_y, g_yp


# ------------------------------------------------------------ offline IPO and DPO


def _pair_margin(
    policy_chosen: Any, policy_rejected: Any, reference_chosen: Any, reference_rejected: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(h, log π/μ(y_w), log π/μ(y_l)); the reference log-probs under sg(·)."""
    chosen = _arr(policy_chosen) - sg(_arr(reference_chosen))
    rejected = _arr(policy_rejected) - sg(_arr(reference_rejected))
    return chosen - rejected, chosen, rejected


def _pair_metrics(h: np.ndarray, chosen: np.ndarray, rejected: np.ndarray) -> dict[str, Any]:
    return {
        "margin": np.mean(np.real(h)),
        "accuracy": np.mean(np.real(h) > 0),
        "chosen_ratio": np.mean(np.real(chosen)),
        "rejected_ratio": np.mean(np.real(rejected)),
    }


def offline_ipo_loss(
    policy_chosen: Any,
    policy_rejected: Any,
    reference_chosen: Any,
    reference_rejected: Any,
    tau: float,
) -> tuple[np.ndarray, dict[str, Any]]:
    """IPO on fixed pairs (Azar et al. 2023, arXiv:2310.12036 v2, eq. 17):
    h = log π/μ(y_w) − log π/μ(y_l),
    loss = mean_b (h_b − 1/(2τ))². Metrics: ``margin``, ``accuracy``, ``chosen_ratio``,
    ``rejected_ratio``."""
    h, chosen, rejected = _pair_margin(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected
    )
    return np.mean((h - 1.0 / (2.0 * tau)) ** 2), _pair_metrics(h, chosen, rejected)


def offline_ipo_loss_grad(
    policy_chosen: Any,
    policy_rejected: Any,
    reference_chosen: Any,
    reference_rejected: Any,
    tau: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(∂/∂ log π(y_w), ∂/∂ log π(y_l)) of the offline IPO loss: ±2(h_b − 1/(2τ))/B."""
    h, _, _ = _pair_margin(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    g = 2.0 * (np.real(h) - 1.0 / (2.0 * tau)) / h.size
    return g, -g


def dpo_loss(
    policy_chosen: Any,
    policy_rejected: Any,
    reference_chosen: Any,
    reference_rejected: Any,
    beta: float,
) -> tuple[np.ndarray, dict[str, Any]]:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290, eq. 7): loss = mean_b −log σ(β·h_b)
    (:func:`log_sigmoid`, stable for both signs). Metrics as :func:`offline_ipo_loss`."""
    h, chosen, rejected = _pair_margin(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected
    )
    return -np.mean(log_sigmoid(beta * h)), _pair_metrics(h, chosen, rejected)


def dpo_loss_grad(
    policy_chosen: Any,
    policy_rejected: Any,
    reference_chosen: Any,
    reference_rejected: Any,
    beta: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(∂/∂ log π(y_w), ∂/∂ log π(y_l)) of the DPO loss: ∓β·σ(−β·h_b)/B."""
    h, _, _ = _pair_margin(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    g = -beta * sigmoid(-beta * np.real(h)) / h.size
    return g, -g


# ------------------------------------------------- the game family: SPPO, INPO, EGPO
# These kernels take sequence log-probs (B,) (:func:`sequence_logprobs`); π_t (``anchor``,
# the policy at the start of the step) and μ (``reference``) carry no gradient.


def sppo_loss(
    policy: Any, anchor: Any, win_rate: Any, eta: float
) -> tuple[np.ndarray, dict[str, Any]]:
    """SPPO (Wu et al. 2024, arXiv:2405.00675 v5, eq. 4.6, the loss of its Algorithm 1,
    eq. 4.7): the paper's squared-loss objective on responses sampled from π_t, per
    response:
    loss = mean_b (log π_θ(y_b) − log π_t(y_b) − η·(P̂_b − ½))², P̂_b the estimated win
    rate P̂(y_b ≻ π_t). Metrics: ``log_ratio`` (mean log π_θ/π_t), ``win_rate_gap``
    (mean |P̂ − ½|)."""
    ratio = _arr(policy) - sg(_arr(anchor))
    target = eta * (np.real(_arr(win_rate)) - 0.5)
    metrics = {
        "log_ratio": np.mean(np.real(ratio)),
        "win_rate_gap": np.mean(np.abs(target)) / eta,
    }
    return np.mean((ratio - target) ** 2), metrics


def sppo_loss_grad(policy: Any, anchor: Any, win_rate: Any, eta: float) -> np.ndarray:
    """∂ SPPO loss / ∂ log π_θ(y_b) = 2·(log π_θ/π_t(y_b) − η(P̂_b − ½))/B (none to π_t)."""
    ratio = np.real(_arr(policy) - _arr(anchor))
    return 2.0 * (ratio - eta * (np.real(_arr(win_rate)) - 0.5)) / ratio.size


def _inpo_margin(
    policy_y: Any,
    policy_y_prime: Any,
    anchor_y: Any,
    anchor_y_prime: Any,
    reference_y: Any,
    reference_y_prime: Any,
    tau: float,
    eta: float,
) -> np.ndarray:
    """h_t = log π_θ(y)/π_θ(y') − ητ·log μ(y)/μ(y') − (1 − ητ)·log π_t(y)/π_t(y')."""
    anchor = sg(_arr(anchor_y)) - sg(_arr(anchor_y_prime))
    reference = sg(_arr(reference_y)) - sg(_arr(reference_y_prime))
    policy = _arr(policy_y) - _arr(policy_y_prime)
    return policy - eta * tau * reference - (1.0 - eta * tau) * anchor


def inpo_loss(
    policy_y: Any,
    policy_y_prime: Any,
    anchor_y: Any,
    anchor_y_prime: Any,
    reference_y: Any,
    reference_y_prime: Any,
    preference: Any,
    tau: float,
    eta: float,
) -> tuple[np.ndarray, dict[str, Any]]:
    """INPO (Zhang et al., ICLR 2025, arXiv:2407.00617, ICLR version: L_t(π) of eq. 7 and
    the population loss of eq. 8, Algorithm 1; the paper's η is 1/η here): the paper's
    pairwise loss on pairs sampled from π_t:
    loss = mean_b (h_t(y_b, y'_b) − η·(P_b − ½))² with h_t of :func:`_inpo_margin`,
    the expectation over the label y_w ~ Bernoulli(P) of the paper's (h_t(y_w, y_l) −
    η/2)², up to a constant. Its minimiser is π ∝ π_t^(1−ητ) μ^(ητ) exp(η P(y ≻ π_t)).
    Metrics: ``preference`` (mean P), ``margin`` (mean h_t), ``kl`` (mean log π_θ/μ(y))."""
    h = _inpo_margin(
        policy_y, policy_y_prime, anchor_y, anchor_y_prime, reference_y, reference_y_prime, tau, eta
    )
    p = np.real(_arr(preference))
    kl_y = np.real(_arr(policy_y) - _arr(reference_y))
    metrics = {"preference": np.mean(p), "margin": np.mean(np.real(h)), "kl": np.mean(kl_y)}
    return np.mean((h - eta * (p - 0.5)) ** 2), metrics


def inpo_loss_grad(
    policy_y: Any,
    policy_y_prime: Any,
    anchor_y: Any,
    anchor_y_prime: Any,
    reference_y: Any,
    reference_y_prime: Any,
    preference: Any,
    tau: float,
    eta: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(∂/∂ log π_θ(y), ∂/∂ log π_θ(y')) of the INPO loss: ±2·(h_t − η(P − ½))/B."""
    h = np.real(
        _inpo_margin(
            policy_y,
            policy_y_prime,
            anchor_y,
            anchor_y_prime,
            reference_y,
            reference_y_prime,
            tau,
            eta,
        )
    )
    g = 2.0 * (h - eta * (np.real(_arr(preference)) - 0.5)) / h.size
    return g, -g


def egpo_loss(
    policy_y: Any,
    policy_y_prime: Any,
    reference_y: Any,
    reference_y_prime: Any,
    preference: Any,
    tau: float,
) -> tuple[np.ndarray, dict[str, Any]]:
    """EGPO's loss (Zhou et al., COLM 2025, arXiv:2503.08942 v3; equation number not
    confirmed): the online IPO form that
    the paper's practical extragradient step minimises, as in the authors' code
    (``ExtragradientTrainer._compute_losses``, github.com/zhourunlong/EGPO); with
    h = log π/μ(y) − log π/μ(y'), loss = mean_b (h_b − (P_b − ½)/τ)².
    Metrics: ``preference`` (mean P), ``margin`` (mean h), ``kl`` (mean log π_θ/μ(y))."""
    ratio_y = _arr(policy_y) - sg(_arr(reference_y))
    h = ratio_y - (_arr(policy_y_prime) - sg(_arr(reference_y_prime)))
    p = np.real(_arr(preference))
    metrics = {
        "preference": np.mean(p),
        "margin": np.mean(np.real(h)),
        "kl": np.mean(np.real(ratio_y)),
    }
    return np.mean((h - (p - 0.5) / tau) ** 2), metrics


def egpo_loss_grad(
    policy_y: Any,
    policy_y_prime: Any,
    reference_y: Any,
    reference_y_prime: Any,
    preference: Any,
    tau: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(∂/∂ log π_θ(y), ∂/∂ log π_θ(y')) of the EGPO loss: ±2·(h_b − (P_b − ½)/τ)/B."""
    h = np.real(_arr(policy_y) - _arr(reference_y) - _arr(policy_y_prime) + _arr(reference_y_prime))
    g = 2.0 * (h - (np.real(_arr(preference)) - 0.5) / tau) / h.size
    return g, -g


# --------------------------------------------------------------------- tabular


def tabular_nash_md(
    P: Any,
    mu: Any,
    tau: float,
    steps: int,
    eta: float | Literal["auto"] = "auto",
    pi0: Any | None = None,
) -> np.ndarray:
    """Tabular Nash-MD (arXiv:2312.00886 v4, eq. 3–4), returns the trajectory π_0..π_steps,
    shape (steps+1, n):
    π_t^μ ∝ π_t^(1−η_t τ) μ^(η_t τ);  π_{t+1}(y) ∝ π_t^μ(y)·exp(η_t (P π_t^μ)_y),
    η_t = 2/(τ(t+2)) for ``eta="auto"`` (t = 0, 1, …), π_0 = μ unless given."""
    P = _arr(P)
    log_mu = np.log(_arr(mu))
    log_pi = log_mu.copy() if pi0 is None else np.log(_arr(pi0))
    out = [np.exp(log_pi)]
    for t in range(steps):
        e = 2.0 / (tau * (t + 2)) if eta == "auto" else float(eta)
        log_mix = log_softmax((1.0 - e * tau) * log_pi + e * tau * log_mu)
        log_pi = log_softmax(log_mix + e * (P @ np.exp(log_mix)))
        out.append(np.exp(log_pi))
    return np.stack(out)


# --------------------------------------------------------------------- kernels


def complex_step_grad(fn: Callable[[np.ndarray], Any], x: Any, h: float = 1e-30) -> np.ndarray:
    """∂fn/∂x_i = Im fn(x + i·h·e_i)/h for each element (exact to rounding; no cancellation).
    ``fn`` must be analytic in x and write stop-gradients as :func:`sg`."""
    x = np.real(_arr(x))
    g = np.empty_like(x)
    flat = g.reshape(-1)
    xc = x.astype(np.complex128)
    xf = xc.reshape(-1)
    for i in range(xf.size):
        xf[i] += 1j * h
        flat[i] = np.imag(np.asarray(fn(xc))) / h
        xf[i] -= 1j * h
    return g


def central_difference_grad(fn: Callable[[np.ndarray], Any], x: Any, h: float = 1e-3) -> np.ndarray:
    """Central finite differences with one Richardson step (error O(h⁴)):
    D(h) = (f(x+h) − f(x−h))/2h, grad ≈ (4·D(h/2) − D(h))/3. Differentiates *through*
    stop-gradients (a real-valued fn cannot tell them apart)."""
    x = np.real(_arr(x)).copy()
    g = np.empty_like(x)
    flat, xf = g.reshape(-1), x.reshape(-1)

    def d(i: int, step: float) -> float:
        old = xf[i]
        xf[i] = old + step
        up = float(np.real(fn(x)))
        xf[i] = old - step
        down = float(np.real(fn(x)))
        xf[i] = old
        return (up - down) / (2 * step)

    for i in range(xf.size):
        flat[i] = (4 * d(i, h / 2) - d(i, h)) / 3
    return g


class NumpyKernels:
    """The :class:`nlhf.algorithms.protocols.Kernels` of the ``numpy`` backend: the oracle
    functions above on float64 arrays. ``grad(fn, x)`` is numerical, in float64: the
    complex step by default (exact to rounding, honours sg(·)); ``grad_method="central"``
    gives Richardson central differences (accurate to ~1e-10, but it differentiates
    through stop-gradients, so it is wrong for the ``sampled`` KL surrogate). Autograd
    backends (torch, jax) use their autograd instead."""

    def __init__(self, grad_method: Literal["complex_step", "central"] = "complex_step") -> None:
        self.grad_method = grad_method

    preference_loss = staticmethod(preference_loss)
    mixture_logprobs = staticmethod(mixture_logprobs)
    sample = staticmethod(sample)
    kl = staticmethod(kl)
    nash_md_pg_loss = staticmethod(nash_md_pg_loss)
    sequence_logprobs = staticmethod(sequence_logprobs)
    online_ipo_loss = staticmethod(online_ipo_loss)
    offline_ipo_loss = staticmethod(offline_ipo_loss)
    dpo_loss = staticmethod(dpo_loss)
    sppo_loss = staticmethod(sppo_loss)
    inpo_loss = staticmethod(inpo_loss)
    egpo_loss = staticmethod(egpo_loss)

    # PairGenerator: the float64 NumPy forward of nlhf.testing.numpy_lm
    def load_causal_lm(self, path: str | Path, dtype: str = "float64") -> Any:
        from nlhf.testing.numpy_lm import NumpyLM

        return NumpyLM.load(path)

    def generate_pairs(
        self,
        policy: Any,
        reference: Any,
        input_ids: Any,
        attention_mask: Any,
        *,
        uniforms: Any,
        **kwargs: Any,
    ) -> Any:
        from nlhf.testing.numpy_lm import generate_pairs

        return generate_pairs(policy, reference, input_ids, attention_mask, uniforms, **kwargs)

    def sequence_logits(
        self,
        model: Any,
        prompt_ids: Any,
        prompt_mask: Any,
        completion_ids: Any,
        completion_mask: Any,
    ) -> np.ndarray:
        ids = np.concatenate([np.asarray(prompt_ids), np.asarray(completion_ids)], axis=1)
        mask = np.concatenate([np.asarray(prompt_mask), np.asarray(completion_mask)], axis=1)
        t = np.shape(completion_ids)[1]
        return model.logits(ids, mask)[:, -t - 1 : -1]

    def asarray(self, x: Any, dtype: str = "float64") -> np.ndarray:
        return np.asarray(x, dtype=np.dtype(dtype))

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def grad(self, fn: Callable[[np.ndarray], Any], x: Any) -> np.ndarray:
        if self.grad_method == "central":
            return central_difference_grad(fn, x)
        return complex_step_grad(fn, x)
