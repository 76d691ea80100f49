"""A roofline for one Nash-MD-PG step (docs/benchmarks.md, "Roofline").

A step cannot be faster than the larger of its matmul FLOPs at the machine's matmul
throughput and the bytes it must move at the machine's memory bandwidth (Williams,
Waterman & Patterson, "Roofline", CACM 2009):

    limit = max(FLOPs / peak_flops, bytes / bandwidth),   fraction = limit / measured.

Counted from the model config (a decoder: ``L`` layers, hidden ``h``, MLP width ``i``
(gated: three ``h×i`` matrices), ``n_q`` query and ``n_kv`` key/value heads of width
``d``, vocabulary ``V``) and the step's shapes (``B`` prompts of mean length ``P``, ``T``
new tokens each):

- matmul weights per layer ``W_l = h·d·(2·n_q + 2·n_kv) + 3·h·i``; the LM head ``h·V``.
- forward FLOPs of ``n`` tokens: ``2·n·L·W_l`` + attention ``4·L·n_q·d·Σ ctx`` (QKᵀ and
  AV over each token's context) + ``2·h·V`` per token whose logits are needed.
- **generation**: policy and reference both decode the 2B rows (y ~ π and y′ ~ π̃ ∝
  π^(1−β) μ^β): the mixture needs both models on y′, and the reference's logits on y are
  what the exact KL term needs, read off while decoding instead of by a second forward
  over the sequences (nlhf does this; TRL runs the reference again in its update, which
  this count does not charge for). Prefill of the prompts, then per decoded token one
  forward of the new position. Bytes: per forward pass (the prefill and each of the
  T − 1 decode positions) each model's matmul weights are read once for all its rows,
  plus the KV cache: every row reads its whole cache (2·L·n_kv·d values per cached
  position) and writes one position.
- **update**: forward + backward (2× the forward FLOPs) of the policy on the B sampled
  sequences (P + T tokens, logits on the T completion positions) and the forward of the
  reward model (same backbone, a 1-output score head on the last position) on the 2B
  sequences. Bytes: weights once per forward and twice per backward (read, and the
  gradient written), AdamW's read-param/grad/m/v and write-param/m/v (7 values per
  parameter). Activations are not counted (they can stay in cache in the ideal), so both
  limits are lower bounds.
- **step**: the sum of the two limits, a bound on the whole step that does not depend on
  which phase a method does the reference's work in.

Peak throughput and bandwidth are measured on this machine, in a child process with the
run's thread count (``python benchmarks/roofline.py --measure``): float32 ``torch.matmul``
of two 2048×2048 matrices (2·n³ FLOPs) and a STREAM-like copy (2 × bytes) and triad
``a = b + s·c`` (3 × bytes) on 256 MiB tensors, best of several repeats. On CUDA
(``--device cuda``, benchmarks/gpu.sh): 8192² matrices, float32 without TF32 and bfloat16,
1 GiB tensors, and the GPU's data-sheet dense bf16 peak (:data:`BF16_DENSE_PEAK`) against
which the update's model-FLOPs utilisation (MFU) is reported.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DecoderShape:
    """The shape numbers of a decoder-only transformer that a step's cost depends on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    params: int
    """All parameters (embeddings once when tied): what AdamW updates."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DecoderShape:
        """From a transformers ``config.json`` of a Llama/Qwen2-style decoder."""
        h = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        d = int(config.get("head_dim") or h // heads)
        kv = int(config.get("num_key_value_heads") or heads)
        i = int(config["intermediate_size"])
        L = int(config["num_hidden_layers"])
        V = int(config["vocab_size"])
        per_layer = h * d * (2 * heads + 2 * kv) + 3 * h * i + 2 * h  # + two RMSNorms
        if config.get("attention_bias") or config.get("model_type") == "qwen2":
            per_layer += d * (heads + 2 * kv)
        tied = bool(config.get("tie_word_embeddings", False))
        params = L * per_layer + h + V * h * (1 if tied else 2)
        return cls(L, h, i, heads, kv, d, V, params)

    @property
    def layer_matmul_weights(self) -> int:
        """Weights of one layer's matmuls: q, k, v, o and the gated MLP."""
        h, d = self.hidden, self.head_dim
        return h * d * (2 * self.heads + 2 * self.kv_heads) + 3 * h * self.intermediate

    @property
    def matmul_weights(self) -> int:
        """All matmul weights of a causal LM forward (layers + LM head)."""
        return self.layers * self.layer_matmul_weights + self.hidden * self.vocab

    def kv_values_per_position(self) -> int:
        """Cached values per sequence position (keys and values, every layer)."""
        return 2 * self.layers * self.kv_heads * self.head_dim


