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

The ``real`` workload (:data:`REAL`) instead uses a real model directory as policy and
reference (SmolLM2-135M-Instruct, built on first use by ``nlhf.packaged``), a
Bradley–Terry reward on the same backbone (``LlamaForSequenceClassification`` loaded from
it, so its 1-label score head is randomly initialised under the seed: fine for timing,
meaningless as a judge) and hh-rlhf prompts rendered with the model's chat template and
cut to ``max_prompt_tokens`` tokens. Its smoke variant (:data:`REAL_SMOKE`) builds a tiny
random Llama of the same shape family (tied embeddings, grouped-query attention,
head_dim 64) on the local 1024-token tokenizer.

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
    arch: str = "qwen2"
    """Architecture of the random models built when ``model`` is empty."""
    model: str = ""
    """A real causal-LM directory (relative to the repository root) used as policy and
    reference, and as the reward backbone; empty: random models from the fields above."""
    prompt_source: str = "synthetic"
    """``synthetic`` pseudo-word prompts, or ``hh_rlhf`` prompts from :data:`HH_RLHF`."""
    max_prompt_tokens: int = 0
    """hh-rlhf prompts are cut from the left to this many tokens (0: uncut)."""
    tie_embeddings: bool = False
    device: str = "cpu"
    """``cpu`` or ``cuda`` (benchmarks/gpu.sh): where every method runs."""
    precision: str = "pure"
    """nlhf's ``training.precision`` (``bf16-mixed`` on CUDA); TRL's ``bf16`` follows its
    variant."""
    tokenizer_model: str = ""
    """A real model directory whose tokenizer the random models use (their vocabulary stays
    ``vocab_size``), e.g. a random Qwen2-0.5B shape on SmolLM2's tokenizer."""

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
        extra = (self.arch, self.model, self.prompt_source, self.max_prompt_tokens)
        if extra != ("qwen2", "", "synthetic", 0) or self.tie_embeddings:
            fields = (*fields, *extra, self.tie_embeddings)
        if self.tokenizer_model:
            fields = (*fields, self.tokenizer_model)
        return hashlib.sha1(repr(fields).encode()).hexdigest()[:10]


TINY = Workload()
LARGE = Workload(
    name="large", layers=8, hidden=512, intermediate=2048, heads=8, kv_heads=2, max_new_tokens=128
)
SMOKE_STEPS = 2
REAL = Workload(
    name="real",
    model="runs/models/smollm2-135m-instruct",
    arch="llama",
    prompt_source="hh_rlhf",
    max_prompt_tokens=128,
    max_new_tokens=64,
    batch_size=8,
    steps=3,
    warmup=1,
)
"""SmolLM2-135M-Instruct, batch 8, 64 new tokens, hh-rlhf prompts ≤ 128 tokens."""
REAL_SMOKE = Workload(
    name="real-smoke",
    arch="llama",
    layers=2,
    hidden=192,
    intermediate=512,
    heads=3,
    kv_heads=1,
    reward_layers=2,
    reward_hidden=192,
    tie_embeddings=True,
    prompt_source="hh_rlhf",
    max_prompt_tokens=128,
    num_prompts=8,
    max_new_tokens=4,
    batch_size=2,
    steps=1,
    warmup=0,
)
"""The runner check of :data:`REAL`: a tiny SmolLM2-shaped random Llama, 1 step."""
QWEN2_05B = Workload(
    name="qwen2-0.5b",
    arch="qwen2",
    tokenizer_model="runs/models/smollm2-135m-instruct",
    vocab_size=151936,
    layers=24,
    hidden=896,
    intermediate=4864,
    heads=14,
    kv_heads=2,
    reward_layers=24,
    reward_hidden=896,
    tie_embeddings=True,
    prompt_source="hh_rlhf",
    max_prompt_tokens=128,
    max_new_tokens=64,
    batch_size=8,
    steps=3,
    warmup=1,
)
"""A random model of Qwen2-0.5B's shape (494M parameters, tied embeddings) on SmolLM2's
tokenizer, with a reward model of the same shape (benchmarks/gpu.sh)."""
HH_RLHF = Path(__file__).resolve().parents[1] / "tests" / "data" / "hh-rlhf-harmless-200.jsonl.gz"


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


