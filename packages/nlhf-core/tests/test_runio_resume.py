"""Checkpoint safety (docs/resume.md): a manifest closes every checkpoint; a truncated,
corrupt or half-deleted newest checkpoint falls back to the previous complete one with a
warning; files are fsynced before the rename; the resume record names each changed field."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from nlhf import runio
from nlhf.errors import RunDirError
from nlhf.runio import (
    MANIFEST,
    MUTABLE_ON_RESUME,
    atomic_directory,
    check_resume,
    checkpoint_dir,
    checkpoint_problem,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint_record,
    resume_checkpoint,
    resume_fields,
    resume_hash,
    resume_record,
)
from nlhf.spec.models import RunSpec

LLM: dict[str, Any] = {
    "task": "nash",
    "policy": {"model": "/nonexistent/policy"},
    "data": {"path": "/nonexistent/prompts.jsonl"},
    "preference": {"name": "pairwise_model", "path": "/nonexistent/pm"},
    "algorithm": {"name": "nash_md_pg", "tau": 0.1},
    "training": {"steps": 30, "batch_size": 2},
}


def _spec(**sections: Any) -> RunSpec:
    data = json.loads(json.dumps(LLM))
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return RunSpec.model_validate(data)


def _save(output: Path, step: int, payload: bytes) -> Path:
    with atomic_directory(checkpoint_dir(output, step)) as tmp:
        (tmp / "model.safetensors").write_bytes(payload)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "state.json").write_text(json.dumps({"step": step}))
    return checkpoint_dir(output, step)


@pytest.fixture(autouse=True)
def _fresh_memo() -> None:
    runio._verified.clear()
    runio._warned.clear()


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path: Path) -> None:
    import hashlib

    path = _save(tmp_path, 3, b"abc" * 100)
    manifest = json.loads((path / MANIFEST).read_text())["files"]
    assert sorted(manifest) == ["model.safetensors", "sub/state.json"]
    assert manifest["model.safetensors"] == {
        "size": 300,
        "sha256": hashlib.sha256(b"abc" * 100).hexdigest(),
    }
    assert checkpoint_problem(path, digests=True) is None


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: (p / "model.safetensors").write_bytes(b"abc"), "has 3 bytes, 300 were"),
        (lambda p: (p / "model.safetensors").write_bytes(b"abd" * 100), "sha256 mismatch"),
        (lambda p: (p / "sub" / "state.json").unlink(), "sub/state.json is missing"),
        (lambda p: (p / MANIFEST).write_text("{trunc"), "manifest .complete.json is unreadable"),
        (lambda p: (p / MANIFEST).write_text('{"files": {"a": 3}}'), "is unreadable (TypeError"),
    ],
    ids=["truncated", "corrupt", "missing", "bad-manifest", "bad-entry"],
)
def test_damaged_newest_checkpoint_falls_back_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Any, reason: str
) -> None:
    for step in (10, 20, 30):
        _save(tmp_path, step, b"abc" * 100)
    damage(checkpoint_dir(tmp_path, 30))
    assert latest_checkpoint(tmp_path) == (20, checkpoint_dir(tmp_path, 20))
    err = capsys.readouterr().err
    assert err.startswith("warning: checkpoint ") and "step-30 is incomplete" in err
    assert reason in err and "using step-20" in err
    # pruning counts complete checkpoints only (sizes; the corrupt one has the right size)
    listed = [s for s, _ in list_checkpoints(tmp_path)]
    assert listed == ([10, 20, 30] if reason == "sha256 mismatch" else [10, 20])


def test_no_complete_checkpoint_left_is_none_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _save(tmp_path, 5, b"x" * 10)
    (path / "model.safetensors").write_bytes(b"")
    assert latest_checkpoint(tmp_path) is None
    assert "no complete checkpoint is left" in capsys.readouterr().err


def test_checkpoint_without_manifest_is_trusted(tmp_path: Path) -> None:
    """Checkpoints of nlhf versions before manifests were renamed into place complete."""
    legacy = checkpoint_dir(tmp_path, 7)
    legacy.mkdir(parents=True)
    (legacy / "model.safetensors").write_bytes(b"w")
    assert latest_checkpoint(tmp_path) == (7, legacy)


def test_every_file_and_directory_is_fsynced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_replace = os.replace
    monkeypatch.setattr(runio, "_fsync", lambda p: events.append(("fsync", Path(p).name)))
    monkeypatch.setattr(
        runio.os,
        "replace",
        lambda a, b: (events.append(("rename", Path(b).name)), real_replace(a, b)),
    )
    _save(tmp_path, 4, b"w")
    rename = events.index(("rename", "step-4"))
    synced = {name for kind, name in events[:rename] if kind == "fsync"}
    assert {"model.safetensors", "state.json", "sub", MANIFEST} <= synced
    assert any(n.startswith(".step-4.tmp-") for n in synced)  # the directory itself
    assert events[rename + 1 :] == [("fsync", "checkpoints")]  # then its parent


# --------------------------------------------------------------------- resume fields
def test_resume_fields_drop_exactly_the_fields_that_may_change() -> None:
    tabular = RunSpec.model_validate(
        {
            "preference": {"name": "tabular", "game": "dice"},
            "reference": {"probs": [0.6, 0.3, 0.1]},
            "algorithm": {"name": "nash_md", "tau": 0.1, "steps": 5, "log_every": 1},
        }
    )
    for spec in (_spec(), tabular):
        full, fields = spec.model_dump(mode="json"), resume_fields(spec)
        for dotted in MUTABLE_ON_RESUME:
            section, leaf = dotted.split(".")
            assert leaf not in fields[section], dotted
        kept = {f"{k}.{leaf}" for k, v in full.items() if isinstance(v, dict) for leaf in v}
        dropped = kept - {
            f"{k}.{leaf}" for k, v in fields.items() if isinstance(v, dict) for leaf in v
        }
        assert dropped <= set(MUTABLE_ON_RESUME)
        assert {k for k in full if not isinstance(full[k], dict)} <= set(fields)
    assert {f"algorithm.{k}" for k in ("steps", "log_every")} <= set(MUTABLE_ON_RESUME)
    assert resume_fields(_spec())["training"]["lr"] == 1e-5
    assert resume_fields(tabular)["algorithm"]["tau"] == 0.1


def test_resume_hash_is_stable_and_sensitive() -> None:
    a = resume_hash(resume_fields(_spec()))
    reordered = RunSpec.model_validate(dict(reversed(list(LLM.items()))))
    assert resume_hash(resume_fields(reordered)) == a  # key order does not matter
    assert resume_hash(resume_fields(_spec(training={"steps": 99, "log_every": 3}))) == a
    assert resume_hash(resume_fields(_spec(seed=1))) != a
    assert a.startswith("sha256:") and len(a) == len("sha256:") + 64


def test_check_resume_names_each_differing_field_old_to_new() -> None:
    recorded = resume_record(_spec())
    check_resume(_spec(training={"steps": 50, "log_every": 5}), recorded, 30)  # allowed
    new = _spec(
        training={"lr": 3e-4, "batch_size": 4},
        policy={"model": "/other", "dtype": "bfloat16"},
    )
    with pytest.raises(RunDirError) as info:
        check_resume(new, recorded, 30, where="checkpoint X")
    text = str(info.value)
    assert "differs from checkpoint X in 4 fields" in text
    for line in (
        "training.lr: 1e-05 → 0.0003",
        "training.batch_size: 2 → 4",
        'policy.model: "/nonexistent/policy" → "/other"',
        'policy.dtype: "float32" → "bfloat16"',
    ):
        assert line in text
    with pytest.raises(RunDirError, match=r"at step 30, past training.steps = 29"):
        check_resume(_spec(training={"steps": 29}), recorded, 30)


def test_a_section_switched_off_is_reported_at_the_section() -> None:
    recorded = resume_record(_spec(policy={"lora": {"r": 4}}))
    with pytest.raises(RunDirError) as info:
        check_resume(_spec(), recorded, 1)
    assert "policy.lora: {" in str(info.value) and "→ null" in str(info.value)


def test_fields_unknown_to_the_record_are_not_compared() -> None:
    """A field added by a newer nlhf is absent from an older record: not a difference."""
    recorded = resume_record(_spec())
    del recorded["fields"]["training"]["max_grad_norm"]
    recorded["hash"] = "sha256:old"
    check_resume(_spec(), recorded, 30)


def test_evaluate_compares_only_the_task() -> None:
    assert resume_fields({"task": "evaluate", "seed": 3, "eval": {"policies": ["a"]}}) == {
        "task": "evaluate"
    }


def test_record_is_read_from_resume_json_or_the_nash_trainer_state(tmp_path: Path) -> None:
    spec = _spec()
    with atomic_directory(checkpoint_dir(tmp_path, 30)) as tmp:
        runio.write_checkpoint_meta(tmp, spec, 30)
    assert read_checkpoint_record(checkpoint_dir(tmp_path, 30)) == resume_record(spec)
    other = tmp_path / "nash"
    with atomic_directory(checkpoint_dir(other, 2)) as tmp:  # the Nash loop's state file
        state = {"step": 2, "spec": spec.model_dump(mode="json")}
        (tmp / "trainer_state.json").write_text(json.dumps(state))
    assert read_checkpoint_record(checkpoint_dir(other, 2)) == {"fields": resume_fields(spec)}
    with pytest.raises(RunDirError, match=re.escape("algorithm.tau: 0.1 → 0.3")):
        resume_checkpoint(_spec(algorithm={"tau": 0.3}), other)
    assert resume_checkpoint(spec, other) == (2, checkpoint_dir(other, 2))


def test_checkpoint_without_record_is_checked_against_spec_resolved_yaml(tmp_path: Path) -> None:
    runio.write_resolved_spec(tmp_path, _spec())
    _save(tmp_path, 30, b"w")  # no resume.json, no trainer_state.json
    with pytest.raises(RunDirError, match=re.escape("seed: 0 → 4")):
        resume_checkpoint(_spec(seed=4), tmp_path)
    with pytest.raises(RunDirError, match=re.escape("past training.steps = 10")):
        resume_checkpoint(_spec(training={"steps": 10}), tmp_path)
    assert resume_checkpoint(_spec(), tmp_path) == (30, checkpoint_dir(tmp_path, 30))


def test_docs_list_exactly_the_fields_that_may_change() -> None:
    text = (Path(__file__).parents[3] / "docs" / "resume.md").read_text(encoding="utf-8")
    table = text.split("unless the field is one of:")[1].split("\n\n")[1]
    documented = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", table))
    assert documented == set(MUTABLE_ON_RESUME)


@pytest.mark.parametrize("state", ['{"step": 4}', "[1, 2]"], ids=["no-spec", "not-a-mapping"])
def test_trainer_state_without_a_spec_is_no_record(tmp_path: Path, state: str) -> None:
    with atomic_directory(checkpoint_dir(tmp_path, 4)) as tmp:
        (tmp / "trainer_state.json").write_text(state)
    assert read_checkpoint_record(checkpoint_dir(tmp_path, 4)) is None