def forward_flops(
    s: DecoderShape, tokens: int, context_sum: int, logit_tokens: int, lm_head: bool = True
) -> float:
    """Matmul FLOPs of a forward over ``tokens`` positions whose attention contexts sum to
    ``context_sum``; ``logit_tokens`` of them go through the LM head (else a 1-output head)."""
    body = 2.0 * tokens * s.layers * s.layer_matmul_weights
    attn = 4.0 * s.layers * s.heads * s.head_dim * context_sum
    head = 2.0 * logit_tokens * s.hidden * (s.vocab if lm_head else 1)
    return body + attn + head


def _causal_context_sum(start: int, n: int) -> int:
    """Σ_{t=1..n} (start + t): contexts of n new positions after ``start`` cached ones."""
    return n * start + n * (n + 1) // 2


@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes of one phase of a step."""

    flops: float
    bytes: float

    def limit(self, peak_flops: float, bandwidth: float) -> float:
        """Seconds the roofline allows: max(FLOPs / peak, bytes / bandwidth)."""
        return max(self.flops / peak_flops, self.bytes / bandwidth)


def generation_cost(
    policy: DecoderShape,
    batch: int,
    prompt_len: float,
    new_tokens: int,
    dtype_bytes: int = 4,
    policy_rows: int | None = None,
    reference_rows: int | None = None,
) -> Cost:
    """Prefill + ``new_tokens`` decode positions of policy and reference (default 2B rows
    each), same shape (the reference is the frozen initial policy)."""
    p = round(prompt_len)
    rows = {
        "policy": 2 * batch if policy_rows is None else policy_rows,
        "reference": 2 * batch if reference_rows is None else reference_rows,
    }
    flops = 0.0
    nbytes = 0.0
    kv = policy.kv_values_per_position()
    for r in rows.values():
        # prefill: all prompt positions, logits of the last one
        flops += r * forward_flops(policy, p, _causal_context_sum(0, p), 1)
        nbytes += policy.matmul_weights * dtype_bytes + r * p * kv * dtype_bytes
        # decode: positions p+1 .. p+new_tokens-1 need a forward (the first token comes
        # from the prefill's logits)
        steps = new_tokens - 1
        flops += r * forward_flops(policy, steps, _causal_context_sum(p, steps), steps)
        nbytes += steps * policy.matmul_weights * dtype_bytes
        reads = sum(p + t for t in range(1, steps + 1))  # cache positions read
        nbytes += r * (reads + steps) * kv * dtype_bytes
    return Cost(flops, nbytes)


def update_cost(
    policy: DecoderShape,
    reward: DecoderShape | None,
    batch: int,
    prompt_len: float,
    new_tokens: int,
    dtype_bytes: int = 4,
) -> Cost:
    """Policy forward + backward on B sequences, reward forward on 2B sequences (skipped
    when ``reward`` is None), AdamW on the policy."""
    n = round(prompt_len) + new_tokens
    ctx = _causal_context_sum(0, n)
    fwd = batch * forward_flops(policy, n, ctx, new_tokens)
    flops = 3.0 * fwd  # policy forward + backward (2×)
    w = policy.matmul_weights * dtype_bytes
    nbytes = w * 3 + 7.0 * policy.params * dtype_bytes
    if reward is not None:
        rn = _causal_context_sum(0, n)
        flops += 2 * batch * forward_flops(reward, n, rn, 1, lm_head=False)
        nbytes += reward.layers * reward.layer_matmul_weights * dtype_bytes
    return Cost(flops, nbytes)


def step_roofline(
    policy_config: dict[str, Any],
    reward_config: dict[str, Any] | None,
    *,
    batch: int,
    prompt_len: float,
    new_tokens: int,
    peak_flops: float,
    bandwidth: float,
) -> dict[str, Any]:
    """Costs and limits of the generation and update phases of one step."""
    pol = DecoderShape.from_config(policy_config)
    rew = DecoderShape.from_config(reward_config) if reward_config else None
    gen = generation_cost(pol, batch, prompt_len, new_tokens)
    upd = update_cost(pol, rew, batch, prompt_len, new_tokens)
    out: dict[str, Any] = {
        "policy_shape": asdict(pol),
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "peak_flops": peak_flops,
        "bandwidth_bytes_per_s": bandwidth,
    }
    for name, c in (("generation", gen), ("update", upd)):
        out[name] = {
            "flops": c.flops,
            "bytes": c.bytes,
            "flop_seconds": c.flops / peak_flops,
            "byte_seconds": c.bytes / bandwidth,
            "limit_seconds": c.limit(peak_flops, bandwidth),
            "bound": "compute" if c.flops / peak_flops >= c.bytes / bandwidth else "memory",
        }
    out["step"] = {
        "flops": gen.flops + upd.flops,
        "bytes": gen.bytes + upd.bytes,
        "limit_seconds": out["generation"]["limit_seconds"] + out["update"]["limit_seconds"],
    }
    return out


def fractions(roof: dict[str, Any], generation_s: float, update_s: float) -> dict[str, float]:
    """Roofline limit over measured seconds, per phase and for the step (1.0 = at the
    roofline)."""
    return {
        "generation": roof["generation"]["limit_seconds"] / generation_s,
        "update": roof["update"]["limit_seconds"] / update_s,
        "step": roof["step"]["limit_seconds"] / (generation_s + update_s),
    }


# ------------------------------------------------------------------ measured peaks
BF16_DENSE_PEAK = {
    # dense (no sparsity) bf16 tensor-core FLOP/s from the vendors' data sheets
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
}
"""Keys are matched as substrings of ``torch.cuda.get_device_name()``, longest first."""


def bf16_peak(device_name: str) -> float | None:
    """The data-sheet dense bf16 peak of a GPU by name (None if not in the table)."""
    for key in sorted(BF16_DENSE_PEAK, key=len, reverse=True):
        if key in device_name:
            return BF16_DENSE_PEAK[key]
    return None


def _best_seconds(fn: Any, repeats: int, sync: Any) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_peaks(
    threads: int, repeats: int = 5, n: int = 2048, mib: int = 256, device: str = "cpu"
) -> dict:
    """Best-of-``repeats`` float32 matmul FLOP/s and copy / triad bytes/s on ``device``
    (CUDA: also bfloat16 matmul FLOP/s, and the data-sheet bf16 peak when known)."""
    import torch

    torch.set_num_threads(threads)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        n = max(n, 8192)
        mib = max(mib, 1024)
    extra: dict[str, Any] = {}
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    flops = 2.0 * n**3 / _best_seconds(lambda: torch.matmul(a, b), repeats, sync)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        flops = 2.0 * n**3 / _best_seconds(lambda: torch.matmul(a, b), repeats, sync)
        ah, bh = a.bfloat16(), b.bfloat16()
        name = torch.cuda.get_device_name(dev)
        extra = {
            "device_name": name,
            "bf16_matmul_flops": 2.0
            * n**3
            / _best_seconds(lambda: torch.matmul(ah, bh), repeats, sync),
            "bf16_datasheet_flops": bf16_peak(name),
        }
        del a, b, ah, bh
    m = mib * 2**20 // 4
    x, y, z = (torch.ones(m, device=dev) for _ in range(3))
    copy = _best_seconds(lambda: y.copy_(x), repeats, sync)
    triad = _best_seconds(lambda: torch.add(y, z, alpha=3.0, out=x), repeats, sync)
    nbytes = m * 4
    return {
        **extra,
        "device": device,
        "threads": threads,
        "matmul_n": n,
        "matmul_flops": flops,
        "copy_bytes_per_s": 2 * nbytes / copy,
        "triad_bytes_per_s": 3 * nbytes / triad,
        "bandwidth_bytes_per_s": max(2 * nbytes / copy, 3 * nbytes / triad),
        "stream_mib": mib,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="measure matmul FLOP/s and memory bandwidth")
    ap.add_argument("--measure", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out")
    args = ap.parse_args()
    res = measure_peaks(args.threads, args.repeats, device=args.device)
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
