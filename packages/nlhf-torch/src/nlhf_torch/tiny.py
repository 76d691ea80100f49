"""Tiny offline models initialised by transformers itself (torch), for the torch tests,
the quickstart and the benchmarks.

The tokenizer and the Llama / Qwen2 ``config.json`` come from the torch-free builder
:mod:`nlhf.testing.tiny_models` (one home); what stays here is torch-specific:
:func:`build_tiny_model` draws the weights with transformers' own initialisation under
``torch.manual_seed(seed)`` (the checkpoints the torch tests and the quickstart were
calibrated on), and :func:`tiny_config` gives transformers config objects (incl. GPT-2,
which :mod:`nlhf.testing.tiny_models` does not build) for ``from_config``. A backend
without torch builds its checkpoints with :func:`nlhf.testing.tiny_models.build_tiny_model`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from nlhf.testing import tiny_models
from nlhf.testing.tiny_models import DEFAULT_CORPUS, SPECIAL_TOKENS

__all__ = ["DEFAULT_CORPUS", "SPECIAL_TOKENS", "build_tiny_model", "build_tokenizer", "tiny_config"]

Arch = Literal["llama", "qwen2", "gpt2"]


def build_tokenizer(
    out_dir: str | Path,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
) -> Any:
    """:func:`nlhf.testing.tiny_models.build_tokenizer`, returned loaded by
    ``transformers.AutoTokenizer``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        tiny_models.build_tokenizer(out_dir, corpus, vocab_size=vocab_size)
    )


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
    """A transformers config object of a tiny model (Llama / Qwen2: the config of
    :func:`nlhf.testing.tiny_models.tiny_config`)."""
    from transformers import AutoConfig, GPT2Config

    common: dict[str, Any] = dict(
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    if arch == "gpt2":
        extra = {} if num_labels is None else {"num_labels": num_labels}
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden_size,
            n_layer=layers,
            n_head=heads,
            n_inner=intermediate_size,
            n_positions=max_position_embeddings,
            **common,
            **extra,
        )
    cfg = tiny_models.tiny_config(
        arch,
        vocab_size,
        hidden_size=hidden_size,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        num_labels=num_labels,
        **common,
    )
    cfg.pop("architectures")
    return AutoConfig.for_model(**cfg)


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
    """Save a tiny model initialised by transformers under ``torch.manual_seed(seed)`` +
    its tokenizer to ``out_dir`` and return the path.

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
