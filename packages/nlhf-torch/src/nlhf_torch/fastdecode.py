"""Fused sampling-only forward of the Llama / Qwen2 decoder family (DESIGN §6).

On small models the cost of a cached decode step is per-module Python overhead, not
arithmetic: transformers' Qwen2 spends ~1.8 ms per forward of a 128-wide model. This
module re-implements the forward for sampling only (no gradient) directly on the HF
model's own parameter tensors, with the architecture exactly as in transformers 5
(``modeling_llama.py`` / ``modeling_qwen2.py``):

- RMSNorm: x̂ = w · (x / sqrt(mean(x²) + ε)), computed in float32 and cast back as HF does;
- attention: q, k, v = x W_qkvᵀ (+ b_qkv, one fused matmul); rotary
  q·cos + rotate_half(q)·sin with cos/sin taken from the model's own ``rotary_emb`` (so
  every static rope type of transformers 5 — default, linear, llama3, yarn — and its
  attention scaling are reproduced); grouped-query
  ``scaled_dot_product_attention`` with scale 1/√d over a preallocated static KV cache;
  o = attn W_oᵀ (+ b_o);
- SwiGLU MLP: down(silu(gate(x)) · up(x)) with gate and up fused into one matmul;
- logits of the last position only: norm(h_last) W_headᵀ (tied embeddings read as is).

Several models that decode the same rows (policy and reference in Nash-MD-PG) are stacked
along a leading model axis and run by ``torch.bmm`` in one call. Weights are concatenated /
stacked once per :func:`nlhf_torch.generation.generate_pairs` call (the policy changes
every step), so the fast path is limited to models of at most :data:`MAX_PARAMS`
parameters in total — the regime where Python overhead dominates. Everything else
(other architectures, PEFT/LoRA layers, DeepSpeed ZeRO-3 partitioned parameters, modules
with forward hooks other than a DeepSpeed engine's own two on the root — so ZeRO 1/2
engines decode fast —, half precision, sliding-window layers, dynamic/longrope rope) goes
through the HF path.
On by default; ``NLHF_FAST_DECODE=0`` turns the fast path off (the HF path runs).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["MAX_PARAMS", "FastGroup", "enabled", "supported"]

MAX_PARAMS = 200_000_000
_CLASSES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}


def enabled() -> bool:
    """False when the environment variable ``NLHF_FAST_DECODE`` is ``0``/``false``/``off``
    (debugging: force the HF path); on by default."""
    return os.environ.get("NLHF_FAST_DECODE", "1").strip().lower() not in ("0", "false", "off")


def supported(model: Any) -> bool:
    """Whether ``model`` is a plain, unwrapped, float32/float64 Llama or Qwen2 causal LM
    whose forward this module reproduces exactly (:func:`unsupported_reason` is None)."""
    return unsupported_reason(model) is None


def unsupported_reason(model: Any) -> str | None:
    """Why ``model`` must take the Hugging Face decode path, or None when the fused path
    reproduces its forward exactly (recorded as a run's ``decode_path``)."""
    try:
        name = type(model).__name__
        if hasattr(model, "peft_config"):
            return "adapted (LoRA/PEFT) model; the fused path runs plain linear layers"
        if _CLASSES.get(name) != getattr(model.config, "model_type", None):
            return f"architecture {name} (fused: Llama, Qwen2)"
        cfg = model.config
        if getattr(cfg, "hidden_act", None) != "silu":
            return f"activation {getattr(cfg, 'hidden_act', None)}"
        if getattr(model, "_hf_hook", None):
            return "an accelerate hook on the model"
        if getattr(cfg, "use_sliding_window", False) or getattr(cfg, "pretraining_tp", 1) != 1:
            return "sliding-window attention or pretraining_tp"
        if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
            return "layers other than full attention"
        rope = getattr(model.model.rotary_emb, "rope_type", "default")
        if rope in ("dynamic", "longrope"):
            return f"rope scaling {rope}"
        if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
            return "logit soft-capping or scaling"
        params = list(model.parameters())
        dtype, device = params[0].dtype, params[0].device
        for p in params:
            if hasattr(p, "ds_id"):
                return "DeepSpeed ZeRO-3 partitioned parameters"
            if p.dtype != dtype or p.device != device or p.numel() == 0:
                return "parameters of mixed dtypes or devices"
        if dtype not in (torch.float32, torch.float64):
            return f"dtype {str(dtype).removeprefix('torch.')} (fused: float32, float64)"
        linear = torch.nn.Linear
        if type(model.lm_head) is not linear:
            return "a wrapped lm_head"
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            mods = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)
            if any(type(x) is not linear for x in mods):
                return "adapted (LoRA/PEFT) or wrapped linear layers"
        if any(_foreign_hooks(mod, root=mod is model) for mod in model.modules()):
            return "forward hooks on the model"
        return None
    except Exception as exc:  # an unexpected model layout: the HF path is always correct
        return f"unrecognised model layout ({type(exc).__name__})"


