"""Jitted pair generation for Nash-MD-PG and its variants (paper §7; docs/architecture.md §5–§6).

For every prompt x we draw y ~ π_θ(·|x) and y' from an opponent, token by token:
``mixture`` (Nash-MD-PG): log π̃(·|x,y'_<n) = log_softmax(((1−β)ℓ_π + βℓ_μ)/T);
``reference`` (best response, β = 1); ``policy`` (self-play, β = 0); ``model``
(Nash-EMA-PG: ``opponent_model``'s logits, mixed with μ by β when β > 0).

What makes it fast (docs/architecture.md §6), all inside one ``jax.jit``:

1. each model prefills the left-padded prompts once into a static-shape KV cache of
   length P + max_new_tokens, then the cache is tiled to the 2B rows it serves;
2. the caches of policy, reference (and opponent) are stepped in lockstep by a
   ``lax.while_loop``, one token per iteration, written with ``dynamic_update_slice``;
3. only last-position logits are computed;
4. y rows and y' rows go through the policy in ONE batch of 2B;
5. per-row EOS: the mask includes the EOS token, later tokens are ``pad`` with mask 0,
   and the loop stops once every row has finished;
6. with ``return_reference_logits`` the reference also decodes the y rows and returns its
   logits for them, so the KL term needs no separate reference forward.

Randomness: ``uniforms[row, step]`` (rows 0..B−1 = y, B..2B−1 = y'), consumed by inverse
CDF exactly like :func:`nlhf_jax.kernels.sample`, or drawn from a PRNG ``key`` as
``jax.random.uniform(key, (2B, max_new_tokens))``. These are the conventions of the
``PairGenerator`` Protocol (:mod:`nlhf.algorithms.protocols`), which every backend's
sampler follows, so the backends draw the same tokens from the same uniforms (the
conformance kit's ``test_generate_pairs``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx
from nlhf.algorithms.generation import Opponent, check_generation_args

from nlhf_jax.kernels import mixture_logprobs, sample
from nlhf_jax.models.decoder import positions_from_mask

__all__ = ["PairGeneration", "generate_pairs", "sequence_hidden", "sequence_logits"]


@dataclass
class PairGeneration:
    """Sampled pairs: ``y``/``y_prime`` (B, T) int32 (pad after EOS), masks (B, T) int32
    (1 up to and including EOS), ``reference_logits`` (B, T, V) predicting each y token
    (zeros after a row's EOS) when requested, and ``steps`` (decode iterations run)."""

    y: jax.Array
    y_mask: jax.Array
    y_prime: jax.Array
    y_prime_mask: jax.Array
    reference_logits: jax.Array | None
    steps: jax.Array


def sequence_logits(
    model: Any,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    completion_ids: jax.Array,
    completion_mask: jax.Array,
) -> jax.Array:
    """Logits (B, T, V) predicting each completion token, from ONE forward pass over
    prompt + completion (left-padded prompts; positions from the attention mask)."""
    ids = jnp.concatenate([prompt_ids, completion_ids.astype(prompt_ids.dtype)], axis=1)
    mask = jnp.concatenate([prompt_mask, completion_mask.astype(prompt_mask.dtype)], axis=1)
    t = completion_ids.shape[1]
    logits, _ = model(ids, mask)
    return logits[:, -t - 1 : -1]


def sequence_hidden(
    model: Any,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    completion_ids: jax.Array,
    completion_mask: jax.Array,
) -> jax.Array:
    """The LM head's inputs of :func:`sequence_logits`: final hidden states (B, T, H)
    predicting each completion token (``model.model``; ``model.logits`` maps them to
    logits), for :func:`nlhf_jax.kernels.chunked_token_logprobs`."""
    ids = jnp.concatenate([prompt_ids, completion_ids.astype(prompt_ids.dtype)], axis=1)
    mask = jnp.concatenate([prompt_mask, completion_mask.astype(prompt_mask.dtype)], axis=1)
    t = completion_ids.shape[1]
    hidden, _ = model.model(ids, mask)
    return hidden[:, -t - 1 : -1]


def _prefill(model: Any, ids: jax.Array, mask: jax.Array, length: int, rows: int):
    """Prefill B prompts into a cache of ``length`` slots; tile cache and logits to
    ``rows`` (a multiple of B: row r serves prompt r mod B)."""
    b, p = ids.shape
    cache = model.init_cache(b, length, dtype=model.model.embed_tokens[...].dtype)
    kv_mask = jnp.zeros((b, length), mask.dtype).at[:, :p].set(mask)
    logits, cache = model(
        ids, kv_mask, positions_from_mask(mask), cache=cache, cache_index=0, last_only=True
    )
    reps = rows // b
    if reps > 1:
        cache = jax.tree.map(lambda c: jnp.concatenate([c] * reps, axis=0), cache)
        logits = jnp.concatenate([logits] * reps, axis=0)
    return logits, cache


@functools.partial(
    jax.jit,
    static_argnames=(
        "graphdefs",
        "max_new_tokens",
        "eos_ids",
        "pad_token_id",
        "opponent",
        "mix_beta_is",
        "return_reference_logits",
    ),
)
def _decode(
    graphdefs: tuple[Any, Any, Any],
    states: tuple[Any, Any, Any],
    input_ids: jax.Array,
    attention_mask: jax.Array,
    uniforms: jax.Array,
    beta: jax.Array,
    temperature: jax.Array,
    *,
    max_new_tokens: int,
    eos_ids: tuple[int, ...],
    pad_token_id: int,
    opponent: Opponent,
    mix_beta_is: Literal["zero", "one", "mid"],
    return_reference_logits: bool,
):
    policy = nnx.merge(graphdefs[0], *states[0])
    reference = nnx.merge(graphdefs[1], *states[1])
    opp = nnx.merge(graphdefs[2], *states[2]) if graphdefs[2] is not None else None
    b, p = input_ids.shape
    n_rows, t_max, length = 2 * b, max_new_tokens, p + max_new_tokens
    # which streams run, on how many rows (static)
    policy_rows = n_rows if opponent in ("mixture", "policy") and mix_beta_is != "one" else b
    ref_rows = n_rows if return_reference_logits else (b if mix_beta_is != "zero" else 0)

    streams = {"policy": (policy, policy_rows)}
    if ref_rows:
        streams["reference"] = (reference, ref_rows)
    if opp is not None:
        streams["opponent"] = (opp, b)
    logits0, caches = {}, {}
    for name, (model, rows) in streams.items():
        logits0[name], caches[name] = _prefill(model, input_ids, attention_mask, length, rows)
    vocab = logits0["policy"].shape[-1]
    kv_mask0 = jnp.zeros((n_rows, length), jnp.int32)
    kv_mask0 = kv_mask0.at[:, :p].set(jnp.concatenate([attention_mask] * 2, 0).astype(jnp.int32))
    prompt_len = jnp.sum(kv_mask0, axis=-1)
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)

    def row_logits(name: str, logits: jax.Array, which: Literal["y", "yp"]) -> jax.Array:
        rows = streams[name][1]
        if which == "y":
            return logits[:b]
        return logits[b:] if rows == n_rows else logits

    def body(carry):
        n, logits, caches, tokens, finished, kv_mask, ref_buf = carry
        lp_y = jax.nn.log_softmax(logits["policy"][:b] / temperature, axis=-1)
        if opponent == "reference":
            base = row_logits("reference", logits["reference"], "yp")
            lp_yp = mixture_logprobs(base, base, 1.0, temperature)
        else:
            base_name = "opponent" if opponent == "model" else "policy"
            base = row_logits(base_name, logits[base_name], "yp")
            if mix_beta_is == "zero" or opponent == "policy":
                lp_yp = jax.nn.log_softmax(base / temperature, axis=-1)
            else:
                ref = row_logits("reference", logits["reference"], "yp")
                lp_yp = mixture_logprobs(base, ref, beta, temperature)
        u = jax.lax.dynamic_index_in_dim(uniforms, n, axis=1, keepdims=False)
        new = sample(jnp.concatenate([lp_y, lp_yp], 0), u).astype(jnp.int32)
        new = jnp.where(finished, pad_token_id, new)
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, new, n, axis=1)
        if return_reference_logits:
            ref_y = jnp.where(finished[:b, None], 0.0, logits["reference"][:b])
            ref_buf = jax.lax.dynamic_update_index_in_dim(
                ref_buf, ref_y.astype(ref_buf.dtype), n, axis=1
            )
        finished = finished | jnp.any(new[:, None] == eos[None, :], axis=-1)
        kv_mask = jax.lax.dynamic_update_index_in_dim(
            kv_mask, jnp.ones((n_rows,), jnp.int32), p + n, axis=1
        )
        pos = (prompt_len + n)[:, None]
        new_logits, new_caches = {}, {}
        for name, (model, rows) in streams.items():
            sel = slice(None) if rows == n_rows else slice(b, None)
            if name == "policy" and rows == b:
                sel = slice(None, b)
            out, new_caches[name] = model(
                new[sel, None],
                kv_mask[sel],
                pos[sel],
                cache=caches[name],
                cache_index=p + n,
                last_only=True,
            )
            new_logits[name] = out.astype(logits[name].dtype)
        return n + 1, new_logits, new_caches, tokens, finished, kv_mask, ref_buf

    def cond(carry):
        n, finished = carry[0], carry[4]
        return (n < t_max) & ~jnp.all(finished)

    ref_buf = (
        jnp.zeros((b, t_max, vocab), logits0["reference"].dtype)
        if return_reference_logits
        else jnp.zeros((), jnp.float32)
    )
    tokens0 = jnp.full((n_rows, t_max), pad_token_id, jnp.int32)
    carry = (jnp.int32(0), logits0, caches, tokens0, jnp.zeros((n_rows,), bool), kv_mask0, ref_buf)
    n, _, _, tokens, _, _, ref_buf = jax.lax.while_loop(cond, body, carry)
    # mask: 1 up to and including the first EOS
    is_eos = jnp.any(tokens[..., None] == eos, axis=-1)
    ended_before = jnp.cumsum(is_eos, axis=1) - is_eos
    steps_mask = jnp.arange(t_max)[None, :] < n
    mask = ((ended_before == 0) & steps_mask).astype(jnp.int32)
    return tokens, mask, (ref_buf if return_reference_logits else None), n


