"""Flax NNX decoder-only causal LM (docs/jax.md, Models): one decoder whose architecture
switches are read from ``config.json``, written so the ``model.safetensors`` transformers
saves loads with exact parity. Architectures (``model_type``, see :data:`ARCHITECTURES`):
Llama (incl. Llama 3.x rope scaling), Qwen2/2.5, Qwen3, Mistral, Gemma 2, Gemma 3 (text,
``gemma3_text``) and Phi-3, with their ``ForCausalLM`` and ``ForSequenceClassification``
heads.

Pieces (transformers 5 ``models/<name>/modeling_<name>.py``):

- RMSNorm in float32, x̂ = x / sqrt(mean(x²) + ε): Llama family w · x̂ (cast to the input
  dtype first), Gemma (x̂ · (1 + w)) (``Gemma2RMSNorm``: the weight is stored as an offset);
- attention: q, k, v projections (Qwen2 q/k/v bias; Phi-3 one fused ``qkv_proj``),
  Qwen3 / Gemma 3 RMSNorm of every q and k head, rotary q' = q·cos + rotate_half(q)·sin
  on the first ``partial_rotary_factor``·d dims with inv_freq_i = θ^(−2i/d) (``rope_type``
  default, linear, llama3; Gemma 3: one θ for ``sliding_attention`` layers, one for
  ``full_attention`` layers), grouped-query attention (query head h reads key/value head
  h // (H/H_kv)) with scale d^(−1/2) (Gemma: ``query_pre_attn_scalar``^(−1/2)), Gemma 2
  attention-logit soft-capping c·tanh(s/c), softmax in ≥ float32;
- sliding windows (Mistral and Phi-3 on every layer; Qwen2/3 and Gemma on their
  ``sliding_attention`` layers): key slot j is visible from query slot i iff
  i − W < j ≤ i (transformers' ``sliding_window_overlay``), over cache slots;
- gated MLP down(act(gate(x)) · up(x)) (Phi-3: one fused ``gate_up_proj``, gate first),
  act = SiLU or Gemma's tanh-approximated GELU (``gelu_pytorch_tanh``);
- Gemma: embeddings times √h (in the model dtype), "sandwich" norms (post-attention and
  pre/post-feed-forward RMSNorm), final logit soft-capping c·tanh(ℓ/c); tied embeddings
  (lm_head = embed_tokensᵀ) wherever ``tie_word_embeddings``.

Positions are taken from the attention mask (left padding): p = cumsum(mask) − 1, so a
left-padded row gets the same positions as the unpadded sequence. The key/value cache is
static-shape: one (B, L, H_kv, D) array pair per layer, written at ``cache_index`` with
``lax.dynamic_update_slice`` so a decode loop compiles once.

Parameter names mirror the Hugging Face checkpoint: ``kernel`` (stored (in, out), the
transpose of torch's ``weight``), ``bias``, ``weight`` (norms and embeddings).

Configurations the decoder does not reproduce (another ``model_type``, a rope type that
depends on the sequence length such as Phi-3's ``longrope``, bidirectional attention, …)
raise :class:`~nlhf.errors.InputError` naming the field, the value and what is supported.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from nlhf.errors import InputError

Cache = tuple[tuple[jax.Array, jax.Array], ...]

Windows = Literal["none", "all", "layer_types"]


@dataclass(frozen=True)
class Architecture:
    """How one ``model_type`` departs from Llama, and the transformers config defaults
    that matter when ``config.json`` omits a field."""

    causal_lm: str
    """transformers' causal LM class (``architectures`` of its ``config.json``)."""
    sequence_classification: str
    """transformers' sequence classification class."""
    qkv_bias: bool | None = None
    """q/k/v projection bias (None: the config's ``attention_bias``)."""
    o_bias: bool | None = None
    """o projection bias (None: the config's ``attention_bias``)."""
    qk_norm: bool = False
    """RMSNorm over each head of q and k, before the rotary embedding."""
    fused: bool = False
    """Phi-3's fused ``qkv_proj`` and ``gate_up_proj``."""
    gemma: bool = False
    """(1 + w) norms, sandwich norms, √h embedding scale, ``query_pre_attn_scalar``."""
    windows: Windows = "none"
    """Which layers slide: none, all (``sliding_window`` when set), or by ``layer_types``."""
    attn_softcap: bool = False
    """Whether ``attn_logit_softcapping`` is applied (Gemma 2; Gemma 3 ignores it)."""
    defaults: tuple[tuple[str, Any], ...] = ()
    """The transformers config class defaults of fields that change the forward."""


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("LlamaForCausalLM", "LlamaForSequenceClassification"),
    "qwen2": Architecture(
        "Qwen2ForCausalLM",
        "Qwen2ForSequenceClassification",
        qkv_bias=True,
        o_bias=False,
        windows="layer_types",
        defaults=(("sliding_window", 4096), ("max_window_layers", 28)),
    ),
    "qwen3": Architecture(
        "Qwen3ForCausalLM",
        "Qwen3ForSequenceClassification",
        qk_norm=True,
        windows="layer_types",
        defaults=(("head_dim", 128), ("sliding_window", 4096), ("max_window_layers", 28)),
    ),
    "mistral": Architecture(
        "MistralForCausalLM",
        "MistralForSequenceClassification",
        qkv_bias=False,
        o_bias=False,
        windows="all",
        defaults=(("sliding_window", 4096),),
    ),
    "gemma2": Architecture(
        "Gemma2ForCausalLM",
        "Gemma2ForSequenceClassification",
        gemma=True,
        windows="layer_types",
        attn_softcap=True,
        defaults=(
            ("head_dim", 256),
            ("hidden_activation", "gelu_pytorch_tanh"),
            ("query_pre_attn_scalar", 256),
            ("sliding_window", 4096),
            ("final_logit_softcapping", 30.0),
            ("attn_logit_softcapping", 50.0),
            ("tie_word_embeddings", True),
            ("sliding_window_pattern", 2),
        ),
    ),
    "gemma3_text": Architecture(
        "Gemma3ForCausalLM",
        "Gemma3TextForSequenceClassification",
        gemma=True,
        qk_norm=True,
        windows="layer_types",
        defaults=(
            ("head_dim", 256),
            ("hidden_activation", "gelu_pytorch_tanh"),
            ("query_pre_attn_scalar", 256),
            ("sliding_window", 4096),
            ("tie_word_embeddings", True),
            ("sliding_window_pattern", 6),
            ("rope_theta", 1_000_000.0),
            ("rope_local_base_freq", 10_000.0),
        ),
    ),
    "phi3": Architecture(
        "Phi3ForCausalLM",
        "Phi3ForSequenceClassification",
        qkv_bias=False,
        o_bias=False,
        fused=True,
        windows="all",
        defaults=(("rms_norm_eps", 1e-5), ("sliding_window", None)),
    ),
}
"""The ``model_type`` values the jax decoder reproduces."""

