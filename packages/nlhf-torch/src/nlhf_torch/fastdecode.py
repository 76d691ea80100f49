"""Fused sampling-only forward of transformers' decoder-only causal LMs (docs/architecture.md §6).

On small models the cost of a cached decode step is per-module Python overhead, not
arithmetic: transformers' Qwen2 spends ~1.8 ms per forward of a 128-wide model. This
module re-implements the forward for sampling only (no gradient) directly on the HF
model's own parameter tensors, with each architecture exactly as in transformers 5
(``modeling_{llama,qwen2,qwen3,mistral,gemma2,gemma3,phi3}.py``):

- RMSNorm in float32 and cast back as HF does: Llama family w · (x̂).to(dtype), Gemma
  (x̂ · (1 + w)).to(dtype), x̂ = x / sqrt(mean(x²) + ε); Gemma 2/3 "sandwich" norms
  (post-attention and pre/post-feed-forward);
- attention: q, k, v = x W_qkvᵀ (+ b_qkv, one fused matmul, or Phi-3's own fused
  ``qkv_proj``); Qwen3/Gemma 3 q/k RMSNorm per head; rotary q·cos + rotate_half(q)·sin on
  the first ``cos.shape[-1]`` dims (Phi-3 partial rotary) with cos/sin taken from the
  model's own ``rotary_emb`` (every static rope type of transformers 5 — default, linear,
  llama3, yarn — its attention scaling, and Gemma 3's per-layer-type tables); grouped-query
  attention with the model's ``scaling`` over a preallocated static KV cache; sliding
  windows (Mistral, Phi-3, Qwen2/3 and Gemma ``sliding_attention`` layers) as masks over
  cache slots, key j visible from query i iff i − W < j ≤ i (transformers'
  ``sliding_window_overlay``); Gemma 2 attention-logit soft-capping c·tanh(s/c) and the
  eager softmax in float32;
- gated MLP: down(act(gate(x)) · up(x)) with the model's own activation module;
- logits of the last position only: norm(h_last) W_headᵀ (tied embeddings read as is),
  Gemma's final soft-capping; Gemma's embedding scale √h in the model's dtype.

Precision: every matmul runs in the model's dtype (float64, float32, bfloat16, float16);
norms and the attention softmax of half-precision models in float32 as in HF. The sampler
(:func:`nlhf_torch.generation.generate_pairs`) mixes and normalises the logits in float32
and accumulates the inverse CDF in float64.

LoRA (``peft``): a ``LoraModel`` runs W x + s·B(A x), s = α/r (``lora_A``/``lora_B``/
``scaling`` of every active adapter; dropout is off at sampling, the models are in eval
mode), and its reference μ — the same module with the adapter disabled
(:class:`nlhf_torch.models.AdapterDisabled`) — runs the *same* base weight tensors without
the deltas, so μ costs no second copy of the base (members of a group that share a weight
tensor go through one matmul over all their rows).

Several models that decode the same rows (policy and reference in Nash-MD-PG) form a
group and run as one batched call: weights that differ are stacked along a leading model
axis for ``torch.bmm``. Stacking and fusing q/k/v and gate/up (and stacking the
embedding tables) copy weights, which pays only where Python overhead dominates, so it is
done for models of at most :data:`FUSE_MAX_PARAMS` parameters; larger models run one
matmul per weight on the parameters in place and index their own embedding tables (no
copy). There is no size limit otherwise: what the fused path allocates — those copies
plus the static KV cache of every group — is estimated first (:func:`memory_needed`) and
the HF path is taken, with the reason, when it exceeds the device's free memory.

DeepSpeed: ZeRO 1/2 engines keep whole parameters and decode as they are; ZeRO-3
partitioned parameters are gathered once per generation (:func:`gathered`,
``deepspeed.zero.GatheredParameters``) and partitioned again when it ends, instead of
ZeRO-3's module-by-module fetch and release on every forward of the HF path.

Everything else takes the HF path with a precise reason (:func:`unsupported_reason`,
recorded as a run's ``decode_path``): other architectures, peft adapters other than LoRA,
DoRA/merged/biased LoRA and ``modules_to_save``, modules with forward hooks other than a
DeepSpeed engine's own (its two root hooks, ZeRO-3's offload hooks), dynamic/longrope
rope, ``pretraining_tp``.
On by default; ``NLHF_FAST_DECODE=0`` turns the fast path off (the HF path runs).

Decode steps: :meth:`FastGroup.step` slices the cache at the Python position (CPU, and CUDA
with ``NLHF_CUDA_GRAPHS=0``); :meth:`FastGroup.step_static` computes the same step with
shapes independent of the position (a device tensor) for CUDA-graph capture
(:mod:`nlhf_torch.cudagraph`), reading all cache slots under masks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nlhf_torch.cudagraph import DecodeGraphs, GraphKey

__all__ = [
    "FUSE_MAX_PARAMS",
    "FastGroup",
    "KVCachePool",
    "enabled",
    "free_memory",
    "gathered",
    "memory_needed",
    "partitioned",
    "signature",
    "supported",
    "unique_prompts",
    "unsupported_reason",
]

FUSE_MAX_PARAMS = 5_000_000
"""Models up to this size get stacked/fused weight copies (one ``bmm`` per layer part);
larger ones run on their parameters in place. Measured on one CPU thread
(``benchmarks/generation_bench.py``, policy + reference, 16 rows): the copies save 29 % of
the generation time at 0.6M parameters, are neutral (±1 %) at 6.6M and cost 12 % at 52M;
on SmolLM2-135M they would copy 1.3 GB for no gain."""

#: class name → model_type of the architectures this module reproduces
_CLASSES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "MistralForCausalLM": "mistral",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text",
    "Phi3ForCausalLM": "phi3",
}
_GEMMA = ("gemma2", "gemma3_text")
_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def enabled() -> bool:
    """False when the environment variable ``NLHF_FAST_DECODE`` is ``0``/``false``/``off``
    (debugging: force the HF path); on by default."""
    return os.environ.get("NLHF_FAST_DECODE", "1").strip().lower() not in ("0", "false", "off")


def supported(model: Any) -> bool:
    """Whether this module reproduces ``model``'s forward exactly (:func:`unsupported_reason`
    is None)."""
    return unsupported_reason(model) is None


@dataclass(frozen=True)
class _Resolved:
    """The transformers causal LM the fused decoder runs, and whether LoRA deltas apply."""

    hf: Any
    adapter: bool
    peft: Any = None


def _resolve(model: Any) -> _Resolved:
    """A plain HF model, a peft ``PeftModel`` (adapter on unless disabled) or
    :class:`nlhf_torch.models.AdapterDisabled` (its policy with the adapter off)."""
    from nlhf_torch.models import AdapterDisabled

    if isinstance(model, AdapterDisabled):
        inner = _resolve(model._policy[0])
        return _Resolved(inner.hf, adapter=False, peft=inner.peft)
    if type(model).__module__.startswith("peft.") and hasattr(model, "get_base_model"):
        return _Resolved(model.get_base_model(), adapter=True, peft=model)
    return _Resolved(model, adapter=False)


def _lora_layer_reason(layer: Any) -> str | None:
    from peft.tuners.lora.layer import Linear as LoraLinear

    if type(layer) is not LoraLinear:
        return f"LoRA layer {type(layer).__name__} (fused: peft lora.Linear)"
    if type(layer.base_layer) is not torch.nn.Linear:
        return "a LoRA layer over a quantised or wrapped base layer"
    if layer.merged:
        return "a merged LoRA adapter (unmerge it, or merge_and_unload)"
    for a in layer.active_adapters:
        if a not in layer.lora_A:
            continue
        if a in getattr(layer, "lora_variant", {}) or layer.use_dora.get(a, False):
            return "a LoRA variant (DoRA, …); fused: plain LoRA"
        if layer.lora_B[a].bias is not None:
            return "LoRA with lora_bias"
        if layer.lora_A[a].weight.dtype != layer.lora_B[a].weight.dtype:
            return "LoRA A and B matrices of different dtypes"
    return None


def _linear_reason(mod: Any, peft: bool) -> str | None:
    if type(mod) is torch.nn.Linear:
        return None
    if peft and hasattr(mod, "lora_A"):
        return _lora_layer_reason(mod)
    return f"a wrapped linear layer ({type(mod).__name__})"


def _attn_linears(layer: Any) -> list[Any]:
    a = layer.self_attn
    return [a.qkv_proj] if hasattr(a, "qkv_proj") else [a.q_proj, a.k_proj, a.v_proj]


def _mlp_linears(layer: Any) -> list[Any]:
    m = layer.mlp
    return [m.gate_up_proj] if hasattr(m, "gate_up_proj") else [m.gate_proj, m.up_proj]


def unsupported_reason(model: Any) -> str | None:
    """Why ``model`` must take the Hugging Face decode path, or None when the fused path
    reproduces its forward exactly (recorded as a run's ``decode_path``)."""
    try:
        res = _resolve(model)
        peft = res.peft is not None
        hf = res.hf
        name = type(hf).__name__
        cfg = hf.config
        if _CLASSES.get(name) != getattr(cfg, "model_type", None):
            fused = ", ".join(sorted(_CLASSES))
            return f"architecture {name} (fused: {fused})"
        if peft:
            kinds = {str(c.peft_type) for c in res.peft.peft_config.values()}
            if kinds - {"LORA", "PeftType.LORA"}:
                return f"peft adapter type {', '.join(sorted(kinds))} (fused: LoRA)"
            for mod in hf.modules():
                if type(mod).__name__ == "ModulesToSaveWrapper":
                    return "peft modules_to_save (a trained copy of a whole module)"
        if getattr(hf, "_hf_hook", None) or getattr(model, "_hf_hook", None):
            return "an accelerate hook on the model"
        if getattr(cfg, "pretraining_tp", 1) != 1:
            return "pretraining_tp"
        rotary = hf.model.rotary_emb
        rope_types = getattr(rotary, "rope_type", "default")
        for rope in rope_types.values() if isinstance(rope_types, dict) else [rope_types]:
            if rope in ("dynamic", "longrope"):
                return f"rope scaling {rope} (depends on the sequence length)"
        if getattr(cfg, "logit_scale", None):
            return "logit scaling"
        params = list(hf.named_parameters())
        dtype, device = hf.lm_head.weight.dtype, hf.lm_head.weight.device
        zero3 = partitioned(hf)
        for pname, p in params:
            if zero3 and not hasattr(p, "ds_id"):
                return "ZeRO-3 with parameters outside DeepSpeed's partitioning"
            lora = peft and ".lora_" in pname  # peft keeps adapters in float32 by default
            if (p.dtype != dtype and not lora) or p.device != device or _numel(p) == 0:
                return "parameters of mixed dtypes or devices"
        if dtype not in _DTYPES:
            return (
                f"dtype {str(dtype).removeprefix('torch.')} (fused: float64/32, bfloat16, float16)"
            )
        if type(hf.lm_head) is not torch.nn.Linear:
            return "a wrapped or adapted lm_head"
        if not isinstance(hf.model.embed_tokens, torch.nn.Embedding) or hasattr(
            hf.model.embed_tokens, "lora_A"
        ):
            return "a wrapped or adapted embedding"
        for layer in hf.model.layers:
            for mod in [*_attn_linears(layer), layer.self_attn.o_proj, *_mlp_linears(layer)]:
                mod_reason = _linear_reason(mod, peft)
                if mod_reason is not None:
                    return mod_reason
            mlp = layer.mlp
            if not callable(getattr(mlp, "act_fn", getattr(mlp, "activation_fn", None))):
                return "an MLP without an activation module"
        roots = (model, hf) if peft else (model,)
        for mod in hf.modules():
            if _foreign_hooks(mod, root=mod in roots, zero3=zero3):
                return "forward hooks on the model"
        return None
    except Exception as exc:  # an unexpected model layout: the HF path is always correct
        return f"unrecognised model layout ({type(exc).__name__}: {exc})"


def _deepspeed_engine_hook(hook: Any) -> bool:
    return getattr(hook, "__qualname__", "").startswith("DeepSpeedEngine.")


def _zero3_hook(hook: Any) -> bool:
    """A hook of ZeRO-3's parameter offload (``deepspeed.runtime.zero``), also when wrapped
    by ``deepspeed.utils.nvtx.instrument_w_nvtx``."""
    if getattr(hook, "__module__", "") == "deepspeed.utils.nvtx":
        cells = [c.cell_contents for c in hook.__closure__ or ()]
        hook = next((c for c in cells if callable(c)), hook)
    return getattr(hook, "__module__", "").startswith("deepspeed.runtime.zero.")


def _foreign_hooks(module: torch.nn.Module, *, root: bool, zero3: bool = False) -> bool:
    """Whether ``module`` has forward hooks the fast path would skip. The two hooks a
    DeepSpeed engine puts on its root module are exempt: they keep timers and the flops
    profiler, cast fp16 inputs and flag ZeRO-3 parameter discovery, none of which concerns
    a sampling pass; so are ZeRO-3's per-module fetch/release hooks on a partitioned model,
    whose work :func:`gathered` does once for the whole generation."""
    hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    if root:
        hooks = [h for h in hooks if not _deepspeed_engine_hook(h)]
    if zero3:
        hooks = [h for h in hooks if not _zero3_hook(h)]
    return bool(hooks)


def partitioned(model: Any) -> bool:
    """Whether ``model`` holds DeepSpeed ZeRO-3 partitioned parameters (``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in _resolve(model).hf.parameters())


def _shape(p: torch.Tensor) -> tuple[int, ...]:
    """A parameter's shape, its full shape when ZeRO-3 partitions it (``ds_shape``)."""
    return tuple(getattr(p, "ds_shape", p.shape))


def _numel(p: torch.Tensor) -> int:
    """Elements of a parameter, its full size when ZeRO-3 partitions it (``ds_numel``)."""
    return int(getattr(p, "ds_numel", p.numel()))


def gathered(models: list[Any]) -> Any:
    """A context gathering the ZeRO-3 partitioned parameters of ``models`` once (every rank
    enters it together, as every rank calls the generator) and partitioning them again on
    exit (``deepspeed.zero.GatheredParameters``); a no-op without ZeRO-3."""
    import contextlib

    params = {id(p): p for m in models for p in _resolve(m).hf.parameters() if hasattr(p, "ds_id")}
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None)


