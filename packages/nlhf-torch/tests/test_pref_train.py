"""``task: preference_model`` training (docs/spec.md, PreferenceTrainingSpec): metrics
against hand-computed values, run outputs, resume equal to an uninterrupted run, pairwise
vs Bradley–Terry on the same held-out pairs, and learning a synthetic preference with
known truth (contains "apple")."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from nlhf.data.pairs import Pair, load_pairs
from nlhf.errors import InputError, SpecError
from nlhf.runio import read_metrics
from nlhf.spec.models import RunSpec
from nlhf.testing.tolerances import assert_close
from nlhf_torch.preference.serve import load_pairwise_model
from nlhf_torch.preference.train import _evaluate, train_preference_model
from nlhf_torch.tiny import build_tiny_model

WORDS = ["pear", "plum", "fig", "kiwi", "lime", "date", "grape", "melon", "berry", "peach"]
TEMPLATE = "Q: {prompt} A1: {response_1} A2: {response_2} Better:"


def keyword_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Known truth: the response containing "apple" is preferred."""
    rng = random.Random(seed)

    def response(keyword: bool) -> str:
        words = [rng.choice(WORDS) for _ in range(3)]
        if keyword:
            words[rng.randrange(3)] = "apple"
        return " ".join(words)

    return [
        {
            "prompt": f"pick {rng.choice(WORDS)}",
            "chosen": response(True),
            "rejected": response(False),
        }
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pref")
    rows = keyword_rows(240)
    data = root / "keyword.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = [
        TEMPLATE.replace("{prompt}", r["prompt"])
        .replace("{response_1}", r["chosen"])
        .replace("{response_2}", r["rejected"])
        + " 1"
        for r in rows[:50]
    ] + [TEMPLATE + " 2"]
    model = build_tiny_model(root / "lm", "llama", corpus=corpus, vocab_size=300)
    return {"root": root, "data": data, "model": model}


def make_spec(setup: dict[str, Path], **over: Any) -> RunSpec:
    raw: dict[str, Any] = {
        "task": "preference_model",
        "seed": 0,
        "policy": {"model": str(setup["model"])},
        "data": {"path": str(setup["data"]), "eval_fraction": 0.2, "max_length": 64},
        "preference_training": {"kind": "pairwise", "head": "lm", "template": TEMPLATE},
        "training": {"steps": 4, "batch_size": 8, "lr": 3e-3, "epochs": 100},
    }
    for key, value in over.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return RunSpec.model_validate(raw)


# ------------------------------------------------------------------ metrics
class FixedModel(torch.nn.Module):
    """Returns preset P(y ≻ y') per (y, y') and records its mode at each call."""

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        super().__init__()
        self.table = table
        self.modes: list[bool] = []

    def prob(self, prompts, ys, y_primes, batch_size=None) -> list[float]:
        self.modes.append(self.training)
        return [self.table[(a, b)] for a, b in zip(ys, y_primes, strict=True)]


def test_pref_evaluation_runs_in_eval_mode_and_restores_it() -> None:
    """The metrics themselves are checked by hand in core (test_preference_metrics.py);
    here: both orders are scored in eval mode, and the training mode comes back."""
    table = {("a", "b"): 0.8, ("b", "a"): 0.2, ("c", "d"): 0.4, ("d", "c"): 0.6 + 1e-3}
    model = FixedModel(table).train()
    m = _evaluate(model, [Pair("x", "a", "b"), Pair("x", "c", "d", 0.75)])
    assert model.modes == [False, False] and model.training
    assert m["accuracy"] == 0.5  # 0.8 right; 0.4 vs label 0.75 wrong
    expected = -(math.log(0.8) + 0.75 * math.log(0.4) + 0.25 * math.log(0.6)) / 2
    assert_close(m["log_loss"], expected, "float64", "log_loss")
    assert _evaluate(model.eval(), [Pair("x", "a", "b")])["pairs"] == 1 and not model.training


