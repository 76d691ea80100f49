"""JAX kernels of nlhf (:class:`nlhf.algorithms.protocols.Kernels`, docs/architecture.md §5).

The module-level functions are pure ``jax.numpy`` and jit-friendly (the trainer calls
them inside its jitted step); :class:`JaxKernels` bundles them for the backend object and
the conformance kit. Shapes follow :mod:`nlhf.algorithms.protocols`: B rows, T completion
tokens, V vocabulary; ``mask[b, n] = 1`` for real completion tokens (EOS included). All
log-probabilities use the sampling temperature: log π(·) = log_softmax(logits / T).

float64: JAX computes in float32 unless ``jax_enable_x64`` is on. nlhf never flips that
global switch. :class:`JaxKernels` enters the scoped ``jax.enable_x64(True)`` context
whenever an argument is 64-bit (``asarray(x, "float64")``, int64 tokens, ``grad`` of a
float64 array), so float64 conformance runs next to float32 training in one process.
Users who want float64 everywhere set ``JAX_ENABLE_X64=1`` themselves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from nlhf.algorithms.params import KLEstimator

__all__ = [
    "JaxKernels",
    "chunked_logits_logprobs",
    "chunked_sequence_logprobs",
    "chunked_token_logprobs",
    "dpo_loss",
    "egpo_loss",
    "exact_terms",
    "inpo_loss",
    "kl",
    "kl_from_logprobs",
    "mixture_logprobs",
    "nash_md_pg_loss",
    "nash_md_pg_loss_from_logprobs",
    "offline_ipo_loss",
    "online_ipo_loss",
    "online_ipo_loss_from_logprobs",
    "preference_loss",
    "sample",
    "sequence_logprobs",
    "sppo_loss",
    "token_logprobs",
]

_KL_ESTIMATORS = ("sampled", "k3", "exact")


def _float(x: jax.Array) -> jax.Array:
    """Half-precision logits are upcast to float32; float32/float64 are kept."""
    x = jnp.asarray(x)
    return x.astype(jnp.float32) if x.dtype in (jnp.float16, jnp.bfloat16) else x


def preference_loss(v_fwd: jax.Array, v_bwd: jax.Array, target: jax.Array) -> jax.Array:
    """Pairwise preference cross-entropy (paper §3): z = v_fwd − v_bwd,
    loss = mean_b −[p_b log σ(z_b) + (1 − p_b) log σ(−z_b)] (soft targets allowed)."""
    z = jnp.asarray(v_fwd) - jnp.asarray(v_bwd)
    p = jnp.asarray(target, dtype=z.dtype)
    return -jnp.mean(p * jax.nn.log_sigmoid(z) + (1.0 - p) * jax.nn.log_sigmoid(-z))


def mixture_logprobs(
    policy_logits: jax.Array, reference_logits: jax.Array, beta: Any, temperature: Any
) -> jax.Array:
    """Geometric mixture π̃_β ∝ π^(1−β) μ^β (arXiv:2312.00886 v4, App. F.3, eq. 15) at token
    level (its App. F.1):
    log π̃(·|x,y_<n) = log_softmax(((1−β)·ℓ_π + β·ℓ_μ) / T) over the last axis.
    (β and T may be traced scalars, so they are not range-checked here.)"""
    mixed = (1.0 - beta) * _float(policy_logits) + beta * _float(reference_logits)
    return jax.nn.log_softmax(mixed / temperature, axis=-1)


def sample(logprobs: jax.Array, uniforms: jax.Array) -> jax.Array:
    """Inverse-CDF sampling (protocols.CategoricalSampler): the smallest v with
    Σ_{w≤v} p_w > u, clamped to V−1. Shapes logprobs (..., V), uniforms (...)."""
    lp = jnp.asarray(logprobs)
    cdf = jnp.cumsum(jnp.exp(lp), axis=-1)
    u = jnp.asarray(uniforms).astype(cdf.dtype)
    idx = jnp.sum(cdf <= u[..., None], axis=-1)
    return jnp.minimum(idx, lp.shape[-1] - 1)


def token_logprobs(logits: jax.Array, tokens: jax.Array, temperature: Any) -> jax.Array:
    """log π(y_n|x,y_<n) = log_softmax(ℓ_n / T)[y_n], shape (B, T)."""
    logp = jax.nn.log_softmax(_float(logits) / temperature, axis=-1)
    return jnp.take_along_axis(logp, jnp.asarray(tokens)[..., None], axis=-1)[..., 0]


def sequence_logprobs(
    logits: jax.Array, tokens: jax.Array, mask: jax.Array, temperature: Any
) -> jax.Array:
    """log π(y|x) = Σ_n m_n log π(y_n|x,y_<n), shape (B,)."""
    lp = token_logprobs(logits, tokens, temperature)
    return jnp.sum(lp * jnp.asarray(mask).astype(lp.dtype), axis=-1)


def _map_chunks(
    one: Callable[..., tuple[jax.Array, jax.Array]],
    chunk: int,
    small: Sequence[jax.Array],
    large: jax.Array | None,
) -> tuple[jax.Array, jax.Array]:
    """``one(i0, *small_chunks, large)`` over chunks of ``chunk`` positions, outputs
    (B, T) each. The ``small`` inputs (B, T, ...) are cut and stacked for ``jax.lax.map``;
    ``large`` (B, T, V, the reference logits) is not: ``one`` slices its chunk itself
    from position i0 (``jax.lax.dynamic_slice_in_dim``), so no B×T×V copy of it is made.
    The last ``T mod chunk`` positions run as one more, shorter call."""
    b, t = small[0].shape[:2]
    n = t // chunk
    cut = n * chunk
    outs: list[tuple[jax.Array, jax.Array]] = []
    if n:

        def stacked(x: jax.Array) -> jax.Array:  # (B, cut, ...) -> (n, B, chunk, ...)
            return jnp.moveaxis(x[:, :cut].reshape(b, n, chunk, *x.shape[2:]), 1, 0)

        def body(args: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
            i, *parts = args
            return one(i * chunk, chunk, *parts, large)

        starts = jnp.arange(n, dtype=jnp.int32)
        mapped = jax.lax.map(body, (starts, *(stacked(x) for x in small)))
        outs.append(tuple(jnp.moveaxis(m, 0, 1).reshape(b, cut) for m in mapped))
    if cut < t:
        outs.append(one(cut, t - cut, *(x[:, cut:] for x in small), large))
    first, second = zip(*outs, strict=True)
    return jnp.concatenate(first, axis=1), jnp.concatenate(second, axis=1)


def chunked_token_logprobs(
    hidden: jax.Array,
    head: Callable[[jax.Array], jax.Array],
    tokens: jax.Array,
    temperature: Any,
    chunk: int,
    *,
    softcap: float | None = None,
    reference_logits: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """log π(y_n|·) (B, T) from the final hidden states (B, T, H) without holding the
    B×T×V logits: ``jax.lax.map`` over chunks of ``chunk`` positions (the last
    ``T mod chunk`` in one more call), each under ``jax.checkpoint`` so the backward
    recomputes its logits: ℓ = head(h) (the model's ``logits``, Gemma's soft-cap included;
    or c·tanh(ℓ/c) with ``softcap`` c), log_softmax(ℓ/T) gathered at y. With
    ``reference_logits`` (B, T, V) also the exact KL terms per position
    (:func:`exact_terms`), else None; each chunk reads its slice of them in place
    (:func:`_map_chunks`), so they are not copied. The torch backend's
    ``chunked_token_logprobs`` is the same computation."""
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of positions; got {chunk}")
    ref = None if reference_logits is None else jnp.asarray(reference_logits)

    @functools.partial(jax.checkpoint, static_argnums=(1,))
    def one(
        start: jax.Array, size: int, h: jax.Array, tok: jax.Array, ref: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        logits = _float(head(h))
        if softcap is not None:
            logits = jnp.tanh(logits / softcap) * softcap
        logp = jax.nn.log_softmax(logits / temperature, axis=-1)
        lp = jnp.take_along_axis(logp, tok[..., None], axis=-1)[..., 0]
        if ref is None:
            return lp, jnp.zeros_like(lp)
        part = jax.lax.dynamic_slice_in_dim(ref, start, size, axis=1)
        logq = jax.nn.log_softmax(_float(part) / temperature, axis=-1)
        return lp, exact_terms(logp, logq)

    lp, exact = _map_chunks(one, chunk, (hidden, jnp.asarray(tokens)), ref)
    return lp, (None if reference_logits is None else exact)


def chunked_logits_logprobs(
    logits: jax.Array, tokens: jax.Array, temperature: Any, chunk: int
) -> jax.Array:
    """:func:`token_logprobs` (B, T) of logits that exist already (B, T, V) — μ's from the
    decode — ``chunk`` positions at a time (:func:`_map_chunks`: each chunk sliced in
    place), so the log-softmax never makes a second B×T×V array."""
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of positions; got {chunk}")

    def one(start: jax.Array, size: int, tok: jax.Array, ref: jax.Array | None):
        assert ref is not None
        part = jax.lax.dynamic_slice_in_dim(ref, start, size, axis=1)
        lp = token_logprobs(part, tok, temperature)
        return lp, lp

    lp, _ = _map_chunks(one, chunk, (jnp.asarray(tokens),), jnp.asarray(logits))
    return lp


def chunked_sequence_logprobs(
    hidden: jax.Array,
    head: Callable[[jax.Array], jax.Array],
    tokens: jax.Array,
    mask: jax.Array,
    temperature: Any,
    chunk: int,
    *,
    softcap: float | None = None,
) -> jax.Array:
    """log π(y|x) = Σ_n m_n log π(y_n|·) (B,) by :func:`chunked_token_logprobs`."""
    lp, _ = chunked_token_logprobs(hidden, head, tokens, temperature, chunk, softcap=softcap)
    return jnp.sum(lp * jnp.asarray(mask).astype(lp.dtype), axis=-1)


def kl(
    policy_logits: jax.Array,
    reference_logits: jax.Array,
    tokens: jax.Array,
    mask: jax.Array,
    estimator: KLEstimator,
    temperature: Any,
) -> tuple[jax.Array, jax.Array]:
    """KL(π_θ‖μ) per row; returns ``(surrogate, value)``, each (B,) (docs/architecture.md §5).

    With ℓ_n = log π_θ(y_n|·) − log μ(y_n|·) at temperature T, summed where m_n = 1:

    - ``sampled``: value = Σ_n ℓ_n; surrogate = Σ_n log π_θ(y_n|·)·sg(Σ_{m≥n} ℓ_m)
      (score function with reward-to-go; ∇surrogate is unbiased for ∇KL).
    - ``k3`` (Schulman 2020): value = surrogate = Σ_n (e^{−ℓ_n} − 1 + ℓ_n).
    - ``exact``: value = surrogate = Σ_n Σ_v π(v|·)(log π(v|·) − log μ(v|·)) over the full
      vocabulary at each sampled prefix: unbiased for the sequence KL, but its gradient
      omits the effect of earlier tokens on the distribution of later prefixes.
    """
    if estimator not in _KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {_KL_ESTIMATORS}")
    logp = jax.nn.log_softmax(_float(policy_logits) / temperature, axis=-1)
    logq = jax.nn.log_softmax(_float(reference_logits) / temperature, axis=-1)
    if estimator == "exact":
        return kl_from_logprobs(None, None, mask, estimator, exact_terms(logp, logq))
    idx = jnp.asarray(tokens)[..., None]
    lp = jnp.take_along_axis(logp, idx, axis=-1)[..., 0]
    lq = jnp.take_along_axis(logq, idx, axis=-1)[..., 0]
    return kl_from_logprobs(lp, lq, mask, estimator)


def exact_terms(logp: jax.Array, logq: jax.Array) -> jax.Array:
    """Σ_v π(v|·)(log π(v|·) − log μ(v|·)) at each position, from log-probs (..., V)."""
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def kl_from_logprobs(
    lp: jax.Array | None,
    lq: jax.Array | None,
    mask: jax.Array,
    estimator: KLEstimator,
    exact: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """:func:`kl` from per-token log-probs ``lp`` = log π_θ(y_n|·), ``lq`` = log μ(y_n|·)
    (B, T) — or, for ``exact``, from the per-position full-vocabulary KL ``exact`` (B, T)
    (:func:`exact_terms`; e.g. from :func:`chunked_token_logprobs`)."""
    if estimator == "exact":
        if exact is None:
            raise ValueError("the exact KL estimator needs the per-position terms `exact`")
        value = jnp.sum(exact * jnp.asarray(mask).astype(exact.dtype), axis=-1)
        return value, value
    if lp is None or lq is None:
        raise ValueError(f"the {estimator} KL estimator needs token log-probs lp and lq")
    m = jnp.asarray(mask).astype(lp.dtype)
    ratio = (lp - lq) * m
    if estimator == "k3":
        value = jnp.sum((jnp.exp(-ratio) - 1.0 + ratio) * m, axis=-1)
        return value, value
    to_go = jnp.flip(jnp.cumsum(jnp.flip(jax.lax.stop_gradient(ratio), -1), -1), -1)
    surrogate = jnp.sum(lp * m * to_go, axis=-1)
    return surrogate, jnp.sum(ratio, axis=-1)


def nash_md_pg_loss(
    policy_logits: jax.Array,
    reference_logits: jax.Array,
    tokens: jax.Array,
    mask: jax.Array,
    preference: jax.Array,
    tau: Any,
    temperature: Any,
    estimator: KLEstimator,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Nash-MD-PG loss (arXiv:2312.00886 v4, §7; the gradient estimate of its App. F.2,
    eq. 13): mean_b[−(P_b − ½)·Σ_n m_bn log π_θ(y_bn|·) + τ·KL_b],
    P_b = P(y_b ≻ y'_b|x_b) held constant, KL_b the surrogate of :func:`kl`.

    Metrics (no gradient): ``score`` = mean_b −(P_b − ½)·log π_θ(y_b), ``kl`` = mean KL
    value, ``kl_surrogate``, ``preference`` = mean P, ``logprob`` = mean log π_θ(y_b)."""
    seq_lp = sequence_logprobs(policy_logits, tokens, mask, temperature)
    kl_terms = kl(policy_logits, reference_logits, tokens, mask, estimator, temperature)
    return nash_md_pg_loss_from_logprobs(seq_lp, kl_terms, preference, tau)