def _eps(norm: Any) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", None)))


def _attn_softcap(cfg: Any) -> float | None:
    """tanh soft-capping of the attention scores: Gemma 2 applies
    ``attn_logit_softcapping``; Gemma 3 keeps the field but transformers never applies it."""
    if getattr(cfg, "model_type", None) != "gemma2":
        return None
    return getattr(cfg, "attn_logit_softcapping", None)


def _windows(hf: Any) -> list[int | None]:
    """Per-layer sliding window (None: full attention) as transformers' masks apply it."""
    cfg = hf.config
    out: list[int | None] = []
    for layer in hf.model.layers:
        attn = layer.self_attn
        if hasattr(attn, "sliding_window"):  # Qwen2/3, Gemma: per layer type
            w = attn.sliding_window
        else:  # Mistral, Phi-3: the config's window on every layer
            w = getattr(cfg, "sliding_window", None)
        out.append(None if w is None else int(w))
    return out


def _rope_keys(hf: Any) -> list[str | None]:
    """The rotary table of each layer: Gemma 3 keeps one per layer type."""
    if isinstance(getattr(hf.model.rotary_emb, "rope_type", None), dict):
        return list(hf.config.layer_types)
    return [None] * len(hf.model.layers)


def signature(model: Any) -> tuple[Any, ...]:
    """What must agree for two models to be stacked in one :class:`FastGroup`."""
    hf = _resolve(model).hf
    cfg = hf.config
    layer = hf.model.layers[0]
    attn = layer.self_attn
    mods = [*_attn_linears(layer), attn.o_proj, *_mlp_linears(layer), layer.mlp.down_proj]
    shapes = tuple((_shape(_base(m).weight), _base(m).bias is not None) for m in mods)
    norms = [n for lyr in hf.model.layers for n in _layer_norms(lyr).values()]
    eps = tuple(_eps(n) for n in [*norms, hf.model.norm])
    return (
        type(hf).__name__,
        len(hf.model.layers),
        int(cfg.num_attention_heads),
        int(cfg.num_key_value_heads),
        int(attn.head_dim),
        float(attn.scaling),
        shapes,
        hf.lm_head.bias is not None,
        _shape(hf.lm_head.weight),
        eps,
        tuple(_windows(hf)),
        tuple(_rope_keys(hf)),
        _attn_softcap(cfg),
        getattr(cfg, "final_logit_softcapping", None),
        float(getattr(hf.model.embed_tokens, "scalar_embed_scale", 1.0)),
        type(_act(layer)).__name__,
        hf.lm_head.weight.dtype,
        hf.lm_head.weight.device,
    )


