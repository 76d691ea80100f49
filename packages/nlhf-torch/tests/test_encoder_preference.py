"""An encoder backbone for ``task: preference_model`` on torch: all-MiniLM-L6-v2 (the
packaged BERT encoder, docs/real-models.md) trains a Bradley–Terry reward head and a
pairwise classification head for two steps, reloads with the same P, and is refused as a
``head: lm`` judge (it has no language-model head). Slow: the real 22.7M encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nlhf.packaged import MINILM, ensure_packaged_models, role_problems
from nlhf.spec.models import RunSpec
from nlhf.testing.tolerances import assert_close
from nlhf_torch.preference.model import load_preference_model
from nlhf_torch.preference.train import train_preference_model

pytestmark = pytest.mark.slow

ROWS = [
    {"prompt": "What is 2+2?", "chosen": "It is 4.", "rejected": "It is a fish."},
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Bananas are yellow."},
    {"prompt": "Say hello.", "chosen": "Hello!", "rejected": "No."},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
] * 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoder")
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return {"root": root, "data": data, "model": root / "models" / MINILM.name}


@pytest.mark.parametrize("kind", ["bradley_terry", "pairwise"])
def test_minilm_trains_a_preference_head_and_reloads(setup: dict[str, Path], kind: str) -> None:
    spec = RunSpec.model_validate(
        {
            "task": "preference_model",
            "policy": {"model": str(setup["model"])},
            "data": {"path": str(setup["data"]), "eval_fraction": 0.25, "max_length": 64},
            "preference_training": {"kind": kind, "head": "classification"},
            "training": {"steps": 2, "batch_size": 4, "lr": 1e-3},
        }
    )
    assert role_problems(spec) == []  # an encoder with a classification head is fine
    ensure_packaged_models(spec)  # what nlhf run's prepare hook does
    out = setup["root"] / kind
    summary = train_preference_model(spec, out)
    assert 0.0 <= summary["eval"]["accuracy"] <= 1.0
    model = load_preference_model(out / "model").eval()
    assert type(model.model).__name__ == "BertForSequenceClassification"
    prompts = [r["prompt"] for r in ROWS[:4]]
    chosen = [r["chosen"] for r in ROWS[:4]]
    rejected = [r["rejected"] for r in ROWS[:4]]
    p = model.prob(prompts, chosen, rejected)
    assert all(0 < x < 1 for x in p)
    back = model.prob(prompts, rejected, chosen)
    total = [a + b for a, b in zip(p, back, strict=True)]
    assert_close(total, [1.0] * 4, "float32", "P + P'", scope="model")
    assert_close(summary["eval"]["pairs"], 2, "float64", "held-out pairs")


def test_minilm_as_a_judge_lm_is_refused_located(setup: dict[str, Path]) -> None:
    spec = RunSpec.model_validate(
        {
            "task": "preference_model",
            "policy": {"model": str(setup["model"])},
            "data": {"path": str(setup["data"])},
            "preference_training": {"kind": "pairwise", "head": "lm"},
        }
    )
    [(loc, message)] = role_problems(spec)
    assert loc == ("policy", "model") and "is an encoder" in message
