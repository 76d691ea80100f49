"""Fast pair generation for Nash-MD-PG and its variants (paper §7; docs/architecture.md §5–§6).

For every prompt x we draw y ~ π_θ(·|x) and y' from an opponent, token by token:

- ``mixture`` (Nash-MD-PG): y' ~ π̃_β with log π̃(·|x,y'_<n) = log_softmax(((1−β)ℓ_π + βℓ_μ)/T);
- ``reference`` (best response): y' ~ μ (β = 1);
- ``policy`` (self-play): y' ~ π_θ (β = 0; the reference is not run);
- ``model`` (Nash-EMA-PG): y' from ``opponent_model`` (e.g. an EMA copy), mixed with μ by β
  when β > 0.

Both rows of a pair sample from log_softmax(·/T) of their logits (the same temperature
is used by the loss; docs/architecture.md §5, pitfalls).

What makes it fast compared with TRL 1.13's ``NashMDTrainer`` (which re-runs policy and
reference over the whole prefix for every mixture token, ≈ 3T+5 forward calls):

1. each model prefills every distinct (left-padded) prompt once — y and y′ of a pair, and
   prompts repeated in the batch, share it; its KV cache is then expanded to the rows it
   serves (``DynamicCache.batch_select_indices``) instead of prefilling per row;
2. KV caches of policy, reference (and opponent) are stepped in lockstep, one token per call;
3. only last-position logits are computed (``logits_to_keep=1``);
4. y rows and y' rows go through the policy in ONE batch of 2B;
5. rows stop at their EOS (the mask includes the EOS token, then pad with mask 0) and are
   dropped from every cache, and the loop ends when every row has finished;
6. optionally the reference also decodes the y rows and returns its logits, so the KL term
   needs no separate reference forward (``return_reference_logits``). Measured by
   ``benchmarks/generation_bench.py``: ~12% faster than a separate reference forward over y
   on one CPU thread, neutral (±2%) with 4 threads or on an H100. The values equal
   :func:`sequence_logits` of the reference to rounding (1e-10 in float64, tested).

7. Llama, Qwen2/3, Mistral, Gemma 2/3 and Phi-3 models (float64/32, bfloat16, float16,
   plain or LoRA) decode through :mod:`nlhf_torch.fastdecode` (a fused sampling-only
   forward on the models' own weights, static KV cache, policy and reference in one batched
   call); anything else takes the HF path above (``decode_path`` says why); ``NLHF_FAST_DECODE=0`` forces the HF path. The fast path keeps finished rows
   (feeding pads) instead of dropping them. On CUDA its decode steps after the first are
   CUDA-graph replays over the static KV cache (``decode_path`` ``"fused+cudagraph"``;
   ``NLHF_CUDA_GRAPHS=0`` or ``cuda_graphs=False`` step eagerly).

Randomness: an injectable ``torch.Generator`` (one float64 ``torch.rand(2B)`` per step), or
explicit ``uniforms[row, step]`` (rows 0..B−1 = y, B..2B−1 = y') consumed by inverse CDF
exactly like :func:`nlhf_torch.kernels.sample`. Sampling runs under ``torch.no_grad()``, not
``inference_mode`` (inference tensors cannot be saved for backward under ZeRO-3;
docs/distributed.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from nlhf.algorithms.generation import Opponent, check_generation_args

from nlhf_torch import cudagraph, fastdecode
from nlhf_torch.cudagraph import DecodeGraphs
from nlhf_torch.kernels import mixture_logprobs, sample

__all__ = [
    "PairGeneration",
    "generate_pairs",
    "position_ids_from_mask",
    "sequence_hidden",
    "sequence_logits",
]


@dataclass
class PairGeneration:
    """Sampled pairs. ``y``/``y_prime`` (B, T) int64 token ids (pad after EOS); masks (B, T)
    int64, 1 up to and including EOS. ``reference_logits`` (B, T, V): the reference's logits
    predicting each token of ``y`` (zeros after a row's EOS), when requested."""

    y: torch.Tensor
    y_mask: torch.Tensor
    y_prime: torch.Tensor
    y_prime_mask: torch.Tensor
    reference_logits: torch.Tensor | None = None
    decode_path: str = "hf"
    """``"fused"`` (:mod:`nlhf_torch.fastdecode`), ``"fused+cudagraph"`` (its decode steps
    replayed as CUDA graphs, :mod:`nlhf_torch.cudagraph`) or ``"hf: <why>"``."""
    stats: dict[str, int] = field(default_factory=dict)
    """``steps``, ``forward_calls``, ``fast_decode`` (0/1), and of the decode graphs
    ``graph_captures``, ``graph_replays`` and ``graph_warmup_steps`` (eager steps before a
    capture; all 0 without graphs)."""


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Left-padding-aware positions: cumsum(mask) − 1 on real tokens, 1 on pads (as HF's
    ``generate`` does; pad positions are masked out of attention anyway)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill_(attention_mask == 0, 1)


def sequence_logits(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
) -> torch.Tensor:
    """Logits (B, T, V) predicting each completion token, from ONE forward pass over
    prompt + completion (left-padded prompts; position ids from the attention mask; with
    gradient when grad is enabled). Only the last T + 1 positions go through the LM head."""
    ids = torch.cat([prompt_ids, completion_ids.to(prompt_ids.dtype)], dim=1)
    mask = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], dim=1)
    t = completion_ids.shape[1]
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        use_cache=False,
        logits_to_keep=t + 1,
    )
    return out.logits[:, :-1]


