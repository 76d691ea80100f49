"""A float64 NumPy forward of Llama / Qwen2 checkpoints and pair generation by it: the
oracle that backends' models and ``generate_pairs`` are compared with, without torch.

Written from the architectures' definitions (Touvron et al. 2023, Llama; Qwen2 adds q/k/v
biases), following transformers' conventions: RMSNorm x·w/√(mean x² + ε); rotary
embeddings with inv_freq_i = θ^(−2i/d) applied as x·cos + rotate_half(x)·sin; grouped
query attention (query head j reads key/value head j·n_kv/n_heads) with a causal and a
key-padding mask; SwiGLU MLP down(silu(gate x)·up x); tied or separate LM head; the
sequence-classification head reads the last token that is not ``pad_token_id``.
Left-padded rows use positions cumsum(mask) − 1, as transformers' ``generate``. No KV
cache: every decode step runs the whole prefix again, which is slow and simple.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nlhf.algorithms import numpy_oracle

Opponent = Literal["mixture", "reference", "policy"]


@dataclass(frozen=True)
class NumpyLM:
    """A checkpoint's ``config.json`` and float64 weights (transformers' names)."""

    config: dict[str, Any]
    weights: dict[str, np.ndarray]

    @classmethod
    def load(cls, path: str | Path) -> NumpyLM:
        """Read ``config.json`` and ``model.safetensors`` of a transformers directory."""
        from safetensors.numpy import load_file

        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        if config.get("model_type") not in ("llama", "qwen2"):
            raise ValueError(f"{path}: NumpyLM reads llama and qwen2 checkpoints only")
        rope = config.get("rope_parameters") or {"rope_type": "default"}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"{path}: NumpyLM implements the default rotary embedding only")
        tensors = load_file(str(path / "model.safetensors"))
        return cls(config, {k: v.astype(np.float64) for k, v in tensors.items()})

    # ------------------------------------------------------------------ forward

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        y = x @ self.weights[name + ".weight"].T
        bias = self.weights.get(name + ".bias")
        return y if bias is None else y + bias

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        eps = float(self.config.get("rms_norm_eps", 1e-6))
        return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * self.weights[name]

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Final-norm hidden states (B, L, H) of left-padded ``ids`` (B, L) with ``mask``."""
        cfg = self.config
        ids, mask = np.asarray(ids, np.int64), np.asarray(mask, np.int64)
        b, length = ids.shape
        heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or 0
        kv = kv or heads
        hd = cfg.get("head_dim") or cfg["hidden_size"] // heads
        theta = float(
            (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 1e4))
        )
        pos = np.where(mask > 0, np.cumsum(mask, axis=-1) - 1, 0)
        freqs = pos[..., None] * theta ** (-np.arange(0, hd, 2) / hd)  # (B, L, hd/2)
        cos = np.cos(np.concatenate([freqs, freqs], -1))[:, None]
        sin = np.sin(np.concatenate([freqs, freqs], -1))[:, None]

        def rope(x: np.ndarray) -> np.ndarray:  # (B, h, L, hd)
            rotated = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], axis=-1)
            return x * cos + rotated * sin

        causal = np.tril(np.ones((length, length), bool))
        allowed = causal[None, None] & (mask[:, None, None, :] > 0)  # (B, 1, Lq, Lk)
        x = self.weights["model.embed_tokens.weight"][ids]
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = self._norm(x, p + "input_layernorm.weight")
            q = self._linear(h, p + "self_attn.q_proj").reshape(b, length, heads, hd)
            k = self._linear(h, p + "self_attn.k_proj").reshape(b, length, kv, hd)
            v = self._linear(h, p + "self_attn.v_proj").reshape(b, length, kv, hd)
            q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
            q, k = rope(q), rope(k)
            group = heads // kv
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
            scores = np.where(allowed, q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd), -np.inf)
            top = np.max(scores, axis=-1, keepdims=True)
            weights = np.exp(scores - np.where(np.isfinite(top), top, 0.0))
            total = weights.sum(-1, keepdims=True)
            attn = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
            out = (attn @ v).transpose(0, 2, 1, 3).reshape(b, length, heads * hd)
            x = x + self._linear(out, p + "self_attn.o_proj")
            h = self._norm(x, p + "post_attention_layernorm.weight")
            gate = self._linear(h, p + "mlp.gate_proj")
            up = self._linear(h, p + "mlp.up_proj")
            x = x + self._linear(gate / (1.0 + np.exp(-gate)) * up, p + "mlp.down_proj")
        return self._norm(x, "model.norm.weight")

    def logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Causal-LM logits (B, L, V); only positions with ``mask`` 1 are meaningful."""
        head = self.weights.get("lm_head.weight", self.weights["model.embed_tokens.weight"])
        return self.hidden_states(ids, mask) @ head.T

    def scores(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Sequence-classification logits (B, num_labels) at each row's last token that is
        not ``pad_token_id``."""
        ids = np.asarray(ids, np.int64)
        last = np.max(np.where(ids != self.config["pad_token_id"], np.arange(ids.shape[1]), -1), -1)
        hidden = self.hidden_states(ids, mask)[np.arange(ids.shape[0]), last]
        return hidden @ self.weights["score.weight"].T