def _act(layer: Any) -> Any:
    return getattr(layer.mlp, "act_fn", getattr(layer.mlp, "activation_fn", None))


def _layer_norms(layer: Any) -> dict[str, Any]:
    names = (
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    )
    out = {n: getattr(layer, n) for n in names if getattr(layer, n, None) is not None}
    for n in ("q_norm", "k_norm"):
        if getattr(layer.self_attn, n, None) is not None:
            out[n] = getattr(layer.self_attn, n)
    return out


def _base(mod: Any) -> torch.nn.Linear:
    return getattr(mod, "base_layer", mod)


def _n_params(hf: Any) -> int:
    return sum(_numel(p) for p in hf.parameters())


def memory_needed(
    models: list[list[Any]], rows: list[int], prompt_len: int, max_new_tokens: int
) -> int:
    """Bytes the fused path allocates for groups ``models`` (each a list of members) serving
    ``rows[g]`` rows: the static KV cache 2·layers·M·R·kv·(P+T)·d, the last-position logits
    M·R·V (and as many again for the sampler), for models of at most
    :data:`FUSE_MAX_PARAMS` parameters the stacked/fused weight copies (at most the
    members' own parameters), and the gathered weights of ZeRO-3 partitioned models.
    Shapes are read from the configs, so partitioned (empty) parameters count in full."""
    total = 0
    for members, r in zip(models, rows, strict=True):
        hf = _resolve(members[0]).hf
        cfg = hf.config
        attn = hf.model.layers[0].self_attn
        size = hf.lm_head.weight.element_size()
        m = len(members)
        kv = 2 * len(hf.model.layers) * m * r * int(cfg.num_key_value_heads)
        total += kv * (prompt_len + max_new_tokens) * int(attn.head_dim) * size
        total += 2 * m * r * int(hf.lm_head.out_features) * 4
        distinct = {id(_resolve(x).hf): _resolve(x).hf for x in members}
        for model in distinct.values():
            n = _n_params(model)
            if n <= FUSE_MAX_PARAMS:
                total += n * size
            if partitioned(model):  # gathered whole for the generation
                total += n * size
    return total


