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

import inspect
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


def tiny_config(arch: Arch, vocab_size: int, **config: Any) -> Any:
    """A transformers config object of a tiny model, from the keywords and defaults of
    :func:`nlhf.testing.tiny_models.tiny_config` (the one home of the tiny shapes).
    Llama / Qwen2: that function's ``config.json``. GPT-2, which that module does not
    build: ``hidden_size`` → ``n_embd``, ``layers`` → ``n_layer``, ``heads`` → ``n_head``,
    ``intermediate_size`` → ``n_inner``, ``max_position_embeddings`` → ``n_positions``
    (``kv_heads``, ``rope_theta`` and ``rms_norm_eps`` have no GPT-2 counterpart and are
    not used)."""
    from transformers import AutoConfig, GPT2Config

    if arch != "gpt2":
        cfg = tiny_models.tiny_config(arch, vocab_size, **config)
        cfg.pop("architectures")
        return AutoConfig.for_model(**cfg)
    signature = inspect.signature(tiny_models.tiny_config).parameters
    unknown = sorted(set(config) - set(signature))
    if unknown:
        raise TypeError(f"tiny_config() got unexpected keyword arguments {unknown}")
    c = {k: p.default for k, p in signature.items() if p.default is not p.empty} | config
    extra = {} if c["num_labels"] is None else {"num_labels": c["num_labels"]}
    return GPT2Config(
        vocab_size=vocab_size,
        n_embd=c["hidden_size"],
        n_layer=c["layers"],
        n_head=c["heads"],
        n_inner=c["intermediate_size"],
        n_positions=c["max_position_embeddings"],
        pad_token_id=c["pad_token_id"],
        bos_token_id=c["bos_token_id"],
        eos_token_id=c["eos_token_id"],
        tie_word_embeddings=c["tie_word_embeddings"],
        **extra,
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