SUPPORTED_MODEL_TYPES = tuple(ARCHITECTURES)
ROPE_TYPES = ("default", "linear", "llama3")
"""Rope types with fixed frequencies (others depend on the sequence length or are absent)."""
ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu")
SLIDING, FULL = "sliding_attention", "full_attention"


def _unsupported(model_type: str, name: str, value: Any, supported: Any) -> InputError:
    return InputError(
        f"{name}: {value!r} is not supported by the jax backend's {model_type} decoder "
        f"(supported: {supported}); use --backend torch for this model"
    )


def _rope_dict(model_type: str, rope: dict[str, Any], theta: float, name: str) -> dict[str, Any]:
    rope = dict(rope)
    if "type" in rope and "rope_type" not in rope:  # transformers 4 ``rope_scaling``
        rope["rope_type"] = rope.pop("type")
    rope.setdefault("rope_type", "default")
    rope.setdefault("rope_theta", theta)
    if rope["rope_type"] in ("su", "yarn") and model_type == "phi3":
        rope["rope_type"] = "longrope"  # what transformers' Phi3Config makes of them
    if rope["rope_type"] not in ROPE_TYPES:
        raise _unsupported(
            model_type,
            f"{name}.rope_type",
            rope["rope_type"],
            f"{', '.join(ROPE_TYPES)}; longrope and dynamic depend on the sequence length",
        )
    return rope


