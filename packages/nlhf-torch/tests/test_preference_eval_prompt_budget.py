"""A preference model records its run's ``data.max_prompt_length`` and ``nlhf
preference-eval`` cuts prompts to it, so on the run's held-out rows (long prompts, cut
from the left during training) the command reproduces the run's ``eval`` numbers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from nlhf import cli
from nlhf.preference.format import CONFIG_NAME
from nlhf.spec.models import RunSpec
from nlhf.testing.tolerances import assert_close
from nlhf_torch.preference.train import train_preference_model
from nlhf_torch.tiny import build_tiny_model
from typer.testing import CliRunner

WORDS = ["pear", "plum", "fig", "kiwi", "lime", "date", "grape", "melon", "apple"]


@pytest.mark.slow  # trains a tiny model: about 10 s on 2 cores
def test_preference_eval_cuts_prompts_like_the_run(tmp_path: Path) -> None:
    rng = random.Random(0)
    rows = [
        {
            "prompt": " ".join(rng.choices(WORDS, k=30)),  # far over max_prompt_length
            "chosen": "apple " + rng.choice(WORDS),
            "rejected": rng.choice(WORDS),
        }
        for _ in range(20)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = tmp_path / "heldout.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in rows[-5:]))
    lm = build_tiny_model(tmp_path / "lm", "llama", corpus=[" ".join(WORDS)], vocab_size=120)
    spec = RunSpec.model_validate(
        {
            "task": "preference_model",
            "policy": {"model": str(lm)},
            "data": {
                "path": str(data),
                "shuffle": False,
                "eval_fraction": 0.25,
                "max_length": 64,
                "max_prompt_length": 6,
            },
            "preference_training": {"kind": "bradley_terry"},
            "training": {"steps": 2, "batch_size": 5, "lr": 1e-2},
        }
    )
    summary = train_preference_model(spec, tmp_path / "run")
    assert summary["data"]["truncated_prompts"] == 20
    saved = json.loads((tmp_path / "run" / "model" / CONFIG_NAME).read_text())
    assert saved["max_prompt_length"] == 6
    args = ["preference-eval", str(tmp_path / "run"), "--data", str(held), "--json"]
    result = CliRunner().invoke(cli.get_app(plugins=False), args)
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["data_report"]["truncated_prompts"] == 5
    final = summary["eval"]
    assert got["n"] == final["pairs"] == 5
    for key in ("log_loss", "ece", "accuracy"):
        assert_close(got[key], final[key], "float32", key, scope="model")