def hh_rlhf_prompts(w: Workload, tokenizer: Any, chat_template: bool) -> list[str]:
    """The first ``w.num_prompts`` distinct hh-rlhf prompts of :data:`HH_RLHF`, each cut from
    the left to ``w.max_prompt_tokens`` tokens (after the chat template when asked: the
    dialogue is templated and its user/assistant turns are dropped from the front, then the
    remaining first turn is cut, so the rendered prompt always ends with the generation
    prompt)."""
    import gzip

    from nlhf.data.prompts import hh_rlhf_prompt
    from nlhf.data.tokenizer import dialogue_messages

    out: list[str] = []
    limit = w.max_prompt_tokens or 10**9
    with gzip.open(HH_RLHF, "rt") as f:
        for line in f:
            row = json.loads(line)
            text = hh_rlhf_prompt(row["chosen"], row["rejected"])
            if chat_template:
                msgs = dialogue_messages(text)

                def render(m: list[dict[str, str]]) -> str:
                    return tokenizer.apply_chat_template(
                        m, tokenize=False, add_generation_prompt=True
                    )

                while len(msgs) > 1 and len(tokenizer(render(msgs)).input_ids) > limit:
                    msgs = msgs[1:]  # the oldest turn first
                while len(tokenizer(render(msgs)).input_ids) > limit:
                    ids = tokenizer(msgs[0]["content"]).input_ids
                    cut = max(1, len(ids) - max(8, len(ids) // 8))
                    msgs = [{**msgs[0], "content": tokenizer.decode(ids[-cut:])}, *msgs[1:]]
                text = render(msgs)
            else:
                ids = tokenizer(text).input_ids
                if len(ids) > limit:
                    text = tokenizer.decode(ids[-limit:])
            if text not in out:
                out.append(text)
            if len(out) == w.num_prompts:
                break
    return out


def _build_real(w: Workload, base: Path, assets: Assets) -> None:
    """The reward model of a real-model workload (same backbone, seeded random score head)
    and its prompts; ``policy`` is a link to the real model itself (built if packaged)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(w.model)
    _ensure_model(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    base.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(w.seed + 1)
    reward = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=1, dtype=torch.float32
    )
    reward.config.pad_token_id = tok.pad_token_id
    reward.save_pretrained(assets.reward)
    tok.save_pretrained(assets.reward)
    prompts = hh_rlhf_prompts(w, tok, chat_template=tok.chat_template is not None)
    with assets.prompts.open("w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p}) + "\n")


def _repo_path(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(__file__).resolve().parents[1] / p


def _ensure_model(model_dir: Path) -> None:
    """Build a packaged model directory (``nlhf.packaged``) if it is not there yet."""
    if (model_dir / "config.json").exists():
        return
    from nlhf.packaged import build_packaged_model, packaged_model

    packaged = packaged_model(str(model_dir))
    if packaged is None:
        raise FileNotFoundError(f"{model_dir}: no config.json and not a packaged model")
    build_packaged_model(packaged, model_dir)


def _build_random_on_tokenizer(w: Workload, base: Path, assets: Assets) -> None:
    """Random policy and reward of ``w``'s shape on a real model's tokenizer."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    tok_dir = _repo_path(w.tokenizer_model)
    _ensure_model(tok_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    base.mkdir(parents=True, exist_ok=True)
    for out, cls, seed, layers, hidden in (
        (assets.policy, AutoModelForCausalLM, w.seed, w.layers, w.hidden),
        (
            assets.reward,
            AutoModelForSequenceClassification,
            w.seed + 1,
            w.reward_layers,
            w.reward_hidden,
        ),
    ):
        config = AutoConfig.for_model(
            w.arch,
            vocab_size=w.vocab_size,
            hidden_size=hidden,
            intermediate_size=w.intermediate * hidden // w.hidden,
            num_hidden_layers=layers,
            num_attention_heads=w.heads,
            num_key_value_heads=w.kv_heads,
            tie_word_embeddings=w.tie_embeddings,
            max_position_embeddings=4096,
            num_labels=1,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        torch.manual_seed(seed)
        cls.from_config(config).save_pretrained(out)
        tok.save_pretrained(out)
    prompts = hh_rlhf_prompts(w, tok, chat_template=tok.chat_template is not None)
    with assets.prompts.open("w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p}) + "\n")


def build_assets(w: Workload, root: str | Path) -> Assets:
    """Write tokenizer, policy, reward model and prompts under ``root`` (cached: a second
    call with the same workload reuses them)."""
    root = Path(root)
    if w.tokenizer_model:
        base = root / f"{w.name}-{w.model_key()}"
        assets = Assets(
            base, base / "policy", base / "policy", base / "reward", base / "prompts.jsonl"
        )
        if not (base / "DONE").exists():
            _build_random_on_tokenizer(w, base, assets)
            (base / "DONE").write_text(w.to_json())
        return assets
    if w.model:
        base = root / f"{w.name}-{w.model_key()}"
        model_dir = _repo_path(w.model)
        w = w.replace(model=str(model_dir))
        assets = Assets(base, model_dir, base / "policy", base / "reward", base / "prompts.jsonl")
        if not (base / "DONE").exists():
            _build_real(w, base, assets)
            if not assets.policy.exists():
                assets.policy.symlink_to(model_dir, target_is_directory=True)
            (base / "DONE").write_text(w.to_json())
        return assets
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
    if w.tie_embeddings:
        common["tie_word_embeddings"] = True
    build_tiny_model(
        assets.policy,
        w.arch,
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
        w.arch,
        tokenizer_dir=tok_dir,
        seed=w.seed + 1,
        head="sequence_classification",
        hidden_size=w.reward_hidden,
        layers=w.reward_layers,
        heads=w.heads if w.tie_embeddings else 4,
        kv_heads=w.kv_heads if w.tie_embeddings else 2,
        intermediate_size=4 * w.reward_hidden,
        **common,
    )
    if w.prompt_source == "hh_rlhf":
        prompts = hh_rlhf_prompts(w, tok, chat_template=False)
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
    progress: Path | None = None,
) -> dict[str, Any]:
    """Run ``w.steps`` optimiser steps of an nlhf trainer (``trainer.step(n)`` returns the
    step's metrics record) and return the benchmark result both nlhf benches write:
    wall ``step_seconds`` from the records, CPU seconds per step, setup time and peak RSS.
    With ``progress``, the result so far is also written there after every step (so a run
    stopped by the runner's timeout still reports its finished steps)."""
    setup_seconds = time.perf_counter() - t_start
    rss_setup = peak_rss_mb()
    records: list[dict[str, Any]] = []
    cpu: list[float] = []

    def result() -> dict[str, Any]:
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
            "decode_path": records[-1].get("decode_path") if records else None,
            "setup_seconds": setup_seconds,
            "peak_rss_mb_after_setup": rss_setup,
            "peak_rss_mb_self": peak_rss_mb(),
            "settings": {"kl_estimator": "exact", "dtype": "float32", "eos": None},
            "versions": versions,
            "pid": os.getpid(),
        }

    for n in range(1, w.steps + 1):
        c0 = time.process_time()
        records.append(trainer.step(n))
        cpu.append(time.process_time() - c0)
        if progress is not None:
            progress.write_text(json.dumps({**result(), "partial": n < w.steps}))
    return result()
