"""``nlhf preference-eval``: a short torch ``task: preference_model`` run, then the
command on the run's own held-out pairs (written to a file) gives the run's ``eval``
numbers; accuracy and log loss also recomputed by hand from the model's P; a run
directory or its model/ work alike; clear errors for a directory without a model and a
pairs file without the needed columns."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from nlhf import cli
from nlhf.data.pairs import load_pairs
from nlhf.spec.models import RunSpec
from nlhf.testing.tolerances import assert_close
from nlhf_torch.preference.model import load_preference_model
from nlhf_torch.preference.train import train_preference_model
from nlhf_torch.tiny import build_tiny_model
from typer.testing import CliRunner

runner = CliRunner()
WORDS = ["pear", "plum", "fig", "kiwi", "lime", "date", "grape", "melon"]
TEMPLATE = "Q: {prompt} A1: {response_1} A2: {response_2} Better:"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("prefeval")
    rng = random.Random(0)
    rows = [
        {
            "prompt": f"pick {rng.choice(WORDS)}",
            "chosen": f"apple {rng.choice(WORDS)}",
            "rejected": f"{rng.choice(WORDS)} {rng.choice(WORDS)}",
        }
        for _ in range(40)
    ]
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lm = build_tiny_model(root / "lm", "llama", corpus=[TEMPLATE + " 1 2"], vocab_size=200)
    spec = RunSpec.model_validate(
        {
            "task": "preference_model",
            "policy": {"model": str(lm)},
            "data": {"path": str(data), "eval_fraction": 0.25, "max_length": 64},
            "preference_training": {"kind": "pairwise", "head": "lm", "template": TEMPLATE},
            "training": {"steps": 3, "batch_size": 8, "lr": 3e-3},
        }
    )
    out = root / "run"
    summary = train_preference_model(spec, out)
    # the run's held-out split, as a pairs file in the `preference` format
    model = load_preference_model(out / "model")
    held = load_pairs(spec.data, seed=spec.seed, tokenizer=model.tokenizer).eval
    heldout = root / "heldout.jsonl"
    heldout.write_text(
        "".join(
            json.dumps({"prompt": q.prompt, "chosen": q.chosen, "rejected": q.rejected}) + "\n"
            for q in held
        )
    )
    return {"out": out, "summary": summary, "heldout": heldout, "held": held, "root": root}


def _json(*args: str) -> dict[str, Any]:
    result = runner.invoke(cli.get_app(plugins=False), ["preference-eval", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # trains a tiny model first: about 15 s on 2 cores
def test_agrees_with_the_runs_held_out_numbers(run: dict[str, Any]) -> None:
    got = _json(str(run["out"]), "--data", str(run["heldout"]), "--format", "preference")
    final = run["summary"]["eval"]
    assert got["n"] == len(run["held"]) == final["pairs"]
    for key in ("accuracy", "log_loss", "ece"):
        assert_close(got[key], final[key], "float32", key, scope="model")
    # by hand from the model's P(chosen ≻ rejected)
    model = load_preference_model(run["out"] / "model").eval()
    held = run["held"]
    p = model.prob([q.prompt for q in held], [q.chosen for q in held], [q.rejected for q in held])
    assert_close(got["accuracy"], sum(x > 0.5 for x in p) / len(p), "float64", "accuracy")
    log_loss = -sum(math.log(x) for x in p) / len(p)
    assert_close(got["log_loss"], log_loss, "float32", "log loss", scope="model")
    # the run directory and its model/ are the same model
    same = _json(str(run["out"] / "model"), "--data", str(run["heldout"]))
    assert same["accuracy"] == got["accuracy"] and same["log_loss"] == got["log_loss"]


@pytest.mark.slow
def test_table_output(run: dict[str, Any]) -> None:
    result = runner.invoke(
        cli.get_app(plugins=False),
        ["preference-eval", str(run["out"]), "--data", str(run["heldout"])],
    )
    assert result.exit_code == 0, result.output
    for key in ("accuracy", "log_loss", "ece", "n"):
        assert key in result.stdout


def test_a_directory_without_a_model_is_refused(tmp_path: Path) -> None:
    app = cli.get_app(plugins=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    result = runner.invoke(app, ["preference-eval", str(empty), "--data", str(pairs)])
    assert result.exit_code == 1 and "holds no preference model" in result.stderr
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["preference-eval", str(tmp_path / "absent"), "--data", str(pairs)])
    assert result.exit_code == 1 and "is not a directory" in result.stderr


@pytest.mark.slow
def test_a_pairs_file_without_the_needed_columns_is_refused(
    run: dict[str, Any], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    result = runner.invoke(
        cli.get_app(plugins=False),
        ["preference-eval", str(run["out"]), "--data", str(bad), "--format", "preference"],
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "chosen" in result.stderr, result.stderr
