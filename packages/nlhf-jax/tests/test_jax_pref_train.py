"""``task: preference_model`` on the jax backend: the shared batch order, run outputs,
resume equal to an uninterrupted run, and clear errors for what the jax backend does not
support. The metrics are checked in core (test_preference_metrics.py), the agreement with
torch in tests/test_cross_backend_jax_torch_preferences.py."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nlhf.data.pairs import load_pairs, pair_batch_indices
from nlhf.errors import InputError, NLHFError
from nlhf.runio import read_metrics
from nlhf.spec.models import RunSpec

pytest.importorskip("flax")
pytestmark = pytest.mark.jax

from nlhf_jax.backend import JaxBackend  # noqa: E402
from nlhf_jax.models import to_hf_state_dict  # noqa: E402
from nlhf_jax.preference.model import load_preference_model  # noqa: E402
from nlhf_jax.preference.train import train_preference_model  # noqa: E402

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
        {"prompt": f"pick {rng.choice(WORDS)}", "chosen": response(True),
         "rejected": response(False)}
        for _ in range(n)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from nlhf.testing.tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("jax_pref")
    rows = keyword_rows(50)
    data = root / "keyword.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = [TEMPLATE.format(prompt=r["prompt"], response_1=r["chosen"],
                              response_2=r["rejected"]) + " 1" for r in rows[:20]]  # fmt: skip
    model = build_tiny_model(root / "lm", "llama", corpus=[*corpus, TEMPLATE + " 2"],
                             vocab_size=300)  # fmt: skip
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


# ------------------------------------------------------------------ batch order
def test_pair_batch_indices_cover_each_epoch_once_and_are_seeded() -> None:
    n, batch = 10, 4  # 3 steps per epoch, the last one of 2 pairs
    epoch0 = [pair_batch_indices(n, batch, s, seed=3, shuffle=True) for s in range(3)]
    assert [len(b) for b in epoch0] == [4, 4, 2]
    assert sorted(i for b in epoch0 for i in b) == list(range(n))
    epoch1 = [pair_batch_indices(n, batch, s, seed=3, shuffle=True) for s in range(3, 6)]
    assert sorted(i for b in epoch1 for i in b) == list(range(n)) and epoch1 != epoch0
    expected = np.random.default_rng([3, 1]).permutation(n)[4:8].tolist()
    assert pair_batch_indices(n, batch, 4, seed=3, shuffle=True) == expected
    assert pair_batch_indices(n, batch, 4, seed=4, shuffle=True) != expected
    assert pair_batch_indices(n, batch, 4, seed=3, shuffle=False) == [4, 5, 6, 7]


# ------------------------------------------------------------------------- runs
@pytest.mark.slow
def test_run_outputs_and_resume(setup: dict[str, Path], tmp_path: Path) -> None:
    out_full = tmp_path / "full"
    summary = JaxBackend().train(make_spec(setup), out_full)
    for name in ("spec.resolved.yaml", "metrics.jsonl", "summary.json", "model/model.safetensors",
                 "model/tokenizer.json", "model/nlhf_preference.json",
                 "checkpoints/step-4/optimizer.safetensors",
                 "checkpoints/step-4/trainer_state.json"):  # fmt: skip
        assert (out_full / name).exists(), name
    assert summary["steps"] == 4 and summary["backend"] == "jax"
    assert summary["data"]["train_pairs"] == 40 and summary["data"]["eval_pairs"] == 10
    records = read_metrics(out_full)
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4, 4]
    assert {"loss", "grad_norm", "lr", "epoch"} <= set(records[1])
    assert "eval/log_loss" in records[0] and "eval/accuracy" in records[-1]

    # held-out log-loss recomputed from the saved model
    served = load_preference_model(out_full / "model")
    held = load_pairs(make_spec(setup).data, seed=0, tokenizer=served.tokenizer).eval
    p = served.prob([q.prompt for q in held], [q.chosen for q in held], [q.rejected for q in held])
    assert summary["eval"]["log_loss"] == pytest.approx(-np.log(p).mean(), abs=1e-6)

    # interrupted after 2 steps, resumed to 4: the same model as the uninterrupted run
    out = tmp_path / "resumed"
    train_preference_model(make_spec(setup, training={"steps": 2}), out)
    with pytest.raises(InputError, match="already holds checkpoints"):
        train_preference_model(make_spec(setup), out)
    resumed = train_preference_model(make_spec(setup), out, resume=True)
    assert resumed["resumed_from"] == 2
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2, 2, 3, 4, 4]
    a = to_hf_state_dict(load_preference_model(out_full / "model").model)
    b = to_hf_state_dict(load_preference_model(out / "model").model)
    for k in a:  # resume is bit-exact
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    full_losses = [r["loss"] for r in records if "loss" in r]
    resumed_losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert resumed_losses == full_losses


# ------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("over", "error", "match"),
    [
        ({"distributed": {"engine": "deepspeed"}}, NLHFError, "distributed.engine"),
        ({"distributed": {"engine": "jax", "mesh": {"data": 2}}}, InputError, "needs 2 devices"),
        ({"policy": {"model": "/nonexistent/model"}}, InputError, "not found"),
        ({"preference_training": {"answer_tokens": [" 1", " 12"]}}, InputError, "prefix"),
    ],
)
def test_clear_errors(setup: dict[str, Path], tmp_path: Path, over, error, match) -> None:
    with pytest.raises(error, match=match):
        train_preference_model(make_spec(setup, **over), tmp_path / "run")


def test_unsupported_task_names_the_supported_ones() -> None:
    spec = RunSpec.model_construct(task="bogus")
    with pytest.raises(NLHFError, match="nash, preference_model, evaluate"):
        JaxBackend().train(spec, Path("unused"))
