"""Pair-generation throughput: nlhf's cached engine vs TRL-style uncached sampling
(docs/architecture.md §6).

Setup (defaults): a tiny random Qwen2 policy and reference (2 layers, hidden 128, vocab
1024), batch 8 left-padded prompts of 12–24 tokens, 32 new tokens, β = 0.5, no EOS (every
method generates exactly 32 tokens per row). Methods:

- ``nlhf``: :func:`nlhf_torch.generation.generate_pairs` (prefill once, lockstep KV caches,
  logits_to_keep=1, y and y' in one 2B batch through the policy).
- ``nlhf+ref``: the same, also decoding the y rows through the reference and returning its
  logits for the KL term; compared with ``nlhf`` + one separate reference forward over y
  (``nlhf, then ref fwd``).
- ``trl``: TRL 1.13 NashMDTrainer style: y from ``policy.generate`` (cached), y' from a
  mixture loop that re-runs policy and reference over the whole prefix for every token.
- ``naive``: both loops uncached (the full prefix through every model at every token).

Prints the median seconds over ``--repeats`` interleaved runs and the speed-up ratios.
Run: ``.venv/bin/python benchmarks/generation_bench.py [--threads 1] [--device cpu]``.

``--weights DIR`` instead times the fused decode's two weight layouts on a real model (the
Nash-MD-PG trainer's call: policy and a separately loaded frozen reference from ``DIR``,
reference logits along y, ``--batch`` hh-rlhf prompts of exactly ``--prompt-len`` tokens,
EOS off): ``copies`` stacks each weight of policy and reference into one (2, in, out)
tensor for ``bmm`` (a copy of both models, what models of at most
``fastdecode.FUSE_MAX_PARAMS`` parameters get) and ``in place`` runs one matmul per model
on the parameters themselves; both must draw the same tokens from the same uniforms::

    .venv/bin/python benchmarks/generation_bench.py --weights runs/models/smollm2-135m-instruct \
        --batch 8 --prompt-len 128 --new-tokens 64 --repeats 3

Measured so (2026-12-01, one thread on a 2-core x86 VM loaded by other jobs, ``nice -n
15``; median of 3 interleaved): copies 41.6 s, in place 41.5 s (0.997×), the same tokens;
the copies' 1.3 GB buy nothing at this size (``benchmarks/memory.py``: sampling peak RSS
4492 → 3181 MiB).

Measured (2026-11, an otherwise idle 16-core x86 host with one H100; torch 2.11,
transformers 5.17; median of 7, seconds):

====================================  ======  ========  ===========  =====  =====  ========
setting                               nlhf    nlhf+ref  +ref fwd     trl    naive  vs trl
====================================  ======  ========  ===========  =====  =====  ========
default, CPU, 1 thread                0.151   0.156     0.178        0.531  0.557  3.5×
default, CPU, 4 threads               0.169   0.173     0.168        0.401  0.452  2.4×
default, H100                         0.208   0.203     0.225        0.388  0.350  1.9×
8L h512 V32000 B16 128 tok, H100      2.37    2.39      2.35         3.87   3.81   1.6×
====================================  ======  ========  ===========  =====  =====  ========

On the GPU these models are launch-bound: the engine's own overhead is negligible (its
time equals that of the bare cached forward calls), so the gain is the ratio of forward
calls (2 per token instead of TRL's 3, each on the last position only). Decoding the y
rows through the reference (``nlhf+ref``) instead of a separate reference forward over y
afterwards saves ~12% on one CPU thread and is neutral elsewhere.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from nlhf_torch.generation import generate_pairs, sequence_logits
from transformers import AutoModelForCausalLM, Qwen2Config


def build(seed: int, vocab: int, hidden: int, layers: int, device: str):
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
    )
    return AutoModelForCausalLM.from_config(cfg).to(device).eval()


def _last(model, ids, mask):
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]


def _uncached_loop(logits_fn, ids, mask, n_new, temperature, gen):
    seq, am = ids, mask
    for _ in range(n_new):
        logp = torch.log_softmax(logits_fn(seq, am) / temperature, -1)
        tok = torch.multinomial(logp.exp(), 1, generator=gen)
        seq = torch.cat([seq, tok], 1)
        am = torch.cat([am, torch.ones_like(tok)], 1)
    return seq[:, ids.shape[1] :]


@torch.no_grad()
def naive(policy, reference, ids, mask, beta, n_new, temperature, gen):
    y = _uncached_loop(lambda s, a: _last(policy, s, a), ids, mask, n_new, temperature, gen)
    yp = _uncached_loop(
        lambda s, a: (1 - beta) * _last(policy, s, a) + beta * _last(reference, s, a),
        ids,
        mask,
        n_new,
        temperature,
        gen,
    )
    return y, yp


@torch.no_grad()
def trl_style(policy, reference, ids, mask, beta, n_new, temperature, gen):
    y = policy.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=True,
        temperature=temperature,
        max_new_tokens=n_new,
        min_new_tokens=n_new,
        top_k=0,
        top_p=1.0,
        pad_token_id=0,
    )[:, ids.shape[1] :]
    yp = _uncached_loop(
        lambda s, a: (1 - beta) * _last(policy, s, a) + beta * _last(reference, s, a),
        ids,
        mask,
        n_new,
        temperature,
        gen,
    )
    return y, yp


def median_times(
    fns: dict[str, Callable[[], object]], repeats: int, device: str
) -> dict[str, float]:
    """Median wall time of each function; the methods are interleaved round-robin so that
    load from other processes affects all of them alike."""

    def timed(fn: Callable[[], object]) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def hh_rlhf_prompts(tokenizer, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` prompts of exactly ``length`` tokens: the longest hh-rlhf dialogues of the
    test data, left-truncated (the newest turns kept)."""
    import gzip
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tests/data/hh-rlhf-harmless-200.jsonl.gz"
    with gzip.open(path, "rt") as lines:
        texts = sorted((json.loads(line)["chosen"] for line in lines), key=len, reverse=True)
    rows = [ids[-length:] for t in texts if len(ids := tokenizer(t)["input_ids"]) >= length]
    if len(rows) < batch:
        raise SystemExit(f"only {len(rows)} dialogues of {length} tokens in {path}")
    ids = torch.tensor(rows[:batch])
    return ids, torch.ones_like(ids)