def _deepspeed_engine_hook(hook: Any) -> bool:
    return getattr(hook, "__qualname__", "").startswith("DeepSpeedEngine.")


def _foreign_hooks(module: torch.nn.Module, *, root: bool) -> bool:
    """Whether ``module`` has forward hooks the fast path would skip. The two hooks a
    DeepSpeed engine puts on its root module are exempt: they keep timers and the flops
    profiler, cast fp16 inputs and flag ZeRO-3 parameter discovery, none of which concerns
    a float32 ZeRO 1/2 sampling pass (ZeRO-3 is refused by the ``ds_id`` check)."""
    hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    if root:
        hooks = [h for h in hooks if not _deepspeed_engine_hook(h)]
    return bool(hooks)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF RMSNorm: weight · (x₃₂ · rsqrt(mean(x₃₂²) + ε)).to(dtype)."""
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin, rotate_half(x) = cat(−x₂, x₁) (HF ``apply_rotary_pos_emb``)."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def _stack(ts: list[torch.Tensor | None]) -> torch.Tensor | None:
    if all(t is None for t in ts):
        return None
    ts = [
        t if t is not None else torch.zeros_like(next(u for u in ts if u is not None)) for t in ts
    ]
    return torch.stack([t.detach() for t in ts])


class FastGroup:
    """M architecturally identical models decoding the same rows with one static KV cache.

    ``rows`` (R,) are indices into the generator's 2B rows; row r continues prompt r mod B.
    :meth:`prefill` runs the B prompts once and expands the cache to the rows;
    :meth:`step` feeds one token per row. Both leave ``self.logits`` (M, R, V) holding the
    last-position logits.
    """

    def __init__(self, models: list[Any], rows: torch.Tensor, max_new_tokens: int) -> None:
        self.models = models
        self.rows = rows
        self.max_new_tokens = max_new_tokens
        cfg = models[0].config
        attn0 = models[0].model.layers[0].self_attn
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(cfg.num_key_value_heads)
        self.head_dim = int(attn0.head_dim)
        self.scaling = float(attn0.scaling)
        self.n_layers = len(models[0].model.layers)
        self.eps_final = float(models[0].model.norm.variance_epsilon)
        self.layers: list[dict[str, Any]] = []
        for i in range(self.n_layers):
            ls = [m.model.layers[i] for m in models]
            att = [layer.self_attn for layer in ls]
            mlp = [layer.mlp for layer in ls]
            qkv_w = [torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]) for a in att]
            qkv_b = [
                None
                if a.q_proj.bias is None
                else torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
                for a in att
            ]
            gu_w = [torch.cat([m.gate_proj.weight, m.up_proj.weight]) for m in mlp]
            gu_b = [
                None if m.gate_proj.bias is None else torch.cat([m.gate_proj.bias, m.up_proj.bias])
                for m in mlp
            ]
            self.layers.append(
                {
                    "ln1": _stack([layer.input_layernorm.weight for layer in ls]).unsqueeze(1),
                    "eps1": float(ls[0].input_layernorm.variance_epsilon),
                    "ln2": _stack(
                        [layer.post_attention_layernorm.weight for layer in ls]
                    ).unsqueeze(1),
                    "eps2": float(ls[0].post_attention_layernorm.variance_epsilon),
                    "qkv": _stack(qkv_w).transpose(1, 2).contiguous(),
                    "qkv_b": _bias(_stack(qkv_b)),
                    "o": _stack([a.o_proj.weight for a in att]).transpose(1, 2).contiguous(),
                    "o_b": _bias(_stack([a.o_proj.bias for a in att])),
                    "gu": _stack(gu_w).transpose(1, 2).contiguous(),
                    "gu_b": _bias(_stack(gu_b)),
                    "down": _stack([m.down_proj.weight for m in mlp]).transpose(1, 2).contiguous(),
                    "down_b": _bias(_stack([m.down_proj.bias for m in mlp])),
                }
            )
        self.embed = _stack([m.model.embed_tokens.weight for m in models])  # (M, V, h)
        self.norm = _stack([m.model.norm.weight for m in models]).unsqueeze(1)
        self.head = _stack([m.lm_head.weight for m in models]).transpose(1, 2).contiguous()
        self.head_b = _bias(_stack([m.lm_head.bias for m in models]))
        self.dtype = self.embed.dtype
        self.logits: torch.Tensor | None = None

    def _rope_tables(self, n_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin (M, n_pos, d) for positions 0..n_pos−1 from each model's ``rotary_emb``."""
        dev = self.embed.device
        pos = torch.arange(n_pos, device=dev)[None]
        x = torch.empty(1, dtype=self.dtype, device=dev)
        cs = [m.model.rotary_emb(x, pos) for m in self.models]
        return torch.cat([c for c, _ in cs]), torch.cat([s for _, s in cs])

    def _layers(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int, mask: torch.Tensor
    ) -> torch.Tensor:
        """x (M, R, S, h) at cache slots start..start+S−1, L = start + S keys; ``mask``: bool
        (R, 1, S, L) when S > 1, additive (R, 1, 1, L) (0 or −inf) when S = 1."""
        m, r, s, h = x.shape
        nh, nkv, d = self.n_heads, self.n_kv, self.head_dim
        end = start + s
        for i, p in enumerate(self.layers):
            hn = _rms(x, p["ln1"].unsqueeze(1), p["eps1"]).reshape(m, r * s, h)
            qkv = _mm(hn, p["qkv"], p["qkv_b"]).view(m, r, s, nh + 2 * nkv, d).transpose(2, 3)
            q = _rope(qkv[:, :, :nh], cos, sin)
            k = _rope(qkv[:, :, nh : nh + nkv], cos, sin)
            self.k_cache[i][:, :, :, start:end] = k
            self.v_cache[i][:, :, :, start:end] = qkv[:, :, nh + nkv :]
            keys, values = self.k_cache[i][:, :, :, :end], self.v_cache[i][:, :, :, :end]
            if s == 1:  # decode: q (M·R, kv, g, d) · kᵀ per KV head, additive mask (R, 1, 1, L)
                scores = q.reshape(m * r, nkv, nh // nkv, d) @ keys.reshape(m * r, nkv, end, d).mT
                scores = scores.view(m, r, nkv, nh // nkv, end) * self.scaling + mask
                att = scores.softmax(-1).view(m * r, nkv, nh // nkv, end) @ values.reshape(
                    m * r, nkv, end, d
                )
                att = att.view(m, r, nh, 1, d)
            else:  # prefill: boolean mask (R, 1, S, L)
                att = F.scaled_dot_product_attention(
                    q.reshape(m * r, nh, s, d),
                    keys.reshape(m * r, nkv, end, d),
                    values.reshape(m * r, nkv, end, d),
                    attn_mask=mask.repeat(m, 1, 1, 1),
                    scale=self.scaling,
                    enable_gqa=nh != nkv,
                ).view(m, r, nh, s, d)
            att = att.transpose(2, 3).reshape(m, r * s, nh * d)
            x = x + _mm(att, p["o"], p["o_b"]).view(m, r, s, h)
            hn = _rms(x, p["ln2"].unsqueeze(1), p["eps2"]).reshape(m, r * s, h)
            gate, up = _mm(hn, p["gu"], p["gu_b"]).chunk(2, dim=-1)
            x = x + _mm(F.silu(gate) * up, p["down"], p["down_b"]).view(m, r, s, h)
        return x

    def _head(self, x_last: torch.Tensor) -> torch.Tensor:
        """(M, R, h) → logits (M, R, V)."""
        return _mm(_rms(x_last, self.norm, self.eps_final), self.head, self.head_b)

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Run the B left-padded prompts, then expand cache and logits to ``self.rows``."""
        b, plen = input_ids.shape
        dev = input_ids.device
        m = len(self.models)
        total = plen + self.max_new_tokens
        cos_t, sin_t = self._rope_tables(total)
        amask = attention_mask.bool()
        pos = amask.long().cumsum(-1) - 1
        pos = pos.masked_fill(~amask, 1)  # position_ids_from_mask
        causal = torch.ones(plen, plen, dtype=torch.bool, device=dev).tril()
        # a pad query attends to itself only (its output never reaches a real token), which
        # keeps every softmax row finite
        eye = torch.eye(plen, dtype=torch.bool, device=dev)
        mask = (causal & amask[:, None, None, :]) | eye
        shape = (m, b, self.n_kv, total, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=dev) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=dev) for _ in self.layers]
        x = self.embed[:, input_ids]  # (M, B, P, h)
        cos = cos_t[:, pos].unsqueeze(2)  # (M, B, 1, P, d)
        sin = sin_t[:, pos].unsqueeze(2)
        x = self._layers(x, cos, sin, 0, mask)
        logits = self._head(x[:, :, -1])
        prompt = self.rows % b
        if not torch.equal(prompt, torch.arange(b, device=dev)):
            self.k_cache = [k[:, prompt] for k in self.k_cache]
            self.v_cache = [v[:, prompt] for v in self.v_cache]
            logits = logits[:, prompt]
        self.logits = logits
        # per-row state for decoding: key mask over all cache slots and rotary tables
        row_mask = amask[prompt]
        ones = torch.ones(len(prompt), self.max_new_tokens, dtype=torch.bool, device=dev)
        keep = torch.cat([row_mask, ones], dim=1)[:, None, None, :]  # (R, 1, 1, L)
        self.key_bias = torch.zeros(keep.shape, dtype=self.dtype, device=dev).masked_fill(
            ~keep, float("-inf")
        )
        dec_pos = row_mask.long().sum(-1, keepdim=True) + torch.arange(
            self.max_new_tokens, device=dev
        )  # (R, T): position of the token fed at decode step n
        self.dec_cos = cos_t[:, dec_pos]  # (M, R, T, d)
        self.dec_sin = sin_t[:, dec_pos]
        self.cur = plen

    def step(self, tokens: torch.Tensor, n: int) -> None:
        """Feed ``tokens`` (R,) — token n of each row (n = 0 for the first sampled token)."""
        x = self.embed[:, tokens].unsqueeze(2)  # (M, R, 1, h)
        cos = self.dec_cos[:, :, n, None, None]  # (M, R, 1, 1, d)
        sin = self.dec_sin[:, :, n, None, None]
        end = self.cur + 1
        x = self._layers(x, cos, sin, self.cur, self.key_bias[..., :end])
        self.cur = end
        self.logits = self._head(x[:, :, 0])


def _bias(b: torch.Tensor | None) -> torch.Tensor | None:
    return None if b is None else b.unsqueeze(1)  # (M, 1, out)


def _mm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Batched x Wᵀ + b with W pre-transposed: x (M, N, in), w (M, in, out), b (M, 1, out)."""
    return torch.bmm(x, w) if b is None else torch.baddbmm(b, x, w)
