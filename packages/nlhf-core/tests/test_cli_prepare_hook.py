"""``nlhf run`` calls the ``nlhf_prepare_spec`` hook once, in its own process, after the
spec is loaded and before the backend trains or a distributed launch starts; ``validate``
never calls it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nlhf
import pytest
from nlhf import cli
from nlhf import plugins as plugins_mod
from typer.testing import CliRunner

SPEC = """\
spec_version: 1
task: nash
preference: {name: tabular, matrix: [[0.5, 0.9], [0.1, 0.5]]}
reference: {probs: [0.5, 0.5]}
algorithm: {name: nash_md, tau: 0.1, steps: 10}
"""

runner = CliRunner()


class Recorder:
    """A backend and a preparing plugin writing one event log."""

    __name__ = "prepare_recorder"

    def __init__(self, marker: Path) -> None:
        self.events: list[str] = []
        self.marker = marker

    @nlhf.hookimpl
    def nlhf_register_backends(self, register: Any) -> None:
        register("rec", lambda: self, description="records calls")

    @nlhf.hookimpl
    def nlhf_prepare_spec(self, spec: Any) -> None:
        self.events.append(f"prepare steps={spec.algorithm.steps}")
        self.marker.write_text("prepared")

    # the backend
    name = "rec"
    kernels = None

    def train(self, spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
        self.events.append("train" if self.marker.exists() else "train without files")
        return {"steps": spec.algorithm.steps}

    def launch_command(
        self, spec: Any, path: Path, nproc: int, **kwargs: Any
    ) -> tuple[list[str], dict[str, str]]:
        self.events.append(f"launch_command nproc={nproc}")
        # the launched process fails unless the parent prepared the files first
        check = f"import pathlib, sys; sys.exit(0 if pathlib.Path({str(self.marker)!r}).exists() else 3)"
        return [sys.executable, "-c", check], {}


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    monkeypatch.setenv("NLHF_PLUGINS", "")  # no installed entry points: deterministic
    rec = Recorder(tmp_path / "prepared.txt")
    built = plugins_mod.build_plugins(extra=[rec])
    monkeypatch.setattr(plugins_mod, "get_plugins", lambda: built)
    (tmp_path / "spec.yaml").write_text(SPEC)
    return rec


def test_run_prepares_once_before_training(recorder: Recorder, tmp_path: Path) -> None:
    args = ["run", str(tmp_path / "spec.yaml"), "-b", "rec", "-o", str(tmp_path / "out")]
    result = runner.invoke(cli.get_app(plugins=False), [*args, "--set", "algorithm.steps=3"])
    assert result.exit_code == 0, result.output
    assert recorder.events == ["prepare steps=3", "train"]  # sees the overrides, then trains


def test_run_prepares_in_the_parent_before_a_launch(recorder: Recorder, tmp_path: Path) -> None:
    args = ["run", str(tmp_path / "spec.yaml"), "-b", "rec", "--nproc", "2", "-o", str(tmp_path)]
    result = runner.invoke(cli.get_app(plugins=False), args)
    assert result.exit_code == 0, result.output
    assert recorder.events == ["launch_command nproc=2", "prepare steps=10"]


def test_validate_does_not_prepare(recorder: Recorder, tmp_path: Path) -> None:
    result = runner.invoke(cli.get_app(plugins=False), ["validate", str(tmp_path / "spec.yaml")])
    assert result.exit_code == 0, result.output
    assert recorder.events == []
    assert not recorder.marker.exists()
