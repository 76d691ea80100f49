"""Clear errors of DeepSpeed runs (docs/distributed.md) through the trainers' entry points, raised
before any process group is joined: DeepSpeed missing, world size not dividing the
batch, a conflicting DeepSpeed JSON, and resuming across single-process/DeepSpeed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from nlhf.errors import InputError, NLHFError
from nlhf.runio import checkpoint_dir, write_manifest
from nlhf.spec.models import RunSpec
from nlhf_torch.checkpoint import STATE_FILE
from nlhf_torch.preference.train import train_preference_model
from nlhf_torch.tiny import build_tiny_model
from nlhf_torch.trainer import train_nash

PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:", "Hello"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ds-errors")
    model = build_tiny_model(root / "lm", "llama", corpus=["a b c 1 2"] * 3, vocab_size=300)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    pairs = root / "pairs.jsonl"
    rows = [{"prompt": "p", "chosen": f"a {i}", "rejected": f"b {i}"} for i in range(12)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model": str(model), "prompts": str(prompts), "pairs": str(pairs)}


def nash_spec(assets: dict[str, str], out: Path, distributed: dict[str, Any] | None) -> RunSpec:
    raw: dict[str, Any] = {
        "policy": {"model": assets["model"]},
        "preference": {"name": "llm_judge", "model": assets["model"], "answer_tokens": ["1", "2"]},
        "data": {"path": assets["prompts"]},
        "algorithm": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1},
        "training": {"steps": 1, "batch_size": 4, "generation": {"max_new_tokens": 2}},
        "output": {"dir": str(out)},
    }
    if distributed is not None:
        raw["distributed"] = {"engine": "deepspeed", **distributed}
    return RunSpec.model_validate(raw)


def pref_spec(assets: dict[str, str], out: Path) -> RunSpec:
    return RunSpec.model_validate(
        {
            "task": "preference_model",
            "policy": {"model": assets["model"]},
            "data": {"path": assets["pairs"], "eval_fraction": 0.25},
            "preference_training": {"kind": "bradley_terry"},
            "training": {"steps": 1, "batch_size": 4},
            "distributed": {"engine": "deepspeed"},
            "output": {"dir": str(out)},
        }
    )


@pytest.fixture
def three_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process claims to be rank 0 of 3 (as under torchrun --nproc_per_node=3)."""
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "3"}.items():
        monkeypatch.setenv(key, value)


def test_deepspeed_missing(
    assets: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    with pytest.raises(NLHFError, match=r"pip install nlhf-torch\[deepspeed\]"):
        train_nash(nash_spec(assets, tmp_path / "n", {}), tmp_path / "n")
    with pytest.raises(NLHFError, match=r"pip install nlhf-torch\[deepspeed\]"):
        train_preference_model(pref_spec(assets, tmp_path / "p"), tmp_path / "p")


@pytest.mark.usefixtures("three_ranks")
def test_world_size_not_dividing_batch(assets: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    msg = r"batch_size = 4 is not divisible by world size 3 × training.grad_accum 1 = 3"
    with pytest.raises(InputError, match=msg):
        train_nash(nash_spec(assets, tmp_path / "n", {}), tmp_path / "n")
    with pytest.raises(InputError, match=msg):
        train_preference_model(pref_spec(assets, tmp_path / "p"), tmp_path / "p")


def test_conflicting_json(assets: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"train_batch_size": 32, "zero_optimization": {"stage": 3}}))
    spec = nash_spec(assets, tmp_path / "n", {"zero_stage": 2, "config": str(user)})
    with pytest.raises(InputError) as info:
        train_nash(spec, tmp_path / "n")
    msg = str(info.value)
    assert "2 setting(s) conflict with the spec" in msg
    assert "train_batch_size = 32 conflicts with training.batch_size = 4" in msg
    assert "zero_optimization.stage = 3 conflicts with distributed.zero_stage = 2" in msg


def test_single_process_resume_of_a_deepspeed_checkpoint(
    assets: dict[str, str], tmp_path: Path
) -> None:
    """A checkpoint whose optimizer lives in DeepSpeed shards cannot be resumed without
    DeepSpeed (it would silently restart the optimizer)."""
    out = tmp_path / "run"
    train_nash(nash_spec(assets, out, None), out)
    state_file = checkpoint_dir(out, 1) / STATE_FILE
    state = torch.load(state_file, weights_only=False)
    state["optimizer"] = None
    torch.save(state, state_file)
    core_file = checkpoint_dir(out, 1) / "trainer_state.json"
    core = json.loads(core_file.read_text())
    core["distributed"] = {"engine": "deepspeed", "zero_stage": 3, "world_size": 2}
    core_file.write_text(json.dumps(core))
    write_manifest(checkpoint_dir(out, 1))  # the edited checkpoint counts as complete
    spec = nash_spec(assets, out, None)
    spec.training.steps = 2
    with pytest.raises(NLHFError, match=r"written by DeepSpeed ZeRO-3 on 2 processes"):
        train_nash(spec, out, resume=True)