def free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (CUDA: ``torch.cuda.mem_get_info``; CPU: the OS's available
    memory), or None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            import psutil

            return int(psutil.virtual_memory().available)
        except ImportError:
            try:
                return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError):
                return None
    return None


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool) -> torch.Tensor:
    """HF RMSNorm: Llama weight · (x₃₂ · rsqrt(mean(x₃₂²) + ε)).to(dtype); Gemma
    (x₃₂ · rsqrt(…) · (1 + weight₃₂)).to(dtype)."""
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    if gemma:
        return (x32 * (1.0 + weight.float())).to(x.dtype)
    return weight * x32.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin on the first cos.shape[-1] dims (the rest pass through),
    rotate_half(x) = cat(−x₂, x₁) (HF ``apply_rotary_pos_emb``)."""
    rd = cos.shape[-1]
    xr, rest = (x, None) if rd == x.shape[-1] else (x[..., :rd], x[..., rd:])
    half = rd // 2
    rot = torch.cat((-xr[..., half:], xr[..., :half]), dim=-1)
    out = xr * cos + rot * sin
    return out if rest is None else torch.cat((out, rest), dim=-1)


class _Linear:
    """x Wᵀ + b (+ Σ s·(x Aᵀ) Bᵀ over active LoRA adapters) for the M members of a group on
    x (M, N, in), W the concatenation of the member's ``parts`` along the output axis.

    Members whose base weights are the same tensors (a LoRA policy and its adapter-off
    reference, or one model twice) share one matmul over all M·N rows; otherwise the
    weights are stacked for ``bmm`` (``fuse``) or used in place, one matmul per member."""

    def __init__(
        self,
        parts: list[list[Any]],
        adapters: list[bool],
        fuse: bool,
        memo: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor | None]],
    ) -> None:
        bases = [[_base(p) for p in ps] for ps in parts]
        ids = [tuple(id(b.weight) for b in bs) for bs in bases]
        self.shared = all(i == ids[0] for i in ids)
        self.fuse = fuse
        self.has_bias = bases[0][0].bias is not None
        if self.shared:
            bs = bases[0]
            if fuse and len(bs) > 1:  # one concatenated copy per call, shared by groups
                if ids[0] not in memo:
                    memo[ids[0]] = (
                        torch.cat([b.weight.detach() for b in bs]),
                        torch.cat([b.bias.detach() for b in bs]) if self.has_bias else None,
                    )
                w, b = memo[ids[0]]
                self.w, self.b = [w], [b]
            else:
                self.w = [b.weight.detach() for b in bs]
                self.b = [None if b.bias is None else b.bias.detach() for b in bs]
        elif fuse:
            self.w = torch.stack(
                [torch.cat([b.weight.detach() for b in bs]).T for bs in bases]
            ).contiguous()  # (M, in, out)
            self.b = (
                torch.stack([torch.cat([b.bias.detach() for b in bs]) for bs in bases]).unsqueeze(1)
                if self.has_bias
                else None
            )
        else:
            self.w = [[b.weight.detach() for b in bs] for bs in bases]
            self.b = [[None if b.bias is None else b.bias.detach() for b in bs] for bs in bases]
        self.lora = [_lora(ps) if on else None for ps, on in zip(parts, adapters, strict=True)]
        self.out_features = sum(b.weight.shape[0] for b in bases[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m, n, d_in = x.shape
        if self.shared:
            flat = x.reshape(m * n, d_in)
            outs = [F.linear(flat, w, b) for w, b in zip(self.w, self.b, strict=True)]
            y = (outs[0] if len(outs) == 1 else torch.cat(outs, -1)).view(m, n, -1)
        elif self.fuse:
            y = torch.bmm(x, self.w) if self.b is None else torch.baddbmm(self.b, x, self.w)
        else:  # each member's parts written straight into its rows of one output
            y = x.new_empty(m, n, self.out_features)
            for j, (ws, bs) in enumerate(zip(self.w, self.b, strict=True)):
                if len(ws) == 1:
                    _linear_into(y[j], x[j], ws[0], bs[0])
                    continue
                lo = 0
                for w, b in zip(ws, bs, strict=True):
                    hi = lo + w.shape[0]
                    y[j, :, lo:hi] = F.linear(x[j], w, b)
                    lo = hi
        for j, lo in enumerate(self.lora):
            if lo is not None:  # in the adapter's dtype, added in float32 when they differ
                a, b_s = lo
                y[j] += (x[j].to(a.dtype) @ a) @ b_s
        return y


def _linear_into(
    out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None
) -> None:
    """``out = x Wᵀ + b`` without a temporary (what ``F.linear`` computes: ``mm``, or
    ``addmm`` with the bias), for contiguous 2-D ``out``."""
    if b is None:
        torch.mm(x, w.T, out=out)
    else:
        torch.addmm(b, x, w.T, out=out)


def _lora(parts: list[Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(Aᵀ (in, ΣR), (s·B)ᵀ block-diagonal (ΣR, out)) over the parts' active adapters, or
    None when no part carries one (peft: result + lora_B(lora_A(x)) · scaling)."""
    a_s, b_s = [], []
    for p in parts:
        out_p = _base(p).weight.shape[0]
        blocks_a, blocks_b = [], []
        if hasattr(p, "lora_A") and not p.disable_adapters:
            for name in p.active_adapters:
                if name in p.lora_A:
                    blocks_a.append(p.lora_A[name].weight.detach())
                    blocks_b.append(p.lora_B[name].weight.detach() * p.scaling[name])
        w = _base(p).weight
        a_s.append(torch.cat(blocks_a) if blocks_a else w.new_zeros(0, w.shape[1]))
        b_s.append(torch.cat(blocks_b, 1) if blocks_b else w.new_zeros(out_p, 0))
    if all(a.shape[0] == 0 for a in a_s):
        return None
    return torch.cat(a_s).T.contiguous(), torch.block_diag(*b_s).T.contiguous()


