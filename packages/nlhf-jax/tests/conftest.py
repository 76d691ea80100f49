"""Shared fixtures of the nlhf-jax tests: tiny Llama/Qwen2 checkpoints with weights
re-drawn at std 0.3 (so logits are O(1) and every bias is non-zero), built once."""

from __future__ import annotations

from pathlib import Path

import pytest


def randomize_checkpoint(src: Path, dst: Path, *, seed: int, std: float = 0.3) -> Path:
    """Load ``src`` with transformers, redraw every parameter ~ N(0, std²), save to ``dst``."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    cfg = AutoConfig.from_pretrained(src)
    is_cls = any("SequenceClassification" in a for a in cfg.architectures or [])
    cls = AutoModelForSequenceClassification if is_cls else AutoModelForCausalLM
    model = cls.from_pretrained(src)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(1.0)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from nlhf_torch.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("jax_tiny")
    tok = build_tiny_model(root / "base", "llama")
    out = {}
    specs = {
        "llama": dict(arch="llama", tie_word_embeddings=False),
        "llama_tied": dict(arch="llama", tie_word_embeddings=True),
        "qwen2": dict(arch="qwen2", tie_word_embeddings=False),
        "qwen2_tied": dict(arch="qwen2", tie_word_embeddings=True),
        "llama_rm": dict(arch="llama", head="sequence_classification"),
    }
    for i, (name, kw) in enumerate(specs.items()):
        raw = build_tiny_model(root / f"{name}-init", tokenizer_dir=tok, seed=i, **kw)
        out[name] = randomize_checkpoint(raw, root / name, seed=100 + i)
    return out