def _split(model: Any) -> tuple[Any, tuple[Any, ...]]:
    """``(graphdef, states)`` of a module, or a pair that is already split."""
    if isinstance(model, tuple):
        graphdef, states = model
        return graphdef, tuple(states)
    graphdef, state = nnx.split(model)
    return graphdef, (state,)


def generate_pairs(
    policy: Any,
    reference: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    *,
    beta: float,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int,
    opponent: Opponent = "mixture",
    opponent_model: Any = None,
    key: jax.Array | None = None,
    uniforms: jax.Array | None = None,
    return_reference_logits: bool = False,
) -> PairGeneration:
    """Sample y ~ π_θ and y' ~ opponent for each left-padded prompt (see the module doc).

    Models are NNX modules or already split ``(graphdef, (state, ...))`` pairs (a trainer
    that keeps its parameters split saves a merge + split per call).
    ``uniforms``: (2B, ≥ max_new_tokens) in [0, 1) or ``key`` (a PRNG key) — one is
    required. No gradient flows through the samples."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    check_generation_args(
        opponent=opponent, beta=beta, temperature=temperature, max_new_tokens=max_new_tokens,
        opponent_model=opponent_model, ids_shape=input_ids.shape, mask_shape=attention_mask.shape,
    )  # fmt: skip
    n_rows = 2 * input_ids.shape[0]
    if uniforms is None:
        if key is None:
            raise ValueError("give either `uniforms` or a PRNG `key`")
        uniforms = jax.random.uniform(key, (n_rows, max_new_tokens))
    uniforms = jnp.asarray(uniforms)
    if uniforms.ndim != 2 or uniforms.shape[0] != n_rows or uniforms.shape[1] < max_new_tokens:
        raise ValueError(
            f"uniforms must have shape (2B={n_rows}, >= {max_new_tokens}); got {uniforms.shape}"
        )
    eos_ids = (
        ()
        if eos_token_id is None
        else (int(eos_token_id),)
        if isinstance(eos_token_id, int)
        else tuple(int(e) for e in eos_token_id)
    )
    mix_beta = {"mixture": float(beta), "model": float(beta), "reference": 1.0, "policy": 0.0}
    mb = mix_beta[opponent]
    mix_beta_is = "zero" if mb == 0.0 else "one" if mb == 1.0 else "mid"
    gd_p, st_p = _split(policy)
    gd_r, st_r = _split(reference)
    gd_o, st_o = _split(opponent_model) if opponent == "model" else (None, None)
    tokens, mask, ref_logits, steps = _decode(
        (gd_p, gd_r, gd_o),
        (st_p, st_r, st_o),
        input_ids,
        attention_mask,
        uniforms[:, :max_new_tokens],
        jnp.asarray(mb, jnp.float32),
        jnp.asarray(temperature, jnp.float32),
        max_new_tokens=max_new_tokens,
        eos_ids=eos_ids,
        pad_token_id=int(pad_token_id),
        opponent=opponent,
        mix_beta_is=mix_beta_is,
        return_reference_logits=return_reference_logits,
    )
    b = input_ids.shape[0]
    return PairGeneration(
        y=tokens[:b],
        y_mask=mask[:b],
        y_prime=tokens[b:],
        y_prime_mask=mask[b:],
        reference_logits=ref_logits,
        steps=steps,
    )
