"""A preference model trained with ``data.truncation: right`` records it in
``nlhf_preference.json``, and what reads the model afterwards cuts as training cut:
``nlhf preference-eval`` reproduces the run's held-out numbers (prompts cut to their
last ``max_prompt_length`` tokens and responses from the right, as in training) and
``bradley_terry_reward`` reads the prompt's last ``max_prompt_length`` tokens and the
response's first tokens (not the ``left`` rule, which would cut the prompt further and
keep the response whole)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from nlhf import cli
from nlhf.data.tokenizer import load_tokenizer
from nlhf.preference.format import CONFIG_NAME
from nlhf.spec.models import BradleyTerryPreference, RunSpec
from nlhf.testing.tolerances import assert_close
from nlhf_torch.preference.scorers import load_bradley_terry
from nlhf_torch.preference.train import train_preference_model
from nlhf_torch.tiny import build_tiny_model
from typer.testing import CliRunner

WORDS = ["pear", "plum", "fig", "kiwi", "lime", "date", "grape", "melon", "apple"]
MAX_PROMPT = 6


@pytest.mark.slow  # trains a tiny model: about 10 s on 2 cores
def test_a_model_trained_with_right_truncation_is_read_with_it(tmp_path: Path) -> None:
    """Every response is a reordering of the same words (the same token count: byte-level
    BPE splits at spaces) and the budget leaves 2 tokens of prompt beside the longest, so
    ``left`` would keep 2 prompt tokens and whole responses, ``right`` keeps 6 and cuts."""
    lm = build_tiny_model(tmp_path / "lm", "llama", corpus=[" ".join(WORDS)], vocab_size=120)
    tok = load_tokenizer(lm, scoring=True)
    rng = random.Random(0)
    rows = [
        {
            "prompt": " ".join(rng.choices(WORDS, k=30)),
            "chosen": " apple " + " ".join(rng.sample(WORDS[:8], 8)),
            "rejected": " " + " ".join(rng.sample(WORDS[:8], 8)),
        }
        for _ in range(20)
    ]
    longest = max(len(tok.encode(r["chosen"], add_special_tokens=False)) for r in rows)
    budget = longest + 2  # the tiny tokenizer adds no special tokens; + 4 of slack
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = tmp_path / "heldout.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in rows[-5:]))
    spec = RunSpec.model_validate(
        {
            "task": "preference_model",
            "policy": {"model": str(lm)},
            "data": {
                "path": str(data),
                "shuffle": False,
                "eval_fraction": 0.25,
                "max_length": budget + 4,
                "max_prompt_length": MAX_PROMPT,
                "truncation": "right",
            },
            "preference_training": {"kind": "bradley_terry"},
            "training": {"steps": 2, "batch_size": 5, "lr": 1e-2},
        }
    )
    summary = train_preference_model(spec, tmp_path / "run")
    model = tmp_path / "run" / "model"
    saved = json.loads((model / CONFIG_NAME).read_text())
    assert (saved["max_prompt_length"], saved["truncation"]) == (MAX_PROMPT, "right")

    scorer = load_bradley_terry(BradleyTerryPreference(path=str(model)))
    x, y = rows[0]["prompt"], rows[0]["chosen"]
    p, a = tok.encode(x, add_special_tokens=False), tok.encode(y, add_special_tokens=False)
    assert len(a) == longest and len(p) > MAX_PROMPT
    right = tok.decode(p[-MAX_PROMPT:]) + tok.decode(a[: budget - MAX_PROMPT])
    assert scorer.texts([x], [y]) == [right]
    left = tok.decode(p[-2:]) + y  # what the `left` rule reads
    assert scorer.texts([x], [y]) != [left]

    assert summary["data"]["truncated_responses"] == 20  # `left` would cut none
    args = ["preference-eval", str(tmp_path / "run"), "--data", str(held), "--json"]
    result = CliRunner().invoke(cli.get_app(plugins=False), args)
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["data_report"]["truncated_responses"] == 5
    final = summary["eval"]
    assert got["n"] == final["pairs"] == 5
    for key in ("log_loss", "ece", "accuracy"):
        assert_close(got[key], final[key], "float32", key, scope="model")