# ----------------------------------------------------------------- generation


@dataclass(frozen=True)
class NumpyPairs:
    """Pairs drawn by :func:`generate_pairs`: ``y``/``y_prime`` (B, T) int64 (pad after
    EOS), masks (B, T) int64 (1 up to and including EOS), and the ``uniforms`` (2B, T) it
    consumed (changed where :func:`generate_pairs` redrew them)."""

    y: np.ndarray
    y_mask: np.ndarray
    y_prime: np.ndarray
    y_prime_mask: np.ndarray
    uniforms: np.ndarray
    cdf_margin: float  # min distance of a consumed uniform to a CDF boundary


def generate_pairs(
    policy: NumpyLM,
    reference: NumpyLM,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    uniforms: np.ndarray,
    *,
    beta: float,
    temperature: float,
    max_new_tokens: int,
    eos_token_id: int | list[int],
    pad_token_id: int,
    opponent: Opponent = "mixture",
    redraw: tuple[np.random.Generator, float] | None = None,
) -> NumpyPairs:
    """y ~ π, y' ~ the opponent, token by token, by inverse CDF on ``uniforms[row, n]``
    (rows 0..B−1 = y, B..2B−1 = y'): log π(·) = log_softmax(ℓ_π/T) and, for y',
    ``mixture`` log π̃ = log_softmax(((1−β)ℓ_π + βℓ_μ)/T) (paper §7), ``reference`` β = 1,
    ``policy`` β = 0. A row that emitted an EOS gets ``pad_token_id`` with mask 0; decoding
    stops when every row has ended. ``redraw=(rng, margin)``: a uniform closer than
    ``margin`` to a CDF boundary of its step is redrawn from ``rng`` (so that rounding in
    another implementation cannot flip the token)."""
    ids = np.asarray(input_ids, np.int64)
    mask = np.asarray(attention_mask, np.int64)
    u = np.array(uniforms, dtype=np.float64)
    b = ids.shape[0]
    if u.shape != (2 * b, max_new_tokens):
        raise ValueError(f"uniforms must be (2B, T) = {(2 * b, max_new_tokens)}; got {u.shape}")
    mix = {"mixture": float(beta), "reference": 1.0, "policy": 0.0}[opponent]
    eos = np.atleast_1d(np.asarray(eos_token_id, np.int64))
    rows_ids, rows_mask = np.concatenate([ids, ids]), np.concatenate([mask, mask])
    tokens = np.full((2 * b, max_new_tokens), pad_token_id, np.int64)
    finished = np.zeros(2 * b, bool)
    margin = np.inf
    for n in range(max_new_tokens):
        if finished.all():
            break
        seq = np.concatenate([rows_ids, tokens[:, :n]], axis=1)
        seq_mask = np.concatenate([rows_mask, np.ones((2 * b, n), np.int64)], axis=1)
        lp_pi = policy.logits(seq, seq_mask)[:, -1]
        lp_mu = reference.logits(seq, seq_mask)[:, -1] if mix > 0 else lp_pi
        logprobs = np.concatenate(
            [
                numpy_oracle.mixture_logprobs(lp_pi[:b], lp_pi[:b], 0.0, temperature),
                numpy_oracle.mixture_logprobs(lp_pi[b:], lp_mu[b:], mix, temperature),
            ]
        )
        cdf = np.cumsum(np.exp(logprobs), axis=-1)
        for row in np.flatnonzero(~finished):
            while redraw is not None and np.min(np.abs(cdf[row] - u[row, n])) < redraw[1]:
                u[row, n] = redraw[0].uniform()
            margin = min(margin, float(np.min(np.abs(cdf[row] - u[row, n]))))
        new = numpy_oracle.sample(logprobs, u[:, n])
        tokens[:, n] = np.where(finished, pad_token_id, new)
        finished |= np.isin(tokens[:, n], eos)
    is_eos = np.isin(tokens, eos)
    ended_before = np.cumsum(is_eos, axis=1) - is_eos
    out_mask = (ended_before == 0).astype(np.int64)  # a row that never ended ran T steps
    return NumpyPairs(tokens[:b], out_mask[:b], tokens[b:], out_mask[b:], u, margin)
