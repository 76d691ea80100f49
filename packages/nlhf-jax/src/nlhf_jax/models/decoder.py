"""Flax NNX Llama / Qwen2 decoder (docs/jax.md, Models): the architecture of transformers'
``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` (and their ``ForSequenceClassification``
heads), written so the same ``model.safetensors`` loads with exact parity.

Pieces (transformers ``models/llama/modeling_llama.py``, ``models/qwen2/modeling_qwen2.py``):
RMSNorm y = w · x / sqrt(mean(x²) + ε) computed in float32; rotary embeddings
q' = q·cos + rotate_half(q)·sin with inv_freq_i = θ^(−2i/d) (``rope_type`` default,
linear, llama3); grouped-query attention (query head h reads key/value head
h // (H/H_kv)); SwiGLU MLP down(silu(gate(x)) · up(x)); Qwen2's q/k/v bias; tied
embeddings (lm_head = embed_tokensᵀ).

Positions are taken from the attention mask (left padding): p = cumsum(mask) − 1, so a
left-padded row gets the same positions as the unpadded sequence. The key/value cache is
static-shape: one (B, L, H_kv, D) array pair per layer, written at ``cache_index`` with
``lax.dynamic_update_slice`` so a decode loop compiles once.

Parameter names mirror the Hugging Face checkpoint: ``kernel`` (stored (in, out), the
transpose of torch's ``weight``), ``bias``, ``weight`` (norms and embeddings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from nlhf.errors import InputError

Cache = tuple[tuple[jax.Array, jax.Array], ...]

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


@dataclass(frozen=True)
class DecoderConfig:
    """The fields of a Llama/Qwen2 ``config.json`` this implementation uses."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_parameters: dict[str, Any]
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    num_labels: int = 1
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __hash__(self) -> int:  # raw (a dict) is excluded; the rest is hashable enough
        return hash((self.model_type, self.vocab_size, self.hidden_size, self.num_hidden_layers))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecoderConfig:
        """Read a transformers 5 (``rope_parameters``) or 4 (``rope_theta`` +
        ``rope_scaling``) Llama/Qwen2 config dict."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise InputError(
                f"model_type {model_type!r} is not supported by the jax backend "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        if d.get("hidden_act", "silu") != "silu":
            raise InputError(f"hidden_act {d['hidden_act']!r} unsupported (only silu)")
        if model_type == "qwen2" and d.get("use_sliding_window", False):
            raise InputError("Qwen2 sliding-window attention is not supported by the jax backend")
        heads = int(d["num_attention_heads"])
        head_dim = d.get("head_dim") or d["hidden_size"] // heads
        rope = dict(d.get("rope_parameters") or {})
        if not rope:
            rope = dict(d.get("rope_scaling") or {})
            if "type" in rope and "rope_type" not in rope:
                rope["rope_type"] = rope.pop("type")
        rope.setdefault("rope_type", "default")
        rope.setdefault("rope_theta", d.get("rope_theta", 10000.0))
        if rope["rope_type"] not in ("default", "linear", "llama3"):
            raise InputError(
                f"rope_type {rope['rope_type']!r} unsupported (default, linear, llama3)"
            )
        attention_bias = bool(d.get("attention_bias", False))
        return cls(
            model_type=model_type,
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_parameters=rope,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            o_bias=False if model_type == "qwen2" else attention_bias,
            mlp_bias=bool(d.get("mlp_bias", False)) if model_type == "llama" else False,
            pad_token_id=d.get("pad_token_id"),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            num_labels=int(d.get("num_labels") or len(d.get("id2label") or {}) or 1),
            raw=dict(d),
        )


def rope_inv_freq(cfg: DecoderConfig) -> np.ndarray:
    """Inverse frequencies inv_freq_i = θ^(−2i/d) in float32, as transformers'
    ``modeling_rope_utils`` computes them (default / linear / llama3 types)."""
    p = cfg.rope_parameters
    dim = int(cfg.head_dim * p.get("partial_rotary_factor", 1.0))
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv = (np.float32(1.0) / (np.float32(p["rope_theta"]) ** exponent)).astype(np.float32)
    kind = p["rope_type"]
    if kind == "linear":
        inv = inv / np.float32(p["factor"])
    elif kind == "llama3":
        factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old = p["original_max_position_embeddings"]
        low_wl, high_wl = old / low, old / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Left-padding-aware positions p = cumsum(mask) − 1 (0 on padding), as
    transformers' ``generate`` builds ``position_ids``."""
    mask = mask.astype(jnp.int32)
    return jnp.where(mask > 0, jnp.cumsum(mask, axis=-1) - 1, 0)