def nash_md_pg_loss_from_logprobs(
    seq_lp: jax.Array, kl_terms: tuple[jax.Array, jax.Array], preference: jax.Array, tau: Any
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """:func:`nash_md_pg_loss` from log π_θ(y_b|x_b) (B,) and the ``(surrogate, value)`` of
    :func:`kl` / :func:`kl_from_logprobs` (the chunked path, :func:`chunked_token_logprobs`)."""
    surrogate, value = kl_terms
    p = jax.lax.stop_gradient(jnp.asarray(preference).astype(seq_lp.dtype))
    score = -(p - 0.5) * seq_lp
    loss = jnp.mean(score + tau * surrogate)
    sg = jax.lax.stop_gradient
    metrics = {
        "score": sg(jnp.mean(score)),
        "kl": sg(jnp.mean(value)),
        "kl_surrogate": sg(jnp.mean(surrogate)),
        "preference": jnp.mean(p),
        "logprob": sg(jnp.mean(seq_lp)),
    }
    return loss, metrics


def online_ipo_loss(
    logits_y: jax.Array,
    reference_logits_y: jax.Array,
    y: jax.Array,
    y_mask: jax.Array,
    logits_y_prime: jax.Array,
    reference_logits_y_prime: jax.Array,
    y_prime: jax.Array,
    y_prime_mask: jax.Array,
    preference: jax.Array,
    tau: Any,
    temperature: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Online IPO (Calandriello et al. 2024, arXiv:2403.08635, §4, eq. 11; IPO-MD when y' comes
    from the mixture, its §5; the loss is arXiv:2310.12036 v2 eq. 17 on online pairs):
    h = log π/μ(y) − log π/μ(y'), loss = mean_b (h_b − (P_b − ½)/τ)², the sampled loss
    (h(y_w, y_l) − 1/(2τ))² averaged over the label y_w ~ Bernoulli(P) up to a constant in θ
    (:func:`nlhf.algorithms.numpy_oracle.online_ipo_loss`); the reference logits carry no
    gradient. Metrics (no gradient): ``preference`` (mean P), ``margin`` (mean s·h, s =
    sign(P − ½), +1 at ½),
    ``kl`` (mean log π/μ(y))."""
    sg = jax.lax.stop_gradient
    lp_y = sequence_logprobs(logits_y, y, y_mask, temperature)
    lq_y = sequence_logprobs(sg(reference_logits_y), y, y_mask, temperature)
    lp_p = sequence_logprobs(logits_y_prime, y_prime, y_prime_mask, temperature)
    lq_p = sequence_logprobs(sg(reference_logits_y_prime), y_prime, y_prime_mask, temperature)
    return online_ipo_loss_from_logprobs(lp_y, lq_y, lp_p, lq_p, preference, tau)


def online_ipo_loss_from_logprobs(
    lp_y: jax.Array,
    lq_y: jax.Array,
    lp_p: jax.Array,
    lq_p: jax.Array,
    preference: jax.Array,
    tau: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """:func:`online_ipo_loss` from the sequence log-probs (B,) of π_θ and μ on y and y'."""
    sg = jax.lax.stop_gradient
    lq_y, lq_p = sg(lq_y), sg(lq_p)
    p = sg(jnp.asarray(preference).astype(lp_y.dtype))
    h = (lp_y - lq_y) - (lp_p - lq_p)
    margin = jnp.where(p >= 0.5, 1.0, -1.0).astype(lp_y.dtype) * h
    loss = jnp.mean((h - (p - 0.5) / tau) ** 2)
    return loss, {"preference": jnp.mean(p), "margin": sg(jnp.mean(margin)),
                  "kl": sg(jnp.mean(lp_y - lq_y))}  # fmt: skip


def _pair_margin(
    policy_chosen: jax.Array,
    policy_rejected: jax.Array,
    reference_chosen: jax.Array,
    reference_rejected: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(h, log π/μ(y_w), log π/μ(y_l)); the cached reference log-probs stop-gradient."""
    sg = jax.lax.stop_gradient
    pc, pr = jnp.asarray(policy_chosen), jnp.asarray(policy_rejected)
    chosen = pc - sg(jnp.asarray(reference_chosen).astype(pc.dtype))
    rejected = pr - sg(jnp.asarray(reference_rejected).astype(pr.dtype))
    return chosen - rejected, chosen, rejected


def _pair_metrics(h: jax.Array, chosen: jax.Array, rejected: jax.Array) -> dict[str, jax.Array]:
    sg = jax.lax.stop_gradient
    return {
        "margin": sg(jnp.mean(h)),
        "accuracy": sg(jnp.mean((h > 0).astype(h.dtype))),
        "chosen_ratio": sg(jnp.mean(chosen)),
        "rejected_ratio": sg(jnp.mean(rejected)),
    }


def offline_ipo_loss(
    policy_chosen: jax.Array,
    policy_rejected: jax.Array,
    reference_chosen: jax.Array,
    reference_rejected: jax.Array,
    tau: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """IPO on fixed pairs (Azar et al. 2023, arXiv:2310.12036 v2, eq. 17):
    h = log π/μ(y_w) − log π/μ(y_l) from
    sequence log-probs (B,), loss = mean_b (h_b − 1/(2τ))²; the cached reference
    log-probs carry no gradient. Metrics (no gradient): ``margin``, ``accuracy``,
    ``chosen_ratio``, ``rejected_ratio``."""
    h, chosen, rejected = _pair_margin(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected
    )
    return jnp.mean((h - 1.0 / (2.0 * tau)) ** 2), _pair_metrics(h, chosen, rejected)


def dpo_loss(
    policy_chosen: jax.Array,
    policy_rejected: jax.Array,
    reference_chosen: jax.Array,
    reference_rejected: jax.Array,
    beta: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290, eq. 7): loss = mean_b −log σ(β·h_b) with
    ``jax.nn.log_sigmoid`` (stable for large |β·h|); h and the metrics as
    :func:`offline_ipo_loss`."""
    h, chosen, rejected = _pair_margin(
        policy_chosen, policy_rejected, reference_chosen, reference_rejected
    )
    return -jnp.mean(jax.nn.log_sigmoid(beta * h)), _pair_metrics(h, chosen, rejected)


def sppo_loss(
    policy: jax.Array, anchor: jax.Array, win_rate: jax.Array, eta: Any
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SPPO (Wu et al. 2024, arXiv:2405.00675 v5, eq. 4.6 = its Algorithm 1's eq. 4.7;
    protocols.SPPOObjective): loss =
    mean_b (log π_θ(y_b) − log π_t(y_b) − η·(P̂_b − ½))², the anchor log π_t under
    stop-gradient. Metrics (no gradient): ``log_ratio``, ``win_rate_gap`` (mean |P̂ − ½|)."""
    sg = jax.lax.stop_gradient
    policy = jnp.asarray(policy)
    ratio = policy - sg(jnp.asarray(anchor).astype(policy.dtype))
    gap = sg(jnp.asarray(win_rate).astype(policy.dtype)) - 0.5
    loss = jnp.mean((ratio - eta * gap) ** 2)
    return loss, {"log_ratio": sg(jnp.mean(ratio)), "win_rate_gap": jnp.mean(jnp.abs(gap))}


def inpo_loss(
    policy_y: jax.Array,
    policy_y_prime: jax.Array,
    anchor_y: jax.Array,
    anchor_y_prime: jax.Array,
    reference_y: jax.Array,
    reference_y_prime: jax.Array,
    preference: jax.Array,
    tau: Any,
    eta: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """INPO (Zhang et al., ICLR 2025, arXiv:2407.00617, ICLR version eq. 7–8, its η being
    1/η here; protocols.INPOObjective):
    h_t = log π_θ(y)/π_θ(y') − ητ·log μ(y)/μ(y') − (1 − ητ)·log π_t(y)/π_t(y'),
    loss = mean_b (h_t − η(P_b − ½))²; π_t and μ under stop-gradient. Metrics:
    ``preference``, ``margin`` (mean h_t), ``kl`` (mean log π_θ/μ(y))."""
    sg = jax.lax.stop_gradient
    py, pyp = jnp.asarray(policy_y), jnp.asarray(policy_y_prime)
    anchor = sg((jnp.asarray(anchor_y) - jnp.asarray(anchor_y_prime)).astype(py.dtype))
    reference = sg((jnp.asarray(reference_y) - jnp.asarray(reference_y_prime)).astype(py.dtype))
    h = (py - pyp) - eta * tau * reference - (1.0 - eta * tau) * anchor
    p = sg(jnp.asarray(preference).astype(py.dtype))
    loss = jnp.mean((h - eta * (p - 0.5)) ** 2)
    kl_y = sg(jnp.mean(py - jnp.asarray(reference_y).astype(py.dtype)))
    return loss, {"preference": jnp.mean(p), "margin": sg(jnp.mean(h)), "kl": kl_y}


def egpo_loss(
    policy_y: jax.Array,
    policy_y_prime: jax.Array,
    reference_y: jax.Array,
    reference_y_prime: jax.Array,
    preference: jax.Array,
    tau: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """EGPO (Zhou et al., COLM 2025, arXiv:2503.08942 v3, equation number not confirmed;
    protocols.EGPOObjective):
    h = log π/μ(y) − log π/μ(y'), loss = mean_b (h_b − (P_b − ½)/τ)², μ under
    stop-gradient. Metrics: ``preference``, ``margin`` (mean h), ``kl`` (mean log π_θ/μ(y))."""
    sg = jax.lax.stop_gradient
    py, pyp = jnp.asarray(policy_y), jnp.asarray(policy_y_prime)
    ratio_y = py - sg(jnp.asarray(reference_y).astype(py.dtype))
    h = ratio_y - (pyp - sg(jnp.asarray(reference_y_prime).astype(py.dtype)))
    p = sg(jnp.asarray(preference).astype(py.dtype))
    loss = jnp.mean((h - (p - 0.5) / tau) ** 2)
    return loss, {"preference": jnp.mean(p), "margin": sg(jnp.mean(h)), "kl": sg(jnp.mean(ratio_y))}


# ----------------------------------------------------------------------- Kernels object

_DTYPES = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": jnp.bfloat16,
    "int64": np.int64,
    "int32": np.int32,
    "bool": np.bool_,
}


def _is_64bit(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and np.dtype(dtype).itemsize == 8


def _x64_if_needed(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` under ``jax.enable_x64(True)`` when any argument is a 64-bit array."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        leaves = jax.tree_util.tree_leaves((args, kwargs))
        if any(_is_64bit(x) for x in leaves):
            with jax.enable_x64(True):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


class JaxKernels:
    """The kernel set of the jax backend (protocols.Kernels); float64 via scoped x64."""

    preference_loss = staticmethod(_x64_if_needed(preference_loss))
    mixture_logprobs = staticmethod(_x64_if_needed(mixture_logprobs))
    sample = staticmethod(_x64_if_needed(sample))
    kl = staticmethod(_x64_if_needed(kl))
    nash_md_pg_loss = staticmethod(_x64_if_needed(nash_md_pg_loss))
    sequence_logprobs = staticmethod(_x64_if_needed(sequence_logprobs))
    online_ipo_loss = staticmethod(_x64_if_needed(online_ipo_loss))
    # protocols.OfflinePairLosses
    offline_ipo_loss = staticmethod(_x64_if_needed(offline_ipo_loss))
    dpo_loss = staticmethod(_x64_if_needed(dpo_loss))
    # protocols.GameFamilyLosses
    sppo_loss = staticmethod(_x64_if_needed(sppo_loss))
    inpo_loss = staticmethod(_x64_if_needed(inpo_loss))
    egpo_loss = staticmethod(_x64_if_needed(egpo_loss))

    # protocols.PairGenerator: the production model and sampler of the jax backend
    def load_causal_lm(self, path: str | Path, dtype: str = "float32") -> Any:
        """:func:`nlhf_jax.models.load_model` (float64 under scoped x64)."""
        from nlhf_jax.models import load_model

        if dtype == "float64":
            with jax.enable_x64(True):
                return load_model(path, dtype=dtype)
        return load_model(path, dtype=dtype)

    def generate_pairs(
        self, policy: Any, reference: Any, input_ids: Any, attention_mask: Any, **kwargs: Any
    ) -> Any:
        """:func:`nlhf_jax.generation.generate_pairs` (under scoped x64 for float64
        uniforms; token ids are int32 in any case)."""
        from nlhf_jax.generation import generate_pairs

        ids, mask = (np.asarray(a).astype(np.int32) for a in (input_ids, attention_mask))
        if _is_64bit(kwargs.get("uniforms")):
            with jax.enable_x64(True):
                return generate_pairs(policy, reference, ids, mask, **kwargs)
        return generate_pairs(policy, reference, ids, mask, **kwargs)

    def sequence_logits(self, model: Any, *args: Any) -> jax.Array:
        """:func:`nlhf_jax.generation.sequence_logits` (token ids and masks as int32)."""
        from nlhf_jax.generation import sequence_logits

        arrays = [np.asarray(a).astype(np.int32) for a in args]
        if _is_64bit(model.model.embed_tokens[...]):
            with jax.enable_x64(True):
                return sequence_logits(model, *arrays)
        return sequence_logits(model, *arrays)

    def asarray(self, x: Any, dtype: str = "float64") -> jax.Array:
        """NumPy / Python data → a jax array of ``dtype`` (64-bit under scoped x64)."""
        np_dtype = _DTYPES[str(dtype)]
        arr = np.asarray(x).astype(np_dtype)
        if _is_64bit(arr):
            with jax.enable_x64(True):
                return jnp.asarray(arr)
        return jnp.asarray(arr)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def grad(self, fn: Callable[[jax.Array], Any], x: jax.Array) -> jax.Array:
        """∂fn(x)/∂x for a scalar fn, by ``jax.grad``."""
        if _is_64bit(x):
            with jax.enable_x64(True):
                return jax.grad(fn)(x)
        return jax.grad(fn)(x)
