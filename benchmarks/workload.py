"""The fixed benchmark workload (docs/benchmarks.md), shared by every benchmark child process.

``Workload`` is plain data (JSON round-trip) so that the nlhf children and the TRL child
(which runs in its own virtual environment and cannot import nlhf) read the same numbers.
:func:`build_assets` writes the models, tokenizer and prompts once, with seeded weights:

- a byte-level BPE tokenizer with exactly 1024 tokens, trained locally on a synthetic
  corpus of pseudo-words (nothing is downloaded);
- the policy: a random Qwen2 causal LM (default 2 layers, hidden 128; ``large``: 8 layers,
  hidden 512), loaded twice — trained copy and frozen reference μ;
- the reward model: a random 2-layer, hidden-128 Qwen2 sequence-classification model
  (1 label) giving P(y≻y'|x) = σ(r(x,y) − r(x,y')) to both nlhf and TRL;
- 64 synthetic prompts ("Human: … Assistant:", 12–20 tokens) in ``prompts.jsonl``.

Only :func:`build_assets` imports nlhf (lazily); the rest is standard library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Workload:
    """Every number of one benchmark workload."""

    name: str = "tiny"
    vocab_size: int = 1024
    layers: int = 2
    hidden: int = 128
    intermediate: int = 512
    heads: int = 4
    kv_heads: int = 2
    reward_layers: int = 2
    reward_hidden: int = 128
    num_prompts: int = 64
    batch_size: int = 8
    max_new_tokens: int = 32
    """Exactly this many tokens per completion (EOS disabled on both sides)."""
    beta: float = 0.5
    """Mixture weight β of π̃ ∝ π^(1−β) μ^β (TRL: ``mixture_coef``)."""
    tau: float = 0.1
    """KL weight τ (TRL: ``beta``)."""
    temperature: float = 0.9
    steps: int = 24
    warmup: int = 4
    """Steps excluded from the statistics (first calls, allocator and JIT warm-up)."""
    lr: float = 1e-5
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Workload:
        return cls(**json.loads(text))

    def replace(self, **changes: Any) -> Workload:
        return dataclasses.replace(self, **changes)

    def model_key(self) -> str:
        """A short hash of the fields that determine the saved assets."""
        fields = (
            self.vocab_size,
            self.layers,
            self.hidden,
            self.intermediate,
            self.heads,
            self.kv_heads,
            self.reward_layers,
            self.reward_hidden,
            self.num_prompts,
            self.seed,
        )
        return hashlib.sha1(repr(fields).encode()).hexdigest()[:10]


TINY = Workload()
LARGE = Workload(
    name="large", layers=8, hidden=512, intermediate=2048, heads=8, kv_heads=2, max_new_tokens=128
)
SMOKE_STEPS = 2


@dataclass(frozen=True)
class Assets:
    """Paths of a built workload."""

    root: Path
    tokenizer: Path
    policy: Path
    reward: Path
    prompts: Path


_SYLLABLES = [
    c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou", "an", "er")
]
_TEMPLATES = [
    "Human: How do I {a} the {b}? Assistant:",
    "Human: Why is {a} {b}? Assistant:",
    "Human: A poem about {a}. Assistant:",
    "Human: {a} or {b}, for {c}? Assistant:",
    "Human: Explain {a} {b} {c}. Assistant:",
    "Human: Summarise {a} of {b}. Assistant:",
]


def _words(rng: random.Random, n: int) -> list[str]:
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))))
    return sorted(out)


def corpus_and_prompts(w: Workload) -> tuple[list[str], list[str]]:
    """A synthetic training corpus for the tokenizer and ``w.num_prompts`` prompts."""
    rng = random.Random(w.seed)
    words = _words(rng, 800)
    corpus = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) for _ in range(3000)]
    prompts = []
    for i in range(w.num_prompts):
        fill = {k: rng.choice(words) for k in "abcd"}
        prompts.append(_TEMPLATES[i % len(_TEMPLATES)].format(**fill))
    return corpus + prompts, prompts


def build_assets(w: Workload, root: str | Path) -> Assets:
    """Write tokenizer, policy, reward model and prompts under ``root`` (cached: a second
    call with the same workload reuses them)."""
    root = Path(root)
    tok_dir = root / f"tokenizer-v{w.vocab_size}-s{w.seed}"
    base = root / f"{w.name}-{w.model_key()}"
    assets = Assets(base, tok_dir, base / "policy", base / "reward", base / "prompts.jsonl")
    done = base / "DONE"
    if done.exists():
        return assets
    from nlhf_torch.tiny import build_tiny_model, build_tokenizer
    from transformers import AutoTokenizer

    corpus, prompts = corpus_and_prompts(w)
    if not (tok_dir / "tokenizer.json").exists():
        build_tokenizer(tok_dir, corpus, vocab_size=w.vocab_size)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    if len(tok) != w.vocab_size:
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, expected {w.vocab_size}")
    base.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = dict(max_position_embeddings=512)
    build_tiny_model(
        assets.policy,
        "qwen2",
        tokenizer_dir=tok_dir,
        seed=w.seed,
        hidden_size=w.hidden,
        layers=w.layers,
        heads=w.heads,
        kv_heads=w.kv_heads,
        intermediate_size=w.intermediate,
        **common,
    )
    build_tiny_model(
        assets.reward,
        "qwen2",
        tokenizer_dir=tok_dir,
        seed=w.seed + 1,
        head="sequence_classification",
        hidden_size=w.reward_hidden,
        layers=w.reward_layers,
        heads=4,
        kv_heads=2,
        intermediate_size=4 * w.reward_hidden,
        **common,
    )
    with assets.prompts.open("w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p}) + "\n")
    done.write_text(w.to_json())
    return assets


def load_prompts(path: str | Path) -> list[str]:
    """The prompts of a ``prompts.jsonl`` written by :func:`build_assets`."""
    return [json.loads(line)["prompt"] for line in Path(path).read_text().splitlines() if line]


def assets_at(w: Workload, root: str | Path) -> Assets:
    """The paths :func:`build_assets` uses for ``w`` (without building anything)."""
    root = Path(root)
    base = root / f"{w.name}-{w.model_key()}"
    tok_dir = root / f"tokenizer-v{w.vocab_size}-s{w.seed}"
    return Assets(base, tok_dir, base / "policy", base / "reward", base / "prompts.jsonl")


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_trainer_steps(
    trainer: Any,
    w: Workload,
    *,
    method: str,
    backend: str,
    threads: int,
    t_start: float,
    versions: dict[str, str],
) -> dict[str, Any]:
    """Run ``w.steps`` optimiser steps of an nlhf trainer (``trainer.step(n)`` returns the
    step's metrics record) and return the benchmark result both nlhf benches write:
    wall ``step_seconds`` from the records, CPU seconds per step, setup time and peak RSS."""
    setup_seconds = time.perf_counter() - t_start
    rss_setup = peak_rss_mb()
    records, cpu = [], []
    for n in range(1, w.steps + 1):
        c0 = time.process_time()
        records.append(trainer.step(n))
        cpu.append(time.process_time() - c0)
    return {
        "method": method,
        "backend": backend,
        "workload": json.loads(w.to_json()),
        "threads": threads,
        "step_seconds": [r["step_seconds"] for r in records],
        "step_cpu_seconds": cpu,
        "generation_seconds": [r["generation_seconds"] for r in records],
        "generated_tokens": [r["generated_tokens"] for r in records],
        "loss": [r["loss"] for r in records],
        "setup_seconds": setup_seconds,
        "peak_rss_mb_after_setup": rss_setup,
        "peak_rss_mb_self": peak_rss_mb(),
        "settings": {"kl_estimator": "exact", "dtype": "float32", "eos": None},
        "versions": versions,
        "pid": os.getpid(),
    }