def unique_prompts(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct prompts of a left-padded batch (rows equal in ids and mask), so each is
    prefilled once: ``keep`` (U,) the first row of each in order of appearance, ``source``
    (B,) the index into ``keep`` of every row's prompt (``input_ids[keep][source]`` equals
    ``input_ids``). Rows repeat where a caller samples several responses per prompt in one
    call (the prompts tiled ⌈K/2⌉ times); the y and y′ rows of a pair already share one
    prompt row."""
    b = input_ids.shape[0]
    key = torch.cat([input_ids.long(), attention_mask.long()], dim=1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    if len(uniq) == b:  # all distinct: no reordering
        arange = torch.arange(b, device=input_ids.device)
        return arange, arange
    first = torch.full((len(uniq),), b, dtype=torch.long, device=input_ids.device)
    first = first.scatter_reduce(0, inverse, torch.arange(b, device=first.device), "amin")
    order = first.argsort()  # distinct prompts in order of their first row
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    return first[order], rank[inverse]


def _stack(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.detach() for t in ts])


class KVCachePool:
    """Storage of the fused decode's static KV caches kept across generation calls, so a
    run allocates them once instead of once per step (``generate_pairs(cache_pool=...)``,
    held by the torch stepper). One flat buffer per (group, layer, K/V), zeroed when
    allocated and grown only when a call needs more (a longer prompt bucket, more rows);
    each call views it in the exact (M, R, H_kv, L, d) shape it needs. Slots a call has not
    written are never read (attention reads slots below the current position only)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, str], list[torch.Tensor]] = {}

    def take(
        self, key: tuple[int, str], n: int, shape: tuple[int, ...], like: torch.Tensor
    ) -> list[torch.Tensor]:
        """``n`` contiguous tensors of ``shape`` (dtype and device of ``like``) on storage
        that outlives the call."""
        numel = 1
        for size in shape:
            numel *= size
        bufs = self._buffers.get(key)
        fits = bufs is not None and len(bufs) == n and bufs[0].numel() >= numel
        if not fits or bufs[0].dtype != like.dtype or bufs[0].device != like.device:
            bufs = [torch.zeros(numel, dtype=like.dtype, device=like.device) for _ in range(n)]
            self._buffers[key] = bufs
        return [b[:numel].view(shape) for b in bufs]