def weight_layouts(args: argparse.Namespace) -> None:
    """Median generation time of the fused decode with stacked weight copies vs the
    parameters in place, same workload, interleaved (see the module doc)."""
    from nlhf_torch import fastdecode
    from transformers import AutoTokenizer

    def load():
        return AutoModelForCausalLM.from_pretrained(args.weights, dtype=torch.float32).eval()

    policy, reference = load(), load()
    ids, mask = hh_rlhf_prompts(
        AutoTokenizer.from_pretrained(args.weights), args.batch, args.prompt_len
    )
    n = args.new_tokens
    u = torch.rand(2 * args.batch, n, generator=torch.Generator().manual_seed(0)).double()
    kw = dict(beta=args.beta, max_new_tokens=n, temperature=args.temperature, uniforms=u)
    default = fastdecode.FUSE_MAX_PARAMS
    out: dict[str, object] = {}

    def run(name: str, limit: int):
        def fn():
            fastdecode.FUSE_MAX_PARAMS = limit
            try:
                out[name] = generate_pairs(
                    policy,
                    reference,
                    ids,
                    mask,
                    eos_token_id=None,
                    pad_token_id=0,
                    return_reference_logits=True,
                    **kw,
                )
            finally:
                fastdecode.FUSE_MAX_PARAMS = default

        return fn

    results = median_times(
        {"copies": run("copies", 2**62), "in place": run("in place", 0)}, args.repeats, args.device
    )
    a, b = out["copies"], out["in place"]
    same = torch.equal(a.y, b.y) and torch.equal(a.y_prime, b.y_prime)
    params = sum(p.numel() for p in policy.parameters())
    print(
        f"# {args.weights} ({params / 1e6:.1f}M parameters, float32), policy + reference, "
        f"B={args.batch}, prompts of {args.prompt_len} tokens, {n} new tokens, "
        f"threads={args.threads}, median of {args.repeats}; default FUSE_MAX_PARAMS={default}"
    )
    for name, sec in results.items():
        print(f"{name:>10}: {sec:8.3f} s   {2 * args.batch * n / sec:7.1f} generated tok/s")
    print(f"in place / copies: {results['in place'] / results['copies']:.3f}; same tokens: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="a model directory: time the fused decode's weight layouts")
    ap.add_argument("--prompt-len", type=int, default=128, help="with --weights")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-naive", action="store_true", help="skip the slowest baseline")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.weights:
        weight_layouts(args)
        return
    dev = args.device
    policy = build(0, args.vocab, args.hidden, args.layers, dev)
    reference = build(1, args.vocab, args.hidden, args.layers, dev)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(12, 25, (args.batch,), generator=g)
    width = int(lengths.max())
    ids = torch.randint(3, args.vocab, (args.batch, width), generator=g)
    mask = (torch.arange(width)[None] >= width - lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0).to(dev)
    mask = mask.to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    n, b, t = args.new_tokens, args.beta, args.temperature
    kw = dict(beta=b, max_new_tokens=n, temperature=t, eos_token_id=None, pad_token_id=0)

    def ours(ref_logits: bool = False):
        return generate_pairs(
            policy, reference, ids, mask, generator=gen, return_reference_logits=ref_logits, **kw
        )

    def ours_then_ref_forward():
        out = ours()
        with torch.no_grad():
            return sequence_logits(reference, ids, mask, out.y, out.y_mask)

    fns: dict[str, Callable[[], object]] = {
        "nlhf": ours,
        "nlhf+ref": lambda: ours(True),
        "nlhf, then ref fwd": ours_then_ref_forward,
        "trl": lambda: trl_style(policy, reference, ids, mask, b, n, t, gen),
    }
    if not args.skip_naive:
        fns["naive"] = lambda: naive(policy, reference, ids, mask, b, n, t, gen)
    results = median_times(fns, args.repeats, dev)
    print(
        f"# Qwen2 {args.layers}L h{args.hidden} V{args.vocab}, B={args.batch}, prompts 12-24, "
        f"{n} new tokens, beta={b}, device={dev}, threads={args.threads}, "
        f"median of {args.repeats}"
    )
    for name, sec in results.items():
        toks = 2 * args.batch * n / sec
        print(f"{name:>20}: {sec:8.4f} s   {toks:9.0f} generated tok/s")
    base = results["nlhf"]
    for name in ("trl", "naive"):
        if name in results:
            print(f"speed-up vs {name}: {results[name] / base:.2f}x")
    print(
        "reference logits reused while decoding vs separate forward: "
        f"{results['nlhf+ref']:.4f} s vs {results['nlhf, then ref fwd']:.4f} s"
    )


if __name__ == "__main__":
    main()
