"""Fixtures of the torch tests beyond the root conftest.py's ``tiny_ckpts``."""

from __future__ import annotations

import json

import pytest

CORPUS = ["Pick a fruit: apple banana cherry", "Name a colour: red green blue"] * 3
"""The tokenizer corpus of :func:`torch_tiny` (a 300-token vocabulary)."""
PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:", "Hello"]


@pytest.fixture(scope="session")
def torch_tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny Llama (seed 1) and a tied Qwen2 (seed 2) initialised by transformers
    (:func:`nlhf_torch.tiny.build_tiny_model`: the small weights the torch tolerances were
    calibrated on, unlike the N(0, 0.3²) ``tiny_ckpts``), sharing a 300-token tokenizer,
    and ``data``: :data:`PROMPTS` as a prompts file; built once per session."""
    from nlhf_torch.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("torch_tiny")
    model = build_tiny_model(root / "policy", "llama", corpus=CORPUS, vocab_size=300, seed=1)
    tied = build_tiny_model(
        root / "tied", "qwen2", tokenizer_dir=model, seed=2, tie_word_embeddings=True
    )
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {"model": str(model), "tied": str(tied), "data": str(data)}