class FastGroup:
    """M architecturally identical models decoding the same rows with one static KV cache.

    ``rows`` (R,) are indices into the generator's 2B rows; row r continues prompt r mod B.
    :meth:`prefill` runs each distinct prompt once and expands the cache to the rows;
    :meth:`step` feeds one token per row. Both leave ``self.logits`` (M, R, V) holding the
    last-position logits.
    """

    def __init__(
        self,
        models: list[Any],
        rows: torch.Tensor,
        max_new_tokens: int,
        memo: dict[tuple[int, ...], Any] | None = None,
        pool: tuple[KVCachePool, int] | None = None,
    ) -> None:
        """``memo``: fused q/k/v and gate/up copies by weight identity, shared between the
        groups of one generation (a LoRA policy and its adapter-off reference decoding
        different rows then share one copy). ``pool``: (a run's :class:`KVCachePool`,
        this group's index in the call) to keep the KV cache between calls."""
        memo = {} if memo is None else memo
        self.pool = pool
        resolved = [_resolve(m) for m in models]
        hfs = [r.hf for r in resolved]
        adapters = [r.adapter for r in resolved]
        self.models = hfs
        self.rows = rows
        self.max_new_tokens = max_new_tokens
        hf0 = hfs[0]
        cfg = hf0.config
        attn0 = hf0.model.layers[0].self_attn
        fuse = max(_n_params(h) for h in hfs) <= FUSE_MAX_PARAMS
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(cfg.num_key_value_heads)
        self.head_dim = int(attn0.head_dim)
        self.scaling = float(attn0.scaling)
        self.n_layers = len(hf0.model.layers)
        self.gemma = getattr(cfg, "model_type", None) in _GEMMA
        self.attn_softcap = _attn_softcap(cfg)
        self.final_softcap = getattr(cfg, "final_logit_softcapping", None) if self.gemma else None
        half = self.dtype_of(hf0) in (torch.float16, torch.bfloat16)
        eager = getattr(cfg, "_attn_implementation", None) == "eager"
        self.softmax_dtype = torch.float32 if half or eager else None
        self.sdpa_prefill = getattr(cfg, "_attn_implementation", None) == "sdpa"
        self.windows = _windows(hf0)
        self.rope_keys = _rope_keys(hf0)
        self.eps_final = _eps(hf0.model.norm)
        self.layers: list[dict[str, Any]] = []
        for i in range(self.n_layers):
            ls = [h.model.layers[i] for h in hfs]
            norms = [_layer_norms(layer) for layer in ls]
            p: dict[str, Any] = {
                "norms": {k: _stack([n[k].weight for n in norms]).unsqueeze(1) for k in norms[0]},
                "eps": {k: _eps(v) for k, v in norms[0].items()},
                "qkv": _Linear([_attn_linears(layer) for layer in ls], adapters, fuse, memo),
                "o": _Linear([[layer.self_attn.o_proj] for layer in ls], adapters, fuse, memo),
                "gu": _Linear([_mlp_linears(layer) for layer in ls], adapters, fuse, memo),
                "down": _Linear([[layer.mlp.down_proj] for layer in ls], adapters, fuse, memo),
                "act": _act(ls[0]),
            }
            for k in ("q_norm", "k_norm"):  # per head: (M, 1, 1, 1, d)
                if k in p["norms"]:
                    p["norms"][k] = p["norms"][k].view(len(hfs), 1, 1, 1, -1)
            self.layers.append(p)
        embeds = [h.model.embed_tokens.weight for h in hfs]
        self.embed_shared = all(e is embeds[0] for e in embeds)
        # the tables themselves, or (small models) stacked for one gather over M
        self.embeds = [embeds[0].detach()] if self.embed_shared else [e.detach() for e in embeds]
        self.embed = self.embeds[0] if self.embed_shared or not fuse else _stack(embeds)
        scale = getattr(hf0.model.embed_tokens, "embed_scale", None)
        self.embed_scale = None if scale is None else scale.to(self.embed.dtype)
        self.norm = _stack([h.model.norm.weight for h in hfs]).unsqueeze(1)
        self.head = _Linear([[h.lm_head] for h in hfs], [False] * len(hfs), fuse, memo)
        self.dtype = self.embed.dtype
        self.logits: torch.Tensor | None = None

    @staticmethod
    def dtype_of(hf: Any) -> torch.dtype:
        return hf.lm_head.weight.dtype

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (R, S) → (M, R, S, h), times Gemma's √h in the model dtype."""
        m = len(self.models)
        if self.embed_shared:
            x = self.embed[tokens].unsqueeze(0).expand(m, *tokens.shape, -1)
        elif self.embed.ndim == 3:  # stacked copy (M, V, h)
            x = self.embed[:, tokens]
        else:
            x = torch.stack([e[tokens] for e in self.embeds])
        return x if self.embed_scale is None else x * self.embed_scale

    def _rope_tables(self, n_pos: int) -> dict[str | None, tuple[torch.Tensor, torch.Tensor]]:
        """cos/sin (M, n_pos, d) for positions 0..n_pos−1 from each model's ``rotary_emb``,
        one pair per rope key (Gemma 3: per layer type)."""
        dev = self.embed.device
        pos = torch.arange(n_pos, device=dev)[None]
        x = torch.empty(1, dtype=self.dtype, device=dev)
        out = {}
        for key in dict.fromkeys(self.rope_keys):
            args = () if key is None else (key,)
            cs = [m.model.rotary_emb(x, pos, *args) for m in self.models]
            out[key] = (torch.cat([c for c, _ in cs]), torch.cat([s for _, s in cs]))
        return out

    def _attend(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """softmax(cap(q kᵀ · scaling) + mask) v per KV head: q (M, R, nh, S, d), keys/values
        (M, R, kv, L, d), additive mask (R, 1, S, L); the softmax in float32 for
        half-precision models and wherever transformers runs its eager attention
        (``softmax(dtype=float32)``, even for float64 models). The prefill of a model that
        transformers runs with SDPA uses ``scaled_dot_product_attention`` too."""
        m, r, nh, s, d = q.shape
        nkv, g, n_keys = self.n_kv, nh // self.n_kv, keys.shape[3]
        if s > 1 and self.sdpa_prefill:  # prefill: memory-efficient kernels where HF uses them
            return F.scaled_dot_product_attention(
                q.reshape(m * r, nh, s, d),
                keys.reshape(m * r, nkv, n_keys, d),
                values.reshape(m * r, nkv, n_keys, d),
                attn_mask=mask.repeat(m, 1, 1, 1),
                scale=self.scaling,
                enable_gqa=nh != nkv,
            ).view(m, r, nh, s, d)
        qg = q.reshape(m * r, nkv, g * s, d)
        scores = qg @ keys.reshape(m * r, nkv, n_keys, d).mT
        scores = scores.view(m, r, nkv, g, s, n_keys) * self.scaling
        if self.attn_softcap is not None:
            scores = torch.tanh(scores / self.attn_softcap) * self.attn_softcap
        scores = scores + mask[:, None]
        probs = scores.softmax(-1, dtype=self.softmax_dtype).to(self.dtype)
        att = probs.view(m * r, nkv, g * s, n_keys) @ values.reshape(m * r, nkv, n_keys, d)
        return att.view(m, r, nh, s, d)

    def _layers(
        self,
        x: torch.Tensor,
        rope: dict[str | None, tuple[torch.Tensor, torch.Tensor]],
        start: int | torch.Tensor,
        masks: dict[int | None, torch.Tensor],
    ) -> torch.Tensor:
        """x (M, R, S, h) at cache slots start..start+S−1, L = start + S keys; ``masks`` by
        window: additive (R, 1, S, L) (0 or −inf). ``start`` a (1,) tensor (the static
        step, S = 1): K/V written there with ``index_copy_``, all L = capacity slots read
        under full-capacity masks (R, 1, 1, capacity)."""
        m, r, s, h = x.shape
        nh, nkv, d = self.n_heads, self.n_kv, self.head_dim
        static = isinstance(start, torch.Tensor)
        end = None if static else start + s
        g = self.gemma
        for i, p in enumerate(self.layers):
            nw, eps = p["norms"], p["eps"]
            cos, sin = rope[self.rope_keys[i]]
            hn = _rms(x, nw["input_layernorm"].unsqueeze(1), eps["input_layernorm"], g)
            qkv = p["qkv"](hn.reshape(m, r * s, h)).view(m, r, s, nh + 2 * nkv, d).transpose(2, 3)
            q, k = qkv[:, :, :nh], qkv[:, :, nh : nh + nkv]
            if "q_norm" in nw:
                q = _rms(q, nw["q_norm"], eps["q_norm"], g)
                k = _rms(k, nw["k_norm"], eps["k_norm"], g)
            w = self.windows[i]
            if static:  # one slot given as a (1,) tensor; every slot is read, masks decide
                self.k_cache[i].index_copy_(3, start, _rope(k, cos, sin))
                self.v_cache[i].index_copy_(3, start, qkv[:, :, nh + nkv :])
                keys, values, mask = self.k_cache[i], self.v_cache[i], masks[w]
            else:
                self.k_cache[i][:, :, :, start:end] = _rope(k, cos, sin)
                self.v_cache[i][:, :, :, start:end] = qkv[:, :, nh + nkv :]
                lo = 0 if w is None or s > 1 else max(0, end - w)  # decode: slice the window
                keys, values = self.k_cache[i][:, :, :, lo:end], self.v_cache[i][:, :, :, lo:end]
                mask = masks[w][..., lo:end]
            att = self._attend(_rope(q, cos, sin), keys, values, mask)
            att = p["o"](att.transpose(2, 3).reshape(m, r * s, nh * d)).view(m, r, s, h)
            if g:
                att = _rms(
                    att,
                    nw["post_attention_layernorm"].unsqueeze(1),
                    eps["post_attention_layernorm"],
                    g,
                )
                x = x + att
                hn = _rms(
                    x,
                    nw["pre_feedforward_layernorm"].unsqueeze(1),
                    eps["pre_feedforward_layernorm"],
                    g,
                )
            else:
                x = x + att
                hn = _rms(
                    x,
                    nw["post_attention_layernorm"].unsqueeze(1),
                    eps["post_attention_layernorm"],
                    g,
                )
            gate, up = p["gu"](hn.reshape(m, r * s, h)).chunk(2, dim=-1)
            mlp = p["down"](p["act"](gate) * up).view(m, r, s, h)
            if g:
                mlp = _rms(
                    mlp,
                    nw["post_feedforward_layernorm"].unsqueeze(1),
                    eps["post_feedforward_layernorm"],
                    g,
                )
            x = x + mlp
        return x

    def _head(self, x_last: torch.Tensor) -> torch.Tensor:
        """(M, R, h) → logits (M, R, V), Gemma's final c·tanh(ℓ/c)."""
        logits = self.head(_rms(x_last, self.norm, self.eps_final, self.gemma))
        if self.final_softcap is not None:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits

    def _additive(self, keep: torch.Tensor) -> torch.Tensor:
        return torch.zeros(keep.shape, dtype=self.dtype, device=keep.device).masked_fill(
            ~keep, float("-inf")
        )

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Run each distinct one of the B left-padded prompts once (:func:`unique_prompts`),
        then expand cache and logits to ``self.rows`` (row r continues prompt r mod B)."""
        keep, source = unique_prompts(input_ids, attention_mask)
        prompt = source[self.rows % input_ids.shape[0]]  # the distinct prompt of each row
        if len(keep) < input_ids.shape[0]:
            input_ids, attention_mask = input_ids[keep], attention_mask[keep]
        b, plen = input_ids.shape
        dev = input_ids.device
        m = len(self.models)
        total = plen + self.max_new_tokens
        tables = self._rope_tables(total)
        amask = attention_mask.bool()
        pos = amask.long().cumsum(-1) - 1
        pos = pos.masked_fill(~amask, 1)  # position_ids_from_mask
        slot = torch.arange(plen, device=dev)
        causal = slot[None, :] <= slot[:, None]
        # a pad query attends to itself only (its output never reaches a real token), which
        # keeps every softmax row finite
        eye = torch.eye(plen, dtype=torch.bool, device=dev)
        masks = {}
        for w in dict.fromkeys(self.windows):
            allowed = causal if w is None else causal & (slot[None, :] > slot[:, None] - w)
            masks[w] = self._additive((allowed & amask[:, None, None, :]) | eye)
        rows = len(prompt)
        # with a pool, the prompts fill rows 0..B−1 of the rows-shaped cache, which is then
        # expanded in place when those rows serve prompts 0..B−1 in order (the usual case)
        in_place = self.pool is not None and rows >= b
        in_place = in_place and torch.equal(prompt[:b], torch.arange(b, device=dev))
        if in_place:
            assert self.pool is not None
            pool, index = self.pool
            full = (m, rows, self.n_kv, total, self.head_dim)
            like = torch.empty(0, dtype=self.dtype, device=dev)
            k_rows = pool.take((index, "k"), len(self.layers), full, like)
            v_rows = pool.take((index, "v"), len(self.layers), full, like)
            self.k_cache = [k[:, :b] for k in k_rows]
            self.v_cache = [v[:, :b] for v in v_rows]
        else:
            shape = (m, b, self.n_kv, total, self.head_dim)
            self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=dev) for _ in self.layers]
            self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=dev) for _ in self.layers]
        rope = {
            k: (c[:, pos].unsqueeze(2), s_[:, pos].unsqueeze(2)) for k, (c, s_) in tables.items()
        }  # (M, B, 1, P, d)
        x = self._layers(self._embed(input_ids), rope, 0, masks)
        logits = self._head(x[:, :, -1])
        if in_place:
            for full_k, full_v in zip(k_rows, v_rows, strict=True):
                full_k[:, b:] = full_k[:, prompt[b:]]  # sources are rows < B, already final
                full_v[:, b:] = full_v[:, prompt[b:]]
            self.k_cache, self.v_cache = k_rows, v_rows
            logits = logits[:, prompt]
        elif not torch.equal(prompt, torch.arange(b, device=dev)):
            self.k_cache = [k[:, prompt] for k in self.k_cache]
            self.v_cache = [v[:, prompt] for v in self.v_cache]
            logits = logits[:, prompt]
        self.logits = logits
        # per-row state for decoding: key mask over all cache slots and rotary tables
        row_mask = amask[prompt]
        ones = torch.ones(len(prompt), self.max_new_tokens, dtype=torch.bool, device=dev)
        self.key_bias = self._additive(torch.cat([row_mask, ones], dim=1)[:, None, None, :])
        dec_pos = row_mask.long().sum(-1, keepdim=True) + torch.arange(
            self.max_new_tokens, device=dev
        )  # (R, T): position of the token fed at decode step n
        self.dec_rope = {k: (c[:, dec_pos], s_[:, dec_pos]) for k, (c, s_) in tables.items()}
        self.plen, self.capacity = plen, total
        self.cur = plen
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None

    def step(
        self, tokens: torch.Tensor, n: int, graphs: DecodeGraphs | None = None, tag: str = ""
    ) -> None:
        """Feed ``tokens`` (R,) — token n of each row (n = 0 for the first sampled token).

        ``graphs``: run :meth:`step_static` through them (captured once, then replayed,
        under the key (R, capacity, dtype, ``tag``); ``tag`` tells this group's graph from
        other groups' of the same shapes) instead of the dynamic step, which slices the
        cache at the Python position ``self.cur``. One mode for all steps of a generation."""
        if graphs is not None:
            if self.static is None:
                self._prepare_static()
            assert self.static is not None
            key = GraphKey(len(self.rows), self.capacity, self.dtype, tag)
            step_index = self.static[1]
            self.logits = graphs.run(key, self.step_static, [tokens, step_index[n : n + 1]])
            self.cur += 1
            return
        x = self._embed(tokens[:, None])  # (M, R, 1, h)
        rope = {
            k: (c[:, :, n, None, None], s_[:, :, n, None, None])
            for k, (c, s_) in self.dec_rope.items()
        }  # (M, R, 1, 1, d)
        end = self.cur + 1
        bias = self.key_bias[..., :end]
        masks = dict.fromkeys(self.windows, bias)  # windows: _layers slices the keys
        x = self._layers(x, rope, self.cur, masks)
        self.cur = end
        self.logits = self._head(x[:, :, 0])

    def _prepare_static(self) -> None:
        """State of :meth:`step_static`, made once before the first decode step: the cache
        slot numbers and the step indices (device tensors), and the decode slots zeroed.
        The static step reads every slot of the cache (masked ones get probability 0, which
        annihilates finite values only); a :class:`KVCachePool` hands a call storage that
        still holds an earlier call's values, so they are cleared first."""
        if self.cur != self.plen:
            raise RuntimeError("the static decode step must run from the first decode step on")
        dev = self.embed.device
        for cache in (*self.k_cache, *self.v_cache):
            cache[:, :, :, self.plen :].zero_()
        self.static = (
            torch.arange(self.capacity, device=dev),
            torch.arange(self.max_new_tokens, device=dev),
        )

    def step_static(self, tokens: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """The decode step of :meth:`step` with shapes independent of the step, for CUDA-graph
        capture: tokens (R,), n (1,) int64 the step index → logits (M, R, V).

        The new K/V go to cache slot p = P + n (P the padded prompt length) by
        ``index_copy_``; attention reads all C = P + T slots under the additive mask
        key_bias(j) (the row's prompt padding) + 0 where j ≤ p and, on a sliding-window
        layer of width W, j > p − W, −inf elsewhere (the slots the dynamic step slices
        to); exp(−inf) = 0, so the masked slots add exact zeros to the softmax and to the
        weighted values. cos/sin are the row's rotary tables at step n (``index_select``).
        Equal to the dynamic step up to the summation order over C slots instead of p + 1.
        Needs :meth:`_prepare_static` first (:meth:`step` does it)."""
        assert self.static is not None
        slots, _ = self.static
        x = self._embed(tokens[:, None])  # (M, R, 1, h)
        rope = {
            k: (c.index_select(2, n).unsqueeze(2), s_.index_select(2, n).unsqueeze(2))
            for k, (c, s_) in self.dec_rope.items()
        }  # (M, R, 1, 1, d)
        slot = n + self.plen
        visible = slots <= slot
        masks = {}
        for w in dict.fromkeys(self.windows):
            allowed = visible if w is None else visible & (slots > slot - w)
            masks[w] = self.key_bias.masked_fill(~allowed, float("-inf"))
        x = self._layers(x, rope, slot, masks)
        return self._head(x[:, :, 0])
