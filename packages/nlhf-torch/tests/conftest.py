"""Fixtures of the torch tests beyond the root conftest.py's ``tiny_ckpts``."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/models/smollm2-135m-instruct (read-only), built from the installed GGUF through
    the ``nlhf_prepare_spec`` hook's code path once per test run (30–50 s of CPU) for every
    test file that uses the real model. pytest-xdist workers share the one build (under a
    file lock in the run's common temporary directory): the worker that builds it checks
    that it is built once, the others that they find it built."""
    from filelock import FileLock
    from nlhf.packaged import SMOLLM2, ensure_packaged_models, is_built
    from nlhf.spec import RunSpec

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by this run's workers
    path = root / "packaged" / "models" / SMOLLM2.name
    spec = RunSpec.model_validate(
        {"task": "preference_model", "policy": {"model": str(path)}, "data": {"path": "x"}}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / "packaged" / "smollm2.lock")):
        if not is_built(path):
            assert ensure_packaged_models(spec) == [path]
            assert is_built(path)
        assert ensure_packaged_models(spec) == []  # built once
    return path