@dataclass(frozen=True)
class DecoderConfig:
    """The fields of a ``config.json`` this implementation uses, normalised across
    transformers 4 and 5 and across architectures (:meth:`from_dict`)."""

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
    hidden_act: str = "silu"
    qk_norm: bool = False
    fused_projections: bool = False
    gemma: bool = False
    attention_scale: float | None = None
    """Attention score scale (None: head_dim^(−1/2))."""
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    layer_windows: tuple[int | None, ...] = ()
    """Sliding window of each layer (None: full causal attention); empty: all full."""
    layer_types: tuple[str, ...] = ()
    """``sliding_attention`` / ``full_attention`` per layer (empty: all full)."""
    sliding_rope_parameters: dict[str, Any] | None = None
    """Gemma 3: the rope of ``sliding_attention`` layers (``rope_parameters`` is the
    ``full_attention`` one)."""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __hash__(self) -> int:  # dicts (raw, rope) are excluded; the rest is hashable enough
        return hash(
            (
                self.model_type,
                self.vocab_size,
                self.hidden_size,
                self.num_hidden_layers,
                self.layer_windows,
            )
        )

    @property
    def architecture(self) -> Architecture:
        return ARCHITECTURES[self.model_type]

    def window(self, layer: int) -> int | None:
        return self.layer_windows[layer] if self.layer_windows else None

    def rope_of(self, layer: int) -> dict[str, Any]:
        """The rope parameters of ``layer`` (Gemma 3: by its layer type)."""
        sliding = self.layer_types and self.layer_types[layer] == SLIDING
        if sliding and self.sliding_rope_parameters is not None:
            return self.sliding_rope_parameters
        return self.rope_parameters

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecoderConfig:
        """Read a transformers 5 (``rope_parameters``) or 4 (``rope_theta`` +
        ``rope_scaling``) config dict of one of :data:`ARCHITECTURES`."""
        model_type = d.get("model_type")
        if model_type not in ARCHITECTURES:
            raise InputError(
                f"model_type: {model_type!r} is not supported by the jax backend "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)}); use --backend torch "
                "for other architectures"
            )
        arch = ARCHITECTURES[model_type]
        g = {**dict(arch.defaults), **d}  # an explicit null stays null, as in transformers
        act_key = "hidden_activation" if arch.gemma and "hidden_activation" in g else "hidden_act"
        act = g.get(act_key, "silu")
        if act not in ACTIVATIONS:
            raise _unsupported(model_type, act_key, act, ", ".join(ACTIVATIONS))
        if g.get("use_bidirectional_attention"):
            raise _unsupported(model_type, "use_bidirectional_attention", True, "false")
        if int(g.get("pretraining_tp") or 1) != 1:
            raise _unsupported(model_type, "pretraining_tp", g["pretraining_tp"], "1")
        heads = int(d["num_attention_heads"])
        n_layers = int(d["num_hidden_layers"])
        head_dim = int(g.get("head_dim") or d["hidden_size"] // heads)

        # rotary embeddings
        rope_in = dict(d.get("rope_parameters") or {})
        sliding_rope = None
        partial = g.get("partial_rotary_factor")  # transformers 4 kept it top-level
        if model_type == "gemma3_text":
            if FULL in rope_in or SLIDING in rope_in:
                full_in, local_in = rope_in.get(FULL) or {}, rope_in.get(SLIDING) or {}
            else:
                full_in, local_in = dict(d.get("rope_scaling") or {}), {}
            rope = _rope_dict(model_type, full_in, g["rope_theta"], f"rope_parameters.{FULL}")
            sliding_rope = _rope_dict(
                model_type, local_in, g["rope_local_base_freq"], f"rope_parameters.{SLIDING}"
            )
        else:
            rope_in = rope_in or dict(d.get("rope_scaling") or {})
            name = "rope_parameters" if d.get("rope_parameters") else "rope_scaling"
            rope = _rope_dict(model_type, rope_in, g.get("rope_theta", 10000.0), name)
        if partial is not None:
            rope.setdefault("partial_rotary_factor", float(partial))

        # which layers slide
        window = g.get("sliding_window")
        if model_type in ("qwen2", "qwen3") and not g.get("use_sliding_window", False):
            window = None
        if arch.windows == "all":
            types = [SLIDING if window is not None else FULL] * n_layers
        elif arch.windows == "layer_types":
            types = list(d.get("layer_types") or [])
            if not types and arch.gemma:
                p = int(g.get("sliding_window_pattern", 2))
                types = [SLIDING if (i + 1) % p else FULL for i in range(n_layers)]
            elif not types:
                start = int(g.get("max_window_layers", 28))
                types = [
                    SLIDING if window is not None and i >= start else FULL for i in range(n_layers)
                ]
        else:
            types = [FULL] * n_layers
        if len(types) != n_layers or set(types) - {SLIDING, FULL}:
            raise _unsupported(model_type, "layer_types", types, f"{SLIDING}, {FULL} per layer")
        windows = tuple(int(window) if t == SLIDING and window is not None else None for t in types)

        attention_bias = bool(g.get("attention_bias", False))
        scalar = g.get("query_pre_attn_scalar") if arch.gemma else None
        softcap = g.get("attn_logit_softcapping") if arch.attn_softcap else None
        final_cap = g.get("final_logit_softcapping") if arch.gemma else None
        return cls(
            model_type=model_type,
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            rms_norm_eps=float(g.get("rms_norm_eps", 1e-6)),
            rope_parameters=rope,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(g.get("tie_word_embeddings", False)),
            qkv_bias=attention_bias if arch.qkv_bias is None else arch.qkv_bias,
            o_bias=attention_bias if arch.o_bias is None else arch.o_bias,
            mlp_bias=bool(d.get("mlp_bias", False)) if model_type == "llama" else False,
            pad_token_id=d.get("pad_token_id"),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            num_labels=int(d.get("num_labels") or len(d.get("id2label") or {}) or 1),
            hidden_act=act,
            qk_norm=arch.qk_norm,
            fused_projections=arch.fused,
            gemma=arch.gemma,
            attention_scale=None if scalar is None else float(scalar) ** -0.5,
            attn_logit_softcapping=None if softcap is None else float(softcap),
            final_logit_softcapping=None if final_cap is None else float(final_cap),
            layer_windows=windows,
            layer_types=tuple(types),
            sliding_rope_parameters=sliding_rope,
            raw=dict(d),
        )


def rope_inv_freq(cfg: DecoderConfig, rope: dict[str, Any] | None = None) -> np.ndarray:
    """Inverse frequencies inv_freq_i = θ^(−2i/d) in float32 over the rotated dims
    d = ``partial_rotary_factor``·head_dim, as transformers' ``modeling_rope_utils``
    computes them (default / linear / llama3 types); ``rope`` defaults to
    ``cfg.rope_parameters``."""
    p = cfg.rope_parameters if rope is None else rope
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


def _rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x·cos + rotate_half(x)·sin on the first cos.shape[-1] dims; the rest pass through
    (Phi-3's partial rotary, transformers' ``apply_rotary_pos_emb``)."""
    rd = cos.shape[-1]
    if rd == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    xr = x[..., :rd]
    return jnp.concatenate([xr * cos + _rotate_half(xr) * sin, x[..., rd:]], axis=-1)


def _softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """c · tanh(x / c) (Gemma 2's soft-capping), or x when ``cap`` is None."""
    return x if cap is None else jnp.tanh(x / cap) * cap


def _activation(name: str, x: jax.Array) -> jax.Array:
    if name == "silu":
        return jax.nn.silu(x)
    return jax.nn.gelu(x, approximate=name == "gelu_pytorch_tanh")


_MATMUL_DTYPE: list[Any] = [None]


@contextlib.contextmanager
def matmul_dtype(dtype: Any) -> Iterator[None]:
    """Inside (at trace time), linear layers and the tied LM head multiply in ``dtype``
    with float32 accumulation and return the activations' dtype: ``torch.autocast``'s
    rule for matmuls, which ``training.precision: bf16-mixed`` uses for the loss."""
    _MATMUL_DTYPE.append(dtype)
    try:
        yield
    finally:
        _MATMUL_DTYPE.pop()


def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x·w in x's dtype, or in the :func:`matmul_dtype` with float32 accumulation."""
    low = _MATMUL_DTYPE[-1]
    if low is None:
        return x @ w.astype(x.dtype)
    out = jnp.matmul(x.astype(low), w.astype(low), preferred_element_type=jnp.float32)
    return out.astype(x.dtype)


class Linear(nnx.Module):
    """y = x·kernel + bias with kernel (in, out) — the transpose of torch ``weight``."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool, dtype: Any) -> None:
        self.kernel = nnx.Param(jnp.zeros((d_in, d_out), dtype))
        self.bias = nnx.Param(jnp.zeros((d_out,), dtype)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = _matmul(x, self.kernel[...])
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class RMSNorm(nnx.Module):
    """x̂ = x / sqrt(mean(x²) + ε) in float32; y = w · x̂ (``LlamaRMSNorm``: x̂ cast to the
    input dtype first) or, with ``offset``, y = x̂ · (1 + w) cast after (``Gemma2RMSNorm``,
    whose stored weight is the offset from 1)."""

    def __init__(self, dim: int, eps: float, *, dtype: Any, offset: bool = False) -> None:
        self.weight = nnx.Param((jnp.zeros if offset else jnp.ones)((dim,), dtype))
        self.eps = eps
        self.offset = offset

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        if self.offset:
            return (h * (1.0 + self.weight[...].astype(jnp.float32))).astype(x.dtype)
        return self.weight[...].astype(x.dtype) * h.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, dtype: Any) -> None:
        h, d = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            d,
        )
        q_out, kv_out = self.num_heads * d, self.num_kv * d
        if cfg.fused_projections:
            self.qkv_proj = Linear(h, q_out + 2 * kv_out, bias=cfg.qkv_bias, dtype=dtype)
        else:
            self.q_proj = Linear(h, q_out, bias=cfg.qkv_bias, dtype=dtype)
            self.k_proj = Linear(h, kv_out, bias=cfg.qkv_bias, dtype=dtype)
            self.v_proj = Linear(h, kv_out, bias=cfg.qkv_bias, dtype=dtype)
        self.o_proj = Linear(q_out, h, bias=cfg.o_bias, dtype=dtype)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype, offset=cfg.gemma)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype, offset=cfg.gemma)
        self.fused = cfg.fused_projections
        self.qk_norm = cfg.qk_norm
        self.scale = cfg.attention_scale if cfg.attention_scale is not None else d**-0.5
        self.softcap = cfg.attn_logit_softcapping

    def _qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        b, s, _ = x.shape
        d, nq, nkv = self.head_dim, self.num_heads * self.head_dim, self.num_kv * self.head_dim
        if self.fused:
            qkv = self.qkv_proj(x)
            q, k, v = qkv[..., :nq], qkv[..., nq : nq + nkv], qkv[..., nq + nkv :]
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.reshape(b, s, self.num_heads, d)
        k = k.reshape(b, s, self.num_kv, d)
        v = v.reshape(b, s, self.num_kv, d)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

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
        q, k, v = self._qkv(x)
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
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
        scores = jnp.einsum("bqkgd,btkd->bkgqt", q, k) * self.scale
        acc = jnp.promote_types(x.dtype, jnp.float32)  # softmax in ≥ float32
        scores = _softcap(scores, self.softcap).astype(acc)
        scores = jnp.where(allowed[:, None, None, :, :], scores, jnp.finfo(acc).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        out = jnp.einsum("bkgqt,btkd->bqkgd", probs, v).reshape(b, s, -1)
        return self.o_proj(out), kv


class MLP(nnx.Module):
    """Gated MLP: down(act(gate(x)) · up(x)); Phi-3 computes [gate, up] in one matmul."""

    def __init__(self, cfg: DecoderConfig, *, dtype: Any) -> None:
        h, i, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        if cfg.fused_projections:
            self.gate_up_proj = Linear(h, 2 * i, bias=bias, dtype=dtype)
        else:
            self.gate_proj = Linear(h, i, bias=bias, dtype=dtype)
            self.up_proj = Linear(h, i, bias=bias, dtype=dtype)
        self.down_proj = Linear(i, h, bias=bias, dtype=dtype)
        self.fused = cfg.fused_projections
        self.act = cfg.hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.fused:
            gate, up = jnp.split(self.gate_up_proj(x), 2, axis=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(_activation(self.act, gate) * up)


class DecoderLayer(nnx.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)); Gemma's sandwich norms also normalise
    each branch's output (``post_attention_layernorm``, ``post_feedforward_layernorm``)."""

    def __init__(self, cfg: DecoderConfig, *, dtype: Any) -> None:
        def norm() -> RMSNorm:
            return RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, offset=cfg.gemma)

        self.input_layernorm = norm()
        self.self_attn = Attention(cfg, dtype=dtype)
        self.post_attention_layernorm = norm()
        if cfg.gemma:
            self.pre_feedforward_layernorm = norm()
            self.post_feedforward_layernorm = norm()
        self.mlp = MLP(cfg, dtype=dtype)
        self.sandwich = cfg.gemma

    def __call__(self, x, cos, sin, allowed, kv, cache_index):
        a, kv = self.self_attn(self.input_layernorm(x), cos, sin, allowed, kv, cache_index)
        if not self.sandwich:
            x = x + a
            return x + self.mlp(self.post_attention_layernorm(x)), kv
        x = x + self.post_attention_layernorm(a)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x))), kv