def sequence_hidden(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
) -> torch.Tensor:
    """The LM head's inputs of :func:`sequence_logits`: final hidden states (B, T, H) (after
    the last norm) predicting each completion token, from one forward of the model's
    decoder (``get_decoder()``, peft adapters included), for
    :func:`nlhf_torch.kernels.chunked_token_logprobs`."""
    ids = torch.cat([prompt_ids, completion_ids.to(prompt_ids.dtype)], dim=1)
    mask = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], dim=1)
    t = completion_ids.shape[1]
    out = model.get_decoder()(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        use_cache=False,
    )
    return out.last_hidden_state[:, -t - 1 : -1]


class _Stream:
    """One model decoding a subset ``rows`` of the 2B combined rows with its own KV cache."""

    def __init__(self, model: Any, rows: torch.Tensor) -> None:
        self.model = model
        self.rows = rows
        self.cache: Any = None
        self.logits: torch.Tensor | None = None

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
        """Prefill each distinct prompt once (:func:`nlhf_torch.fastdecode.unique_prompts`),
        then expand the cache to ``rows`` (row r ↦ prompt r mod B)."""
        from transformers import DynamicCache

        keep, source = fastdecode.unique_prompts(input_ids, attention_mask)
        prompt_of_row = source[self.rows % input_ids.shape[0]]
        if len(keep) < input_ids.shape[0]:
            input_ids, attention_mask = input_ids[keep], attention_mask[keep]

        try:
            cache = DynamicCache(config=self.model.config)
        except Exception:  # configs without layer-type information
            cache = DynamicCache()
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = out.cache
        logits = out.logits[:, -1]
        b = input_ids.shape[0]
        if not torch.equal(prompt_of_row, torch.arange(b, device=prompt_of_row.device)):
            self.cache.batch_select_indices(prompt_of_row)
            logits = logits[prompt_of_row]
        self.logits = logits
        return 1

    def drop_finished(self, finished: torch.Tensor) -> None:
        keep = ~finished[self.rows]
        if bool(keep.all()):
            return
        idx = keep.nonzero().squeeze(-1)
        self.rows = self.rows[idx]
        self.cache.batch_select_indices(idx)

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> int:
        """Feed each served row its last token; keep last-position logits."""
        if self.rows.numel() == 0:
            self.logits = None
            return 0
        mask = attention_mask[self.rows]
        out = self.model(
            input_ids=tokens[self.rows].unsqueeze(-1),
            attention_mask=mask,
            position_ids=mask.long().sum(-1, keepdim=True) - 1,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = out.cache
        self.logits = out.logits[:, -1]
        return 1

    def scatter(self, buffer: torch.Tensor) -> None:
        """Write this stream's logits into the rows of a (2B, V) buffer."""
        if self.logits is not None and self.rows.numel():
            buffer[self.rows] = self.logits.to(buffer.dtype)


def _gather(
    streams: Sequence[_Stream | None], n_rows: int, vocab: int, dtype: torch.dtype
) -> torch.Tensor:
    """(2B, V) logits of the given streams' rows: a stream that serves all rows in order is
    used as is, otherwise the rows are scattered into a zero buffer."""
    live = [s for s in streams if s is not None]
    if len(live) == 1 and live[0].logits is not None and live[0].rows.numel() == n_rows:
        rows = live[0].rows
        if bool((rows == torch.arange(n_rows, device=rows.device)).all()):
            return live[0].logits.to(dtype)
    out = torch.zeros(n_rows, vocab, dtype=dtype, device=live[0].rows.device)
    for s in live:
        s.scatter(out)
    return out


def _fast_groups(
    streams: list[_Stream],
    max_new_tokens: int,
    prompt_len: int,
    gather: ExitStack,
    cache_pool: fastdecode.KVCachePool | None = None,
) -> tuple[list[tuple[fastdecode.FastGroup, list[_Stream]]] | None, str]:
    """Streams grouped for the fused decoder (same rows, same architecture → one stacked
    group) and ``"fused"``, or None and ``"hf: <why>"`` when any model needs the HF path
    or the fused path's static KV cache and weight copies exceed the free memory. ZeRO-3
    partitioned parameters are gathered once into ``gather`` (released when it closes)."""
    models = {id(s.model): s.model for s in streams}
    for m in models.values():
        reason = fastdecode.unsupported_reason(m)
        if reason is not None:
            return None, f"hf: {reason}"
    buckets: list[list[_Stream]] = []
    for s in streams:
        for bucket in buckets:
            first = bucket[0]
            if torch.equal(first.rows, s.rows) and fastdecode.signature(
                first.model
            ) == fastdecode.signature(s.model):
                bucket.append(s)
                break
        else:
            buckets.append([s])
    need = fastdecode.memory_needed(
        [[s.model for s in bucket] for bucket in buckets],
        [len(bucket[0].rows) for bucket in buckets],
        prompt_len,
        max_new_tokens,
    )
    device = streams[0].rows.device
    free = fastdecode.free_memory(device)
    too_big = free is not None and need > free
    zero3 = any(fastdecode.partitioned(m) for m in models.values())
    if zero3 and torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = torch.tensor([int(too_big)], device=device)  # every rank gathers, or none
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        too_big = bool(flag.item())
    if too_big:
        gib = 2**30
        where = (
            f"{free / gib:.2f} GiB are free"
            if free is not None and need > free
            else ("another rank lacks that much free memory")
        )
        return None, (
            f"hf: the fused decode needs {need / gib:.2f} GiB (static KV cache, logits, weight "
            f"copies) but {where}"
        )
    gather.enter_context(fastdecode.gathered(list(models.values())))
    memo: dict[tuple[int, ...], Any] = {}
    groups = [
        (
            fastdecode.FastGroup(
                [s.model for s in bucket],
                bucket[0].rows,
                max_new_tokens,
                memo,
                pool=None if cache_pool is None else (cache_pool, index),
            ),
            bucket,
        )
        for index, bucket in enumerate(buckets)
    ]
    return groups, "fused"


def _decode_graphs(
    cuda_graphs: bool | DecodeGraphs | None, device: torch.device
) -> DecodeGraphs | None:
    """The :class:`DecodeGraphs` the fused decode steps run through, or None (eager steps):
    on a CUDA device unless ``NLHF_CUDA_GRAPHS=0`` or inside ``torch.autocast`` (whose
    cast-weight cache must not be captured, PyTorch's CUDA-graph notes) (``None``), always
    (``True``; a CUDA device is needed), never (``False``), or the given one (any device
    and capture)."""
    if isinstance(cuda_graphs, DecodeGraphs):
        return cuda_graphs
    if cuda_graphs is None:
        cuda_graphs = (
            device.type == "cuda"
            and cudagraph.enabled()
            and not torch.is_autocast_enabled(device.type)
        )
    elif cuda_graphs and device.type != "cuda":
        raise ValueError(
            f"cuda_graphs=True needs a CUDA device, but the inputs are on {device}; pass "
            "cuda_graphs=None (graphs where CUDA is) or False"
        )
    return cudagraph.cuda_decode_graphs() if cuda_graphs else None


def _graph_counts(graphs: DecodeGraphs) -> tuple[int, int, int]:
    return graphs.stats.captures, graphs.stats.replays, graphs.stats.eager_calls


def _float_dtype(model: Any) -> torch.dtype:
    dtype = next(model.parameters()).dtype
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@torch.no_grad()
def generate_pairs(
    policy: Any,
    reference: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    beta: float,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int | Sequence[int] | None,
    pad_token_id: int,
    opponent: Opponent = "mixture",
    opponent_model: Any = None,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
    return_reference_logits: bool = False,
    all_finished: Callable[[bool], bool] | None = None,
    fast_decode: bool | None = None,
    cache_pool: fastdecode.KVCachePool | None = None,
    cuda_graphs: bool | DecodeGraphs | None = None,
) -> PairGeneration:
    """Sample y ~ π_θ and y' ~ opponent for each left-padded prompt (see the module doc).

    ``uniforms``: optional (2B, ≥ max_new_tokens) values in [0, 1); ``uniforms[r, n]`` draws
    token n of row r (rows 0..B−1 = y, B..2B−1 = y') by inverse CDF. Otherwise one
    ``torch.rand(2B, dtype=float64, generator=generator)`` per step. ``return_reference_logits``
    runs the reference on the y rows too (2B rows instead of B while decoding) and returns
    its logits for y, which the exact/sampled/k3 KL term can use directly.
    Models are put in eval mode while sampling (no dropout) and restored afterwards.
    ``all_finished`` (distributed runs): maps this process's "all rows finished" to the
    verdict over every process; finished rows are then kept (decoding pads) so each process
    makes the same forward calls (ZeRO-3 gathers parameters collectively) and steps.
    ``fast_decode``: use :mod:`nlhf_torch.fastdecode` when every model supports it
    (``None``: unless ``NLHF_FAST_DECODE=0``; ``False``: always the HF path).
    ``cache_pool``: a :class:`nlhf_torch.fastdecode.KVCachePool` that keeps the fused
    decode's KV cache between calls (a training run's steps).
    ``cuda_graphs``: the fused decode's steps run as CUDA graphs over its static KV cache
    (:meth:`nlhf_torch.fastdecode.FastGroup.step_static`; ``decode_path``
    ``"fused+cudagraph"``): the first decode step eagerly (warm-up), then one capture per
    group, replayed for every later step. ``None``: on CUDA devices unless
    ``NLHF_CUDA_GRAPHS=0``; ``False``: eager steps (CPU always, by default); a
    :class:`nlhf_torch.cudagraph.DecodeGraphs`: through that one (tests inject a capture
    that runs on CPU). The graphs live for one call and are cleared when it ends: they read
    the addresses of the group's stacked norms and LoRA factors and, for models of at most
    :data:`nlhf_torch.fastdecode.FUSE_MAX_PARAMS` parameters, its stacked/fused weight
    copies — all rebuilt per call from the current weights — and of the KV cache, which
    ``cache_pool`` may reallocate for the next call; so no graph can serve another call.
    The one capture per group and call costs about one more step, repaid by the T − 2
    replays.
    """
    check_generation_args(
        opponent=opponent, beta=beta, temperature=temperature, max_new_tokens=max_new_tokens,
        opponent_model=opponent_model, ids_shape=tuple(input_ids.shape),
        mask_shape=tuple(attention_mask.shape),
    )  # fmt: skip
    if fast_decode is None:
        fast_decode = fastdecode.enabled()
    b = input_ids.shape[0]
    n_rows = 2 * b
    device = input_ids.device
    graphs = _decode_graphs(cuda_graphs, device)
    if uniforms is not None:
        uniforms = torch.as_tensor(uniforms, device=device)
        if uniforms.ndim != 2 or uniforms.shape[0] != n_rows or uniforms.shape[1] < max_new_tokens:
            raise ValueError(
                f"uniforms must have shape (2B={n_rows}, >= {max_new_tokens}); "
                f"got {tuple(uniforms.shape)}"
            )
    if eos_token_id is None:
        eos_list: list[int] = []
    elif isinstance(eos_token_id, int):
        eos_list = [eos_token_id]
    else:
        eos_list = [int(e) for e in eos_token_id]
    eos_ids = torch.tensor(eos_list, dtype=torch.long, device=device)

    # effective mixture weight of y' rows and the model whose logits they mix with μ
    mix_beta = {"mixture": float(beta), "model": float(beta), "reference": 1.0, "policy": 0.0}[
        opponent
    ]
    base_prime = opponent_model if opponent == "model" else policy
    y_rows = torch.arange(b, device=device)
    yp_rows = torch.arange(b, n_rows, device=device)

    streams: list[_Stream] = []
    policy_rows = [y_rows]
    if base_prime is policy and mix_beta < 1.0:
        policy_rows.append(yp_rows)
    base = _Stream(policy, torch.cat(policy_rows))
    streams.append(base)
    base_prime_stream = None
    if base_prime is not policy and mix_beta < 1.0:
        base_prime_stream = _Stream(base_prime, yp_rows.clone())
        streams.append(base_prime_stream)
    ref_rows = []
    if return_reference_logits:
        ref_rows.append(y_rows)
    if mix_beta > 0.0:
        ref_rows.append(yp_rows)
    ref_stream = _Stream(reference, torch.cat(ref_rows)) if ref_rows else None
    if ref_stream is not None:
        streams.append(ref_stream)

    was_training = [(s.model, s.model.training) for s in streams]
    for s in streams:
        s.model.eval()
    gather = ExitStack()
    try:
        groups, decode_path = (
            _fast_groups(streams, max_new_tokens, input_ids.shape[1], gather, cache_pool)
            if fast_decode
            else (None, "hf: NLHF_FAST_DECODE=0 or fast_decode=False")
        )
        graph_counts = (0, 0, 0)
        if groups is None:
            graphs = None  # the HF path steps eagerly
        elif graphs is not None:
            decode_path = "fused+cudagraph"
            graph_counts = _graph_counts(graphs)
        if groups is not None:
            forward_calls = 0
            for g, members in groups:
                g.prefill(input_ids, attention_mask)
                for j, s in enumerate(members):
                    s.logits = g.logits[j]
                forward_calls += len(members)
        else:
            forward_calls = sum(s.prefill(input_ids, attention_mask) for s in streams)
        vocab = base.logits.shape[-1]
        for s in streams:
            if s.logits.shape[-1] != vocab:
                raise ValueError(
                    f"vocabulary mismatch: policy has {vocab} logits, another model "
                    f"{s.logits.shape[-1]}"
                )
        dtype = _float_dtype(policy)
        full_mask = attention_mask.repeat(2, 1)
        finished = torch.zeros(n_rows, dtype=torch.bool, device=device)
        tokens: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        ref_y_logits: list[torch.Tensor] = []
        ones = torch.ones(n_rows, 1, dtype=full_mask.dtype, device=device)
        for step in range(max_new_tokens):
            base_logits = _gather([base, base_prime_stream], n_rows, vocab, dtype)
            ref_logits = None
            if ref_stream is not None:
                ref_logits = _gather([ref_stream], n_rows, vocab, dtype)
                if return_reference_logits:
                    ref_y = ref_logits[:b].clone()
                    if groups is not None:  # zeros after EOS, as when the HF path drops rows
                        ref_y.masked_fill_(finished[:b, None], 0.0)
                    ref_y_logits.append(ref_y)
            logp = torch.empty_like(base_logits)
            logp[:b] = torch.log_softmax(base_logits[:b] / temperature, dim=-1)
            logp[b:] = mixture_logprobs(
                base_logits[b:],
                ref_logits[b:] if ref_logits is not None else base_logits[b:],
                mix_beta,
                temperature,
            )
            if uniforms is not None:
                u = uniforms[:, step]
            else:
                u = torch.rand(
                    n_rows,
                    dtype=torch.float64,
                    generator=generator,
                    device=generator.device if generator is not None else device,
                ).to(device)
            tok = sample(logp, u)
            alive = ~finished
            tok = torch.where(alive, tok, torch.full_like(tok, pad_token_id))
            tokens.append(tok)
            masks.append(alive.long())
            finished = finished | (alive & torch.isin(tok, eos_ids))
            done = bool(finished.all())
            if all_finished is not None:
                done = all_finished(done)
            if done or step == max_new_tokens - 1:
                break
            if groups is not None:  # static caches: finished rows keep decoding pads
                for index, (g, members) in enumerate(groups):
                    if graphs is None:
                        g.step(tok[g.rows], step)
                    else:
                        g.step(tok[g.rows], step, graphs, tag=f"group {index}")
                    for j, s in enumerate(members):
                        s.logits = g.logits[j]
                    forward_calls += len(members)
                continue
            full_mask = torch.cat([full_mask, ones], dim=1)
            for s in streams:
                if all_finished is None:
                    s.drop_finished(finished)
                forward_calls += s.step(tok, full_mask)
        if graphs is not None:  # this call's captures, replays and warm-up steps
            graph_counts = tuple(
                now - was for now, was in zip(_graph_counts(graphs), graph_counts, strict=True)
            )
    finally:
        if graphs is not None:  # they read this call's weight copies and cache
            graphs.clear()
        gather.close()  # ZeRO-3: partition the gathered parameters again
        for model, mode in was_training:
            model.train(mode)

    toks = torch.stack(tokens, dim=1)
    msk = torch.stack(masks, dim=1)
    ref_y = None
    if return_reference_logits:
        ref_y = torch.stack(ref_y_logits, dim=1)
    return PairGeneration(
        y=toks[:b],
        y_mask=msk[:b],
        y_prime=toks[b:],
        y_prime_mask=msk[b:],
        reference_logits=ref_y,
        decode_path=decode_path,
        stats={
            "steps": toks.shape[1],
            "forward_calls": forward_calls,
            "fast_decode": int(groups is not None),
            "graph_captures": graph_counts[0],
            "graph_replays": graph_counts[1],
            "graph_warmup_steps": graph_counts[2],
        },
    )