# ------------------------------------------------------------------------- runs
@pytest.mark.slow  # three short training runs
def test_pref_run_outputs_resume_and_baseline(setup: dict[str, Path], tmp_path: Path) -> None:
    full = make_spec(setup, preference_training={"compare_baseline": True})
    out_full = tmp_path / "full"
    summary = train_preference_model(full, out_full)
    for name in ("spec.resolved.yaml", "metrics.jsonl", "summary.json", "model/model.safetensors"):
        assert (out_full / name).exists(), name
    assert (out_full / "checkpoints" / "step-4" / "trainer_state.pt").exists()
    assert json.loads((out_full / "summary.json").read_text())["steps"] == 4
    assert summary["data"]["train_pairs"] == 192 and summary["data"]["eval_pairs"] == 48
    # BT baseline trained on the same data and scored on the same held-out pairs
    base = summary["baseline"]
    assert base["kind"] == "bradley_terry" and summary["kind"] == "pairwise"
    assert base["eval"]["pairs"] == summary["eval"]["pairs"] == 48
    assert (out_full / "baseline" / "model" / "nlhf_preference.json").exists()
    records = read_metrics(out_full)
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4, 4]
    assert "eval/log_loss" in records[0] and "loss" in records[1]

    # held-out log-loss recomputed from the served model (independent of evaluate_pairs)
    served = load_pairwise_model(out_full / "model")
    assert summary["data"]["truncated_prompts"] == summary["data"]["truncated_responses"] == 0
    held = load_pairs(full.data, seed=0, tokenizer=served.tokenizer).eval
    assert len(held) == 48
    p = served.prob([q.prompt for q in held], [q.chosen for q in held], [q.rejected for q in held])
    log_loss = -sum(math.log(v) for v in p) / len(p)
    assert_close(summary["eval"]["log_loss"], log_loss, what="held-out log-loss", scope="model")

    # interrupted after 2 steps, resumed to 4: the same model as the uninterrupted run
    out = tmp_path / "resumed"
    train_preference_model(make_spec(setup, training={"steps": 2}), out)
    assert (out / "checkpoints" / "step-2").exists()
    with pytest.raises(InputError, match="already holds checkpoints"):
        train_preference_model(make_spec(setup), out)
    resumed = train_preference_model(make_spec(setup), out, resume=True)
    assert resumed["resumed_from"] == 2
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2, 2, 3, 4, 4]
    a = load_pairwise_model(out_full / "model").model.state_dict()
    b = load_pairwise_model(out / "model").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # resume is bit-exact
    assert resumed["eval"]["log_loss"] == summary["eval"]["log_loss"]


@pytest.mark.slow
def test_pref_learns_known_preference_pairwise_and_bt(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    spec = make_spec(
        setup,
        training={"steps": 40, "batch_size": 16},
        preference_training={"compare_baseline": True},
    )
    summary = train_preference_model(spec, tmp_path / "run")
    zero = summary["eval_zero_shot"]
    assert abs(zero["log_loss"] - math.log(2)) < 0.05  # untrained judge: about chance
    for result in (summary, summary["baseline"]):
        assert result["eval"]["pairs"] == 48
        assert result["eval"]["accuracy"] == 1.0
        assert result["eval"]["log_loss"] < 0.1, result["kind"]
        assert_close(
            result["eval"]["antisymmetry_max_error"], 0.0, what="antisymmetry", scope="model"
        )
    # antisymmetry after training, on random inputs, through the serving path
    model = load_pairwise_model(tmp_path / "run" / "model")
    rng = random.Random(5)
    texts = [" ".join(rng.choices([*WORDS, "apple"], k=rng.randint(1, 6))) for _ in range(30)]
    xs, ys, yps = texts[:10], texts[10:20], texts[20:]
    p, q = model.prob(xs, ys, yps), model.prob(xs, yps, ys)
    assert_close(np.add(p, q), 1.0, what="P(y≻y') + P(y'≻y)", scope="model")
    keyword = model.prob(["pick fig"], ["fig apple lime"], ["fig plum lime"])[0]
    assert keyword > 0.9


def test_lora_is_a_clear_error_not_silently_full_finetuning(setup, tmp_path) -> None:
    spec = make_spec(setup, policy={"lora": {"r": 4}})
    with pytest.raises(SpecError, match=r"policy\.lora: LoRA is not supported by backend 'torch'"):
        train_preference_model(spec, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything is written
