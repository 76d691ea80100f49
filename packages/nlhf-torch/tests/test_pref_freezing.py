"""``preference_training.frozen_layers`` on torch: the backbone's embeddings and first N
blocks stay fixed (bit-identical after training), everything above trains, and a depth
beyond the model's is refused. The frozen set is checked against parameter names written
out from transformers' Llama layout (``model.embed_tokens``, ``model.layers.i``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from nlhf.errors import InputError
from nlhf.preference.format import PreferenceConfig
from nlhf.spec.models import RunSpec
from nlhf_torch.preference.model import build_preference_model, freeze_lower_layers
from nlhf_torch.preference.train import train_preference_model
from nlhf_torch.tiny import build_tiny_model
from safetensors.numpy import load_file

WORDS = ["apple", "pear", "plum", "fig", "kiwi", "lime", "the", "a", "is"]
LAYERS = 3


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = [" ".join(random.Random(i).choices(WORDS, k=10)) for i in range(30)]
    return build_tiny_model(
        tmp_path_factory.mktemp("lm"),
        "llama",
        corpus=corpus,
        vocab_size=150,
        layers=LAYERS,
    )


def is_frozen_name(name: str, n: int) -> bool:
    """transformers' LlamaForSequenceClassification: model.embed_tokens, model.layers.i.*,
    model.norm, score."""
    return name.startswith("model.embed_tokens.") or any(
        name.startswith(f"model.layers.{i}.") for i in range(n)
    )


@pytest.mark.parametrize("n", [0, 1, LAYERS])
def test_frozen_set_is_the_embeddings_and_the_lowest_blocks(lm_dir: Path, n: int) -> None:
    config = PreferenceConfig(kind="bradley_terry", head="classification", max_length=32)
    model = build_preference_model(lm_dir, config).model
    freeze_lower_layers(model, n)
    names = [name for name, _ in model.named_parameters()]
    assert any(name.startswith(f"model.layers.{LAYERS - 1}.") for name in names)
    frozen = sorted(name for name, p in model.named_parameters() if not p.requires_grad)
    assert frozen == sorted(name for name in names if n and is_frozen_name(name, n))


def test_too_many_frozen_layers_are_refused(lm_dir: Path) -> None:
    config = PreferenceConfig(kind="bradley_terry", head="classification", max_length=32)
    model = build_preference_model(lm_dir, config).model
    with pytest.raises(InputError, match=f"exceeds the {LAYERS} transformer blocks"):
        freeze_lower_layers(model, LAYERS + 1)


def test_training_leaves_frozen_weights_bit_identical(lm_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(0)
    rows = [
        {
            "prompt": "pick",
            "chosen": "apple " + " ".join(rng.choices(WORDS, k=3)),
            "rejected": " ".join(rng.choices(WORDS[1:], k=4)),
        }
        for _ in range(16)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = RunSpec.model_validate(
        {
            "task": "preference_model",
            "policy": {"model": str(lm_dir)},
            "data": {"path": str(data), "max_length": 32},
            "preference_training": {"kind": "bradley_terry", "frozen_layers": 2},
            "training": {"steps": 3, "batch_size": 8, "lr": 1e-2},
        }
    )
    train_preference_model(spec, tmp_path / "out")
    before = load_file(str(lm_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "out" / "model" / "model.safetensors"))
    changed = []
    for name, value in after.items():
        if name == "score.weight":  # the fresh head has no counterpart in the causal LM
            continue
        if is_frozen_name(name, 2):
            np.testing.assert_array_equal(value, before[name], err_msg=name)
        elif not np.array_equal(value, before[name]):
            changed.append(name)
    assert any(name.startswith("model.layers.2.") for name in changed)
    assert not any(is_frozen_name(name, 2) for name in changed)