class DecoderModel(nnx.Module):
    """The decoder stack (``LlamaModel``, ``Gemma2Model``, …): embeddings, layers, final norm."""

    def __init__(self, cfg: DecoderConfig, *, dtype: Any = jnp.float32) -> None:
        self.embed_tokens = nnx.Param(jnp.zeros((cfg.vocab_size, cfg.hidden_size), dtype))
        self.layers = nnx.List(
            [DecoderLayer(cfg, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, offset=cfg.gemma)
        self.config = cfg
        self.remat = False
        """Each layer under ``nnx.remat`` in forwards without a cache
        (``training.gradient_checkpointing``): its activations are recomputed in the
        backward pass. Set before ``nnx.split``."""

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
        cfg = self.config
        b, s = input_ids.shape
        emb = self.embed_tokens[...]
        x = jnp.take(emb, input_ids, axis=0)
        if cfg.gemma:  # √h in the model dtype (Gemma2TextScaledWordEmbedding)
            x = x * jnp.asarray(cfg.hidden_size**0.5, x.dtype)
        n_keys = s if cache is None else cache[0][0].shape[1]
        if attention_mask is None:
            attention_mask = jnp.ones((b, n_keys), jnp.int32)
        if positions is None:
            if cache is not None:
                raise ValueError("positions are required when decoding with a cache")
            positions = positions_from_mask(attention_mask)
        q_slot = jnp.arange(s) + cache_index
        k_slot = jnp.arange(n_keys)
        causal = k_slot[None, :] <= q_slot[:, None]  # (S, K)
        keep = attention_mask[:, None, :] > 0
        allowed: dict[int | None, jax.Array] = {}
        for w in dict.fromkeys(cfg.window(i) for i in range(cfg.num_hidden_layers)):
            visible = causal if w is None else causal & (k_slot[None, :] > q_slot[:, None] - w)
            allowed[w] = visible[None] & keep  # (B, S, K)
        tables: dict[int, tuple[jax.Array, jax.Array]] = {}
        layer_rope = []
        for i in range(cfg.num_hidden_layers):
            rope = cfg.rope_of(i)
            if id(rope) not in tables:
                inv_freq = jnp.asarray(rope_inv_freq(cfg, rope))
                freqs = positions.astype(jnp.float32)[..., None] * inv_freq[None, None, :]
                angles = jnp.concatenate([freqs, freqs], axis=-1)
                tables[id(rope)] = (
                    jnp.cos(angles).astype(x.dtype),
                    jnp.sin(angles).astype(x.dtype),
                )
            layer_rope.append(tables[id(rope)])
        new_cache = []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else cache[i]
            cos, sin = layer_rope[i]
            remat = self.remat and cache is None  # decoding with a cache has no backward
            call = nnx.remat(DecoderLayer.__call__) if remat else DecoderLayer.__call__
            x, kv = call(layer, x, cos, sin, allowed[cfg.window(i)], kv, cache_index)
            new_cache.append(kv)
        return self.norm(x), (None if cache is None else tuple(new_cache))


class DecoderForCausalLM(nnx.Module):
    """``<Arch>ForCausalLM``: logits = cap(norm(h)·W_lmᵀ) (W_lm tied to the embeddings when
    ``tie_word_embeddings``; cap = Gemma's final soft-capping, else the identity)."""

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
            out = _matmul(hidden, self.model.embed_tokens[...].T)
        else:
            out = self.lm_head(hidden)
        return _softcap(out, self.config.final_logit_softcapping)

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
    """``<Arch>ForSequenceClassification``: a bias-free ``score`` projection of the hidden
    state at the rightmost non-pad token (transformers' ``GenericForSequenceClassification``
    pooling; no logit soft-capping)."""

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
