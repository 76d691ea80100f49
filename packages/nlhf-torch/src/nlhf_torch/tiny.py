"""Tiny offline models for tests, examples and the quickstart (DESIGN §10).

A byte-level BPE tokenizer is trained locally with ``tokenizers`` and wrapped as
``PreTrainedTokenizerFast``; Llama / Qwen2 / GPT-2 causal LMs (and sequence
classification heads) are built from configs with seeded random weights and
saved with ``save_pretrained`` (safetensors). Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

Arch = Literal["llama", "qwen2", "gpt2"]

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"]

DEFAULT_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Which response is better, 1 or 2? The better response is 1.",
    "Human: How do I bake bread? Assistant: Mix flour, water, yeast and salt.",
    "Nash learning from human feedback finds the policy preferred to any other.",
    "rock paper scissors lizard spock apple banana cherry 0 1 2 3 4 5 6 7 8 9",
    "Assistant: I cannot help with that. Human: Why not? Assistant: It is unsafe.",
]


def build_tokenizer(
    out_dir: str | Path,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
) -> Any:
    """Train a byte-level BPE tokenizer on ``corpus`` and save it to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(corpus) if corpus is not None else DEFAULT_CORPUS
    tok.train_from_iterator(texts * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        unk_token="<|unk|>",
        padding_side="left",
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def tiny_config(
    arch: Arch,
    vocab_size: int,
    *,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 256,
    tie_word_embeddings: bool = False,
    pad_token_id: int = 0,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    num_labels: int | None = None,
) -> Any:
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    if num_labels is not None:
        common["num_labels"] = num_labels
    if arch == "gpt2":
        return GPT2Config(
            n_embd=hidden_size,
            n_layer=layers,
            n_head=heads,
            n_inner=intermediate_size,
            n_positions=max_position_embeddings,
            **common,
        )
    cls = LlamaConfig if arch == "llama" else Qwen2Config
    return cls(
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        **common,
    )


def build_tiny_model(
    out_dir: str | Path,
    arch: Arch = "llama",
    *,
    tokenizer_dir: str | Path | None = None,
    seed: int = 0,
    head: Literal["causal_lm", "sequence_classification"] = "causal_lm",
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
    **config_kwargs: Any,
) -> Path:
    """Save a seeded random tiny model + tokenizer to ``out_dir`` and return the path.

    ``tokenizer_dir``: reuse a saved tokenizer (else one is trained into ``out_dir``).
    ``head="sequence_classification"`` gives a 1-label reward model.
    """
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    out_dir = Path(out_dir)
    if tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        tokenizer.save_pretrained(out_dir)
    else:
        tokenizer = build_tokenizer(out_dir, corpus, vocab_size=vocab_size)
    ids = dict(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if head == "sequence_classification":
        config_kwargs.setdefault("num_labels", 1)
    config = tiny_config(arch, len(tokenizer), **ids, **config_kwargs)
    torch.manual_seed(seed)
    cls = AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification
    model = cls.from_config(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