def _rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


class Linear(nnx.Module):
    """y = x·kernel + bias with kernel (in, out) — the transpose of torch ``weight``."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool, dtype: Any) -> None:
        self.kernel = nnx.Param(jnp.zeros((d_in, d_out), dtype))
        self.bias = nnx.Param(jnp.zeros((d_out,), dtype)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.kernel[...].astype(x.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class RMSNorm(nnx.Module):
    """y = w · x / sqrt(mean(x²) + ε), the variance in float32 (``LlamaRMSNorm``)."""

    def __init__(self, dim: int, eps: float, *, dtype: Any) -> None:
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * h.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, dtype: Any) -> None:
        h, d = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            d,
        )
        self.q_proj = Linear(h, self.num_heads * d, bias=cfg.qkv_bias, dtype=dtype)
        self.k_proj = Linear(h, self.num_kv * d, bias=cfg.qkv_bias, dtype=dtype)
        self.v_proj = Linear(h, self.num_kv * d, bias=cfg.qkv_bias, dtype=dtype)
        self.o_proj = Linear(self.num_heads * d, h, bias=cfg.o_bias, dtype=dtype)

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        allowed: jax.Array,
        kv: tuple[jax.Array, jax.Array] | None,
        cache_index: jax.Array | int,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        b, s, _ = x.shape
        q = self.q_proj(x).reshape(b, s, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, s, self.num_kv, self.head_dim)
        v = self.v_proj(x).reshape(b, s, self.num_kv, self.head_dim)
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if kv is not None:
            i = jnp.asarray(cache_index)  # one index dtype (int64 under x64, else int32)
            z = jnp.zeros_like(i)
            start = (z, i, z, z)
            k_all = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), start)
            v_all = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), start)
            kv = (k_all, v_all)
            k, v = k_all.astype(x.dtype), v_all.astype(x.dtype)
        groups = self.num_heads // self.num_kv
        q = q.reshape(b, s, self.num_kv, groups, self.head_dim)
        scores = jnp.einsum("bqkgd,btkd->bkgqt", q, k) * (self.head_dim**-0.5)
        acc = jnp.promote_types(x.dtype, jnp.float32)  # softmax in ≥ float32
        scores = scores.astype(acc)
        scores = jnp.where(allowed[:, None, None, :, :], scores, jnp.finfo(acc).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        out = jnp.einsum("bkgqt,btkd->bqkgd", probs, v).reshape(b, s, -1)
        return self.o_proj(out), kv


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) · up(x))."""

    def __init__(self, cfg: DecoderConfig, *, dtype: Any) -> None:
        h, i, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = Linear(h, i, bias=bias, dtype=dtype)
        self.up_proj = Linear(h, i, bias=bias, dtype=dtype)
        self.down_proj = Linear(i, h, bias=bias, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, dtype: Any) -> None:
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)
        self.self_attn = Attention(cfg, dtype=dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)
        self.mlp = MLP(cfg, dtype=dtype)

    def __call__(self, x, cos, sin, allowed, kv, cache_index):
        a, kv = self.self_attn(self.input_layernorm(x), cos, sin, allowed, kv, cache_index)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class DecoderModel(nnx.Module):
    """The decoder stack (``LlamaModel`` / ``Qwen2Model``): embeddings, layers, final norm."""

    def __init__(self, cfg: DecoderConfig, *, dtype: Any = jnp.float32) -> None:
        self.embed_tokens = nnx.Param(jnp.zeros((cfg.vocab_size, cfg.hidden_size), dtype))
        self.layers = nnx.List(
            [DecoderLayer(cfg, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype)
        self.config = cfg

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        *,
        cache: Cache | None = None,
        cache_index: jax.Array | int = 0,
    ) -> tuple[jax.Array, Cache | None]:
        """Hidden states (B, S, H) and the updated cache.

        Without a cache, ``attention_mask`` is (B, S) and keys are the S inputs; with a
        cache of length L, ``attention_mask`` is (B, L) over cache slots, the inputs are
        written at slots [cache_index, cache_index + S) and ``positions`` must be given.
        """
        b, s = input_ids.shape
        emb = self.embed_tokens[...]
        x = jnp.take(emb, input_ids, axis=0)
        n_keys = s if cache is None else cache[0][0].shape[1]
        if attention_mask is None:
            attention_mask = jnp.ones((b, n_keys), jnp.int32)
        if positions is None:
            if cache is not None:
                raise ValueError("positions are required when decoding with a cache")
            positions = positions_from_mask(attention_mask)
        q_slot = jnp.arange(s) + cache_index
        causal = jnp.arange(n_keys)[None, :] <= q_slot[:, None]  # (S, K)
        allowed = causal[None] & (attention_mask[:, None, :] > 0)  # (B, S, K)
        inv_freq = jnp.asarray(rope_inv_freq(self.config))
        freqs = positions.astype(jnp.float32)[..., None] * inv_freq[None, None, :]
        angles = jnp.concatenate([freqs, freqs], axis=-1)
        cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
        new_cache = []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else cache[i]
            x, kv = layer(x, cos, sin, allowed, kv, cache_index)
            new_cache.append(kv)
        return self.norm(x), (None if cache is None else tuple(new_cache))


class DecoderForCausalLM(nnx.Module):
    """``LlamaForCausalLM`` / ``Qwen2ForCausalLM``: logits = norm(h)·W_lmᵀ (W_lm tied to
    the embeddings when ``tie_word_embeddings``)."""

    def __init__(self, cfg: DecoderConfig, *, dtype: Any = jnp.float32) -> None:
        self.config = cfg
        self.model = DecoderModel(cfg, dtype=dtype)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype)
        )

    def logits(self, hidden: jax.Array) -> jax.Array:
        if self.lm_head is None:
            return hidden @ self.model.embed_tokens[...].astype(hidden.dtype).T
        return self.lm_head(hidden)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        *,
        cache: Cache | None = None,
        cache_index: jax.Array | int = 0,
        last_only: bool = False,
    ) -> tuple[jax.Array, Cache | None]:
        """Logits (B, S, V) — or (B, V) at the last position with ``last_only`` — and the
        updated cache (None without one)."""
        h, cache = self.model(
            input_ids, attention_mask, positions, cache=cache, cache_index=cache_index
        )
        if last_only:
            h = h[:, -1]
        return self.logits(h), cache

    def init_cache(self, batch: int, length: int, dtype: Any = jnp.float32) -> Cache:
        """Zeroed static-shape cache: per layer (K, V) of shape (B, L, H_kv, D)."""
        cfg = self.config
        shape = (batch, length, cfg.num_key_value_heads, cfg.head_dim)
        return tuple(
            (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.num_hidden_layers)
        )


class DecoderForSequenceClassification(nnx.Module):
    """``LlamaForSequenceClassification`` / ``Qwen2ForSequenceClassification``: a bias-free
    ``score`` projection of the hidden state at the rightmost non-pad token (transformers'
    ``GenericForSequenceClassification`` pooling)."""

    def __init__(self, cfg: DecoderConfig, *, dtype: Any = jnp.float32) -> None:
        self.config = cfg
        self.model = DecoderModel(cfg, dtype=dtype)
        self.score = Linear(cfg.hidden_size, cfg.num_labels, bias=False, dtype=dtype)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Scores (B, num_labels)."""
        h, _ = self.model(input_ids, attention_mask)
        logits = self.score(h)
        pad = self.config.pad_token_id
        if pad is None:
            last = jnp.full((input_ids.shape[0],), input_ids.shape[1] - 1)
        else:
            idx = jnp.arange(input_ids.shape[1])
            last = jnp.argmax(idx[None, :] * (input_ids != pad), axis=-1)
        return logits[jnp.arange(input_ids.shape[0]), last]
