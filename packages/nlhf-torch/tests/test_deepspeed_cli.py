"""``nlhf run spec.yaml --backend torch --nproc N`` (docs/distributed.md): argument checks, the
command it launches (overrides, output and resume passed on, ``DS_ACCELERATOR=cpu``
without CUDA), and a real 2-process DeepSpeed run through the CLI that matches the
single-process losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from nlhf import cli
from nlhf.errors import SpecError
from nlhf.runio import read_metrics
from nlhf.spec import load_spec
from nlhf.testing.tolerances import assert_close
from nlhf_torch.backend import TorchBackend
from nlhf_torch.tiny import build_tiny_model
from nlhf_torch.trainer import train_nash
from typer.testing import CliRunner

runner = CliRunner()
CORPUS = ["Pick a fruit: apple banana cherry 1 2", "Name a colour: red green blue 1 2"] * 3
PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:", "Hello"]
TABULAR = """\
task: nash
preference: {name: tabular, matrix: [[0.5, 0.9], [0.1, 0.5]]}
reference: {probs: [0.5, 0.5]}
algorithm: {name: nash_md, tau: 0.1, steps: 10}
"""


def _spec(root: Path, model: str, out: Path, distributed: bool = True) -> Path:
    raw: dict[str, Any] = {
        "seed": 5,
        "policy": {"model": model},
        "preference": {"name": "llm_judge", "model": model, "batch_size": 4, "max_length": 64},
        "data": {"path": str(root / "prompts.jsonl")},
        "algorithm": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1},
        "training": {
            "steps": 2,
            "batch_size": 4,
            "lr": 1e-1,
            "optimizer": {"name": "sgd"},
            "generation": {"max_new_tokens": 4},
        },
        "output": {"dir": str(out)},
    }
    if distributed:
        raw["distributed"] = {"engine": "deepspeed", "zero_stage": 2}
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def _app() -> Any:
    return cli.get_app(plugins=False)


def test_nproc_must_be_positive(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "unused", tmp_path / "out")
    result = runner.invoke(_app(), ["run", str(spec), "--nproc", "0"])
    assert result.exit_code == 1
    assert "--nproc must be >= 1, got 0" in result.output


def test_backend_without_distributed_launch(tmp_path: Path) -> None:
    spec = tmp_path / "tab.yaml"
    spec.write_text(TABULAR)
    result = runner.invoke(_app(), ["run", str(spec), "--nproc", "2", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2  # a capability problem of the spec, found before any launch
    assert "--nproc 2: backend 'numpy' has no distributed launch; run with --nproc 1" in (
        result.output
    )


def test_nproc_needs_deepspeed_engine(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "unused", tmp_path / "out", distributed=False)
    result = runner.invoke(_app(), ["run", str(spec), "--backend", "torch", "--nproc", "2"])
    assert result.exit_code == 2
    assert f"{spec}:1:1: distributed.engine: 'none' runs one process; --nproc 2 on backend " in (
        result.output
    )  # no distributed section: located at the spec's start
    assert "distributed: {engine: deepspeed" in result.output


def test_nproc_not_dividing_batch_fails_before_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_launch(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("launched")

    monkeypatch.setattr(subprocess, "run", no_launch)
    spec = _spec(tmp_path, "unused", tmp_path / "out")
    result = runner.invoke(_app(), ["run", str(spec), "-b", "torch", "--nproc", "3"])
    assert result.exit_code == 1
    assert "training.batch_size = 4 is not divisible by world size 3" in result.output


def test_nproc_without_deepspeed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    spec = _spec(tmp_path, "unused", tmp_path / "out")
    result = runner.invoke(_app(), ["run", str(spec), "-b", "torch", "--nproc", "2"])
    assert result.exit_code == 1
    assert "pip install nlhf-torch[deepspeed]" in result.output


def test_launch_command_passes_arguments_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(tmp_path, "unused", tmp_path / "out")
    seen: dict[str, Any] = {}

    def fake_launcher(argv: list[str], env: dict[str, str]) -> int:
        seen.update(argv=argv, env=env)
        return 0

    import nlhf.cli

    monkeypatch.setattr(nlhf.cli, "_run_launcher", fake_launcher)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["run", str(spec), "-b", "torch", "--nproc", "4", "--set", "seed=9"]
    args += ["--set", "training.lr=0.5", "-o", str(tmp_path / "elsewhere"), "--resume"]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert seen["argv"] == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=4",
        "-m",
        "nlhf_torch.launch",
        str(spec),
        "--set",
        "seed=9",
        "--set",
        "training.lr=0.5",
        "--output",
        str(tmp_path / "elsewhere"),
        "--resume",
    ]
    assert seen["env"]["DS_ACCELERATOR"] == "cpu"
    # a failing launch is reported with its exit status
    monkeypatch.setattr(nlhf.cli, "_run_launcher", lambda argv, env: 3)
    result = runner.invoke(_app(), ["run", str(spec), "-b", "torch", "--nproc", "2"])
    assert result.exit_code == 3
    assert "2-process run failed (exit 3)" in result.output


def test_backend_launch_command_rejects_other_tasks(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, "unused", tmp_path / "out"))
    spec.task = "evaluate"
    with pytest.raises(SpecError, match="task: 'evaluate' has no distributed launch"):
        TorchBackend().launch_command(spec, "s.yaml", 2)


@pytest.mark.slow
def test_cli_two_processes_match_single_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nlhf run --nproc 2` (ZeRO-2, a tiny Llama judging itself) gives the losses of the
    in-process single-process run of the same spec. Both decode through the HF path: the
    DeepSpeed-wrapped policy falls back to it, and the fused decode's float32 summation
    order alone moves these ~1e-4 losses by ~1e-8."""
    monkeypatch.setenv("NLHF_FAST_DECODE", "0")
    model = build_tiny_model(tmp_path / "policy", "llama", corpus=CORPUS, vocab_size=300, seed=2)
    spec = _spec(tmp_path, str(model), tmp_path / "unused")
    single = tmp_path / "single"
    raw = yaml.safe_load(spec.read_text())
    del raw["distributed"]
    (tmp_path / "single.yaml").write_text(yaml.safe_dump(raw))
    train_nash(load_spec(tmp_path / "single.yaml"), single)
    expected = [r["loss"] for r in read_metrics(single)]

    out = tmp_path / "two"
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    env["OMP_NUM_THREADS"] = "1"
    nlhf = Path(sys.executable).with_name("nlhf")
    cmd = [str(nlhf), "run", str(spec), "--backend", "torch", "--nproc", "2", "-o", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    records = read_metrics(out)
    print("cli 2 procs", [r["loss"] for r in records], "single", expected)
    assert_close([r["loss"] for r in records], expected, scope="model")
    assert all(r["world_size"] == 2 for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["distributed"] == {"engine": "deepspeed", "zero_stage": 2, "world_size": 2}
    assert (out / "checkpoints" / "step-2" / "deepspeed" / "step-2").is_dir()
    assert f"outputs: {out}" in proc.stdout
