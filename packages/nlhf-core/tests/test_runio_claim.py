"""``nlhf run`` owns its output directory (docs/resume.md): a second run into a directory
holding another run's outputs is refused untouched; ``--overwrite`` deletes them first;
``--resume`` checks the spec against the run before anything is written; leftovers of a
killed run are cleaned; every output gets the umask's mode. Driven through the CLI with the
NumPy tabular backend (seconds), plus a recording backend for an LLM spec."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import nlhf
import pytest
import yaml
from nlhf import cli
from nlhf import plugins as plugins_mod
from nlhf.runio import (
    MANIFEST,
    atomic_directory,
    checkpoint_dir,
    claim_output_dir,
    latest_checkpoint,
    read_metrics,
    write_checkpoint_meta,
    write_resolved_spec,
)
from nlhf.spec import load_spec
from typer.testing import CliRunner

TABULAR = """\
spec_version: 1
task: nash
preference: {name: tabular, game: dice}
reference: {probs: [0.6, 0.3, 0.1]}
algorithm: {name: nash_md, tau: 0.1, steps: 20}
"""
LLM = """\
spec_version: 1
task: nash
policy: {model: /nonexistent/policy}
data: {path: /nonexistent/prompts.jsonl}
preference: {name: pairwise_model, path: /nonexistent/pm}
algorithm: {name: nash_md_pg, tau: 0.1}
training: {steps: 30, batch_size: 2}
"""

runner = CliRunner()


def _nlhf(*args: str) -> Any:
    result = runner.invoke(cli.get_app(plugins=False), list(args))
    assert "Traceback" not in result.output
    return result


def _snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every path under ``root`` with its bytes (files), mtime and mode."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() else b""
        out[path.relative_to(root).as_posix()] = (data, st.st_mtime_ns, st.st_mode)
    return out


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "dice.yaml"
    path.write_text(TABULAR)
    return path


def _seed_checkpoints(out: Path, spec_path: Path, steps: tuple[int, ...]) -> None:
    """Checkpoints as a model run writes them (manifest + resume record)."""
    spec = load_spec(spec_path)
    for step in steps:
        with atomic_directory(checkpoint_dir(out, step)) as tmp:
            (tmp / "model.safetensors").write_bytes(bytes([step]) * 64)
            write_checkpoint_meta(tmp, spec, step)


def test_second_run_is_refused_and_nothing_is_modified(spec_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _nlhf("run", str(spec_file), "-o", str(out)).exit_code == 0
    _seed_checkpoints(out, spec_file, (10, 30))
    before = _snapshot(out)
    dir_mtime = out.stat().st_mtime_ns

    result = _nlhf("run", str(spec_file), "-o", str(out), "--set", "algorithm.tau=0.2")

    assert result.exit_code == 2, result.output
    message = result.output
    for name in ("spec.resolved.yaml", "metrics.jsonl", "summary.json"):
        assert name in message
    assert "checkpoints/step-10" in message and "checkpoints/step-30" in message
    assert "--resume" in message and "--overwrite" in message
    assert _snapshot(out) == before
    assert out.stat().st_mtime_ns == dir_mtime


def test_overwrite_removes_every_old_output_and_checkpoint(spec_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _nlhf("run", str(spec_file), "-o", str(out)).exit_code == 0
    _seed_checkpoints(out, spec_file, (10, 30))
    (out / "notes.txt").write_text("mine")  # not an nlhf output: kept
    result = _nlhf(
        "run",
        str(spec_file),
        "-o",
        str(out),
        "--overwrite",
        "--set",
        "algorithm.tau=0.2",
        "--set",
        "algorithm.steps=8",
    )
    assert result.exit_code == 0, result.output
    assert latest_checkpoint(out) is None and not (out / "checkpoints").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert yaml.safe_load((out / "spec.resolved.yaml").read_text())["algorithm"]["tau"] == 0.2
    steps = [r["step"] for r in read_metrics(out)]
    assert steps[0] == 0 and steps[-1] == 8 and steps == sorted(steps)  # the new run's only
    assert json.loads((out / "summary.json").read_text())["steps"] == 8
    # and nothing is left that a later --resume could pick up
    again = _nlhf("run", str(spec_file), "-o", str(out), "--resume")
    assert again.exit_code == 2 and "algorithm.tau: 0.2 → 0.1" in again.output


def test_resume_with_changed_fields_refuses_naming_each(spec_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _nlhf("run", str(spec_file), "-o", str(out)).exit_code == 0
    before = _snapshot(out)
    result = _nlhf(
        "run",
        str(spec_file),
        "-o",
        str(out),
        "--resume",
        "--set",
        "algorithm.tau=0.2",
        "--set",
        "seed=3",
        "--set",
        "algorithm.steps=40",
    )
    assert result.exit_code == 2, result.output
    assert "2 fields that cannot change on resume" in result.output
    assert "algorithm.tau: 0.1 → 0.2" in result.output
    assert "seed: 0 → 3" in result.output
    assert "algorithm.steps" not in result.output.split("only ")[0]  # may change: not listed
    assert _snapshot(out) == before


def test_resume_allows_run_length_and_cadence(spec_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _nlhf("run", str(spec_file), "-o", str(out)).exit_code == 0
    result = _nlhf(
        "run",
        str(spec_file),
        "-o",
        str(out),
        "--resume",
        "--set",
        "algorithm.steps=40",
        "--set",
        "algorithm.log_every=5",
        "--set",
        "output.plots=false",
    )
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_metrics(out)] == [0, 5, 10, 15, 20, 25, 30, 35, 40]


def test_resume_and_overwrite_exclude_each_other(spec_file: Path, tmp_path: Path) -> None:
    result = _nlhf("run", str(spec_file), "-o", str(tmp_path / "o"), "--resume", "--overwrite")
    assert result.exit_code == 2 and "exclude each other" in result.output
    assert not (tmp_path / "o").exists()


def test_a_run_holding_the_directory_keeps_a_second_one_out(
    spec_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with claim_output_dir(load_spec(spec_file), out):
        result = _nlhf("run", str(spec_file), "-o", str(out))
    assert result.exit_code == 2 and "in use by another nlhf run" in result.output
    assert list(out.iterdir()) == []
    assert _nlhf("run", str(spec_file), "-o", str(out)).exit_code == 0  # released


def test_output_dir_that_is_a_file_is_a_clear_error(spec_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("x")
    result = _nlhf("run", str(spec_file), "-o", str(target))
    assert result.exit_code != 0 and "is a file" in result.output
    assert target.read_text() == "x"


def test_leftovers_of_a_killed_run_are_cleaned_at_start(spec_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _nlhf("run", str(spec_file), "-o", str(out)).exit_code == 0
    _seed_checkpoints(out, spec_file, (10, 20))
    ckpts = out / "checkpoints"
    (ckpts / ".step-30.tmp-k1ll3d").mkdir()  # a checkpoint being written
    (ckpts / ".step-30.tmp-k1ll3d" / "model.safetensors").write_bytes(b"half")
    (ckpts / ".step-10.old").mkdir()  # replaced: step-10 exists
    (out / ".summary.json.abc123.tmp").write_text("{")  # a file being written
    os.replace(ckpts / "step-20", ckpts / ".step-20.old")  # killed between the two renames

    result = _nlhf("run", str(spec_file), "-o", str(out), "--resume")

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-10", "step-20"]
    assert (ckpts / "step-20" / "model.safetensors").read_bytes() == bytes([20]) * 64
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077], ids=lambda m: f"umask-{m:03o}")
def test_every_output_gets_the_umask_mode(spec_file: Path, tmp_path: Path, umask: int) -> None:
    out = tmp_path / "out"
    old = os.umask(umask)
    try:
        assert _nlhf("run", str(spec_file), "-o", str(out)).exit_code == 0
        _seed_checkpoints(out, spec_file, (5,))
        assert _nlhf("run", str(spec_file), "-o", str(out), "--resume").exit_code == 0
    finally:
        os.umask(old)
    paths = [out, *out.rglob("*")]
    assert {p.name for p in paths} >= {"spec.resolved.yaml", "summary.json", MANIFEST}
    for path in paths:
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == want, (path, oct(path.stat().st_mode))


# ------------------------------------------------------------- an LLM spec, recorded
class Recorder:
    """A backend that accepts LLM specs and records its calls (no framework needed)."""

    __name__ = "runio_recorder"
    name = "rec"
    kernels = None

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []

    @nlhf.hookimpl
    def nlhf_register_backends(self, register: Any) -> None:
        register("rec", lambda: self, description="records calls")

    def train(self, spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
        self.calls.append((spec.training.steps, resume))
        write_resolved_spec(output, spec)  # like every backend
        return {}

    def launch_command(self, spec: Any, path: Path, nproc: int, **kw: Any) -> Any:
        self.calls.append((nproc, kw["resume"]))
        return [sys.executable, "-c", "pass"], {}


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    monkeypatch.setenv("NLHF_PLUGINS", "")
    rec = Recorder()
    built = plugins_mod.build_plugins(extra=[rec])
    monkeypatch.setattr(plugins_mod, "get_plugins", lambda: built)
    return rec


def test_a_checkpoint_past_training_steps_is_refused(recorder: Recorder, tmp_path: Path) -> None:
    """The step-30 checkpoint resumed with training.steps = 20 would have been rewritten as
    step-20 with the step-30 weights."""
    spec_path, out = tmp_path / "llm.yaml", tmp_path / "out"
    spec_path.write_text(LLM)
    _seed_checkpoints(out, spec_path, (10, 30))
    before = _snapshot(out)
    args = ["run", str(spec_path), "-b", "rec", "-o", str(out), "--resume"]

    result = _nlhf(*args, "--set", "training.steps=20")
    assert result.exit_code == 2, result.output
    assert "at step 30, past training.steps = 20" in result.output
    assert "training.steps >= 30" in result.output
    assert recorder.calls == [] and _snapshot(out) == before

    assert _nlhf(*args, "--set", "training.steps=40").exit_code == 0  # steps may grow
    assert _nlhf(*args, "--set", "training.log_every=7").exit_code == 0  # at the end: fine
    changed = _nlhf(*args, "--set", "training.lr=0.001", "--set", "algorithm.tau=0.5")
    assert changed.exit_code == 2
    assert "training.lr: 1e-05 → 0.001" in changed.output
    assert "algorithm.tau: 0.1 → 0.5" in changed.output
    assert recorder.calls == [(40, True), (30, True)]


def test_launch_path_is_claimed_by_the_parent_once(recorder: Recorder, tmp_path: Path) -> None:
    spec_path, out = tmp_path / "llm.yaml", tmp_path / "out"
    spec_path.write_text(LLM)
    _seed_checkpoints(out, spec_path, (30,))
    args = ["run", str(spec_path), "-b", "rec", "-o", str(out), "--nproc", "2"]
    refused = _nlhf(*args)
    assert refused.exit_code == 2 and "checkpoints/step-30" in refused.output
    assert recorder.calls == []  # nothing launched
    assert _nlhf(*args, "--overwrite").exit_code == 0
    assert recorder.calls == [(2, False)] and latest_checkpoint(out) is None


def test_evaluate_runs_own_their_directory_too(recorder: Recorder, tmp_path: Path) -> None:
    """A second evaluation needs --resume (any spec change is fine: the caches are keyed by
    content) or --overwrite; an evaluation cannot write over a training run's outputs."""
    spec, out = tmp_path / "e.yaml", tmp_path / "o"
    spec.write_text(
        LLM.replace("task: nash", "task: evaluate") + "eval: {policies: [reference, a]}\n"
    )
    args = ["run", str(spec), "-b", "rec", "-o", str(out)]
    assert _nlhf(*args).exit_code == 0
    assert _nlhf(*args).exit_code == 2
    more = ["--set", "eval.policies=[reference, a, b]", "--set", "seed=5"]
    assert _nlhf(*args, "--resume", *more).exit_code == 0
    assert yaml.safe_load((out / "spec.resolved.yaml").read_text())["eval"]["policies"][-1] == "b"

    trained = tmp_path / "trained"
    (tmp_path / "nash.yaml").write_text(LLM)
    assert _nlhf("run", str(tmp_path / "nash.yaml"), "-b", "rec", "-o", str(trained)).exit_code == 0
    refused = _nlhf("run", str(spec), "-b", "rec", "-o", str(trained), "--resume")
    assert refused.exit_code == 2 and "belongs to a `task: nash` run" in refused.output


def test_nlhf_eval_reuses_its_directory_but_not_a_training_run(
    spec_file: Path, tmp_path: Path
) -> None:
    spec, out = tmp_path / "e.yaml", tmp_path / "o"
    spec.write_text(
        "task: evaluate\npreference: {name: tabular, game: dice}\n"
        "eval: {policies: [reference, maximal_lottery]}\noutput: {plots: false}\n"
    )
    assert _nlhf("eval", str(spec), "-o", str(out)).exit_code == 0
    assert _nlhf("eval", str(spec), "-o", str(out)).exit_code == 0  # an evaluation: reused
    trained = tmp_path / "trained"
    assert _nlhf("run", str(spec_file), "-o", str(trained)).exit_code == 0
    before = _snapshot(trained)
    refused = _nlhf("eval", str(spec), "-o", str(trained))
    assert refused.exit_code == 2, refused.output
    assert "belongs to a `task: nash` run and this spec is `task: evaluate`" in refused.output
    assert _snapshot(trained) == before
