"""Encoder backbones and mean pooling are declared capabilities: torch trains both, jax
(decoder architectures only) refuses them located (``SPEC:LINE:COL: field: what; how to
fix``) before any model loads, and jax refuses to load a model saved with mean pooling."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from nlhf.errors import InputError, SpecError
from nlhf.preference.format import PreferenceConfig
from nlhf.spec import load_spec
from nlhf.spec.capabilities import check_spec_file
from nlhf_jax.plugin import CAPABILITIES as JAX
from nlhf_torch.plugin import CAPABILITIES as TORCH
from nlhf_torch.preference.model import build_preference_model
from nlhf_torch.tiny import build_tiny_model

SPEC = """\
spec_version: 1
task: preference_model
policy:
  model: runs/models/all-minilm-l6-v2
preference_training:
  kind: bradley_terry
  pooling: mean
  frozen_layers: 2
data: {path: pairs.jsonl}
"""


def problems(path: Path, backend: str) -> list[str]:
    try:
        check_spec_file(load_spec(path), backend, path)
    except SpecError as exc:
        return exc.issues
    return []


def test_declared() -> None:
    assert TORCH.encoder_backbones and TORCH.mean_pooling and TORCH.frozen_layers
    assert not (JAX.encoder_backbones or JAX.mean_pooling or JAX.frozen_layers)


def test_jax_refuses_an_encoder_and_mean_pooling_located(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    # line 4 / 7, the value's column (1-based): "  model: " and "  pooling: " precede it
    assert problems(path, "jax") == [
        f"{path}:4:10: policy.model: runs/models/all-minilm-l6-v2 is an encoder "
        "(bidirectional, e.g. BERT); backend 'jax' trains preference models on decoder "
        "(causal LM) backbones only; use a decoder such as runs/models/smollm2-135m-instruct; "
        "use --backend torch",
        f"{path}:7:12: preference_training.pooling: 'mean' is not supported by backend 'jax' "
        "(its classification heads read the model's own pooled output); use `pooling: model`; "
        "use --backend torch",
        f"{path}:8:18: preference_training.frozen_layers: 2 is not supported by backend 'jax' "
        "(it trains every parameter); set frozen_layers: 0; use --backend torch",
    ]
    assert problems(path, "torch") == []


def test_a_decoder_backbone_passes_on_jax(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    text = (
        SPEC.replace("all-minilm-l6-v2", "smollm2-135m-instruct")
        .replace("mean", "model")
        .replace("2", "0")
    )
    path.write_text(text)
    assert problems(path, "jax") == []


def test_jax_refuses_to_load_a_mean_pooled_model(tmp_path: Path) -> None:
    corpus = [" ".join(random.Random(i).choices(["a", "b", "c", "d"], k=8)) for i in range(10)]
    lm = build_tiny_model(tmp_path / "lm", "llama", corpus=corpus, vocab_size=100)
    config = PreferenceConfig(kind="bradley_terry", head="classification", pooling="mean")
    build_preference_model(lm, config).save(tmp_path / "mean")
    from nlhf_jax.preference.model import load_preference_model

    with pytest.raises(InputError, match="pooling 'mean', which the jax backend does not"):
        load_preference_model(tmp_path / "mean")
