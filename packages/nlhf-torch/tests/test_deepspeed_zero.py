"""DeepSpeed ZeRO 1/2/3 on 2 CPU processes (docs/distributed.md): a tiny Llama trained for 2
Nash-MD-PG steps under ``torchrun`` gives the single-process losses and weights.

The optimizer is SGD: under AdamW the runs agree to ~1e-7 in gradients, but Adam's
g / (√v + ε) turns rounding-level gradients (~1e-10, e.g. embedding rows) into visible
updates, so losses drift ~1e-4 by step 2 — numerics, not sharding.

Slow: the three 2-process runs go in parallel (the first DeepSpeed start on a machine
also compiles a shared-memory op, ~100 s, cached under ``~/.cache/torch_extensions``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from nlhf.plugins import build_plugins
from nlhf.runio import read_metrics
from nlhf.spec import load_spec
from nlhf.testing.tolerances import assert_close
from nlhf_torch.checkpoint import load_state
from nlhf_torch.tiny import build_tiny_model
from nlhf_torch.trainer import train_nash
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

pytest.importorskip("deepspeed")

CORPUS = ["Pick a fruit: apple banana cherry", "Name a colour: red green blue"] * 3
PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:", "Hello"]
STAGES = (1, 2, 3)

PLUGIN = textwrap.dedent(
    """
    import math

    import nlhf


    class LengthOracle:
        def __call__(self, prompts, ys, yps):
            return [1 / (1 + math.exp(-(len(a) - len(b)) / 4)) for a, b in zip(ys, yps)]


    class Plugin:
        @nlhf.hookimpl
        def nlhf_register_oracles(self, register):
            register("length", lambda **kw: LengthOracle())


    plugin = Plugin()
    """
)


def _spec(
    root: Path,
    model: Path,
    data: Path,
    out: Path,
    stage: int | None,
    optimizer: str = "sgd",
    *,
    name: str | None = None,
    algorithm: dict[str, Any] | None = None,
    steps: int = 3,
    checkpoint_every: int | None = None,
) -> Path:
    raw: dict[str, Any] = {
        "seed": 3,
        "policy": {"model": str(model)},
        "preference": {"name": "oracle", "function": "length"},
        "data": {"path": str(data)},
        "algorithm": algorithm or {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1},
        "training": {
            "steps": steps,
            "batch_size": 4,
            "grad_accum": 2,
            "lr": 1e-1,
            "optimizer": {"name": optimizer},
            "max_grad_norm": 1.0,
            "generation": {"max_new_tokens": 5},
        },
        "output": {"dir": str(out), "checkpoint_every": checkpoint_every},
    }
    if stage is not None:
        raw["distributed"] = {"engine": "deepspeed", "zero_stage": stage}
    path = root / f"spec-{name or stage}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _assets(root: Path) -> tuple[Path, Path]:
    """A tiny Llama, a prompt file and the oracle plugin module ``ds_test_plugin``."""
    model = build_tiny_model(root / "policy", "llama", corpus=CORPUS, vocab_size=300, seed=1)
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (root / "ds_test_plugin.py").write_text(PLUGIN)
    return model, data


def _launch(root: Path, spec: Path, name: str, *extra: str) -> subprocess.Popen[bytes]:
    """Start ``torchrun --nproc_per_node=2 -m nlhf_torch.launch spec`` (log: name.log)."""
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "nlhf_torch.launch",
        str(spec),
        "--plugin",
        "ds_test_plugin:plugin",
        *extra,
    ]
    log = (root / f"{name}.log").open("w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(root: Path, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for name, proc in procs.items():
        rc = proc.wait(timeout=900)
        assert rc == 0, (root / f"{name}.log").read_text()[-4000:]


@pytest.mark.slow
def test_deepspeed_zero_stages_match_single_process(tmp_path: Path) -> None:
    model, data = _assets(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        import ds_test_plugin  # type: ignore[import-not-found]

        single = tmp_path / "single"
        spec = load_spec(_spec(tmp_path, model, data, single, None))
        train_nash(spec, single, plugins=build_plugins(extra=[ds_test_plugin.plugin]))
    finally:
        sys.path.remove(str(tmp_path))
    expected = [r["loss"] for r in read_metrics(single)]
    assert len(expected) == 3

    outs = {stage: tmp_path / f"zero{stage}" for stage in STAGES}
    _wait(
        tmp_path,
        {
            f"zero{stage}": _launch(
                tmp_path, _spec(tmp_path, model, data, out, stage), f"zero{stage}"
            )
            for stage, out in outs.items()
        },
    )

    single_weights = load_file(single / "checkpoints" / "step-3" / "model.safetensors")
    for stage, out in outs.items():
        records = read_metrics(out)
        losses = [r["loss"] for r in records]
        print(f"zero{stage} losses {losses} single {expected}")
        assert_close(losses, expected, "float32", f"stage {stage}", scope="model")
        assert all(r["world_size"] == 2 for r in records)
        ckpt = out / "checkpoints" / "step-3"
        weights = load_file(ckpt / "model.safetensors")
        assert weights.keys() == single_weights.keys()
        for name, value in single_weights.items():
            assert weights[name].shape == value.shape, name
            assert_close(weights[name], value, "float32", name, scope="model")
        assert (ckpt / "deepspeed").is_dir()
        summary = json.loads((out / "summary.json").read_text())
        assert summary["distributed"]["zero_stage"] == stage

    # the consolidated ZeRO-3 checkpoint reloads in plain transformers
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(outs[3] / "checkpoints" / "step-3")
        want = AutoModelForCausalLM.from_pretrained(single / "checkpoints" / "step-3")
        assert_close(got(ids).logits, want(ids).logits, scope="model")


@pytest.mark.slow
def test_deepspeed_resume_matches_straight_run(tmp_path: Path) -> None:
    """4 steps straight vs the same run resumed from its step-2 checkpoint (a copy of the
    run directory without step 4, so the new processes start from disk only), warmup +
    cosine schedule: ZeRO-2 with Nash-MD-PG and AdamW (its moments must come back from the
    DeepSpeed state); ZeRO-3 with Nash-EMA-PG and SGD, whose straight run also matches the
    single-process run (the EMA of gathered ZeRO-3 partitions is the EMA of the policy)."""
    model, data = _assets(tmp_path)
    cases = {
        2: ({"name": "nash_md_pg", "beta": 0.25, "tau": 0.1}, "adamw"),
        3: ({"name": "nash_ema_pg", "ema_decay": 0.5, "tau": 0.1}, "sgd"),
    }

    def write(stage: int | None, name: str, out: Path) -> Path:
        algo, optimizer = cases[stage or 3]
        path = _spec(tmp_path, model, data, out, stage, optimizer, name=name, algorithm=algo)
        raw = yaml.safe_load(path.read_text())
        raw["training"].update(steps=4, lr_schedule="cosine", warmup_steps=1)
        raw["training"]["lr"] = 1e-2 if optimizer == "adamw" else 1e-1
        raw["output"]["checkpoint_every"] = 2
        path.write_text(yaml.safe_dump(raw))
        return path

    specs = {stage: write(stage, f"full{stage}", tmp_path / f"full{stage}") for stage in cases}
    procs = {f"full{s}": _launch(tmp_path, p, f"full{s}") for s, p in specs.items()}
    single = tmp_path / "single-ema"
    sys.path.insert(0, str(tmp_path))
    try:
        import ds_test_plugin  # type: ignore[import-not-found]

        plugins = build_plugins(extra=[ds_test_plugin.plugin])
        train_nash(load_spec(write(None, "single-ema", single)), single, plugins=plugins)
    finally:
        sys.path.remove(str(tmp_path))
    _wait(tmp_path, procs)
    want = [r["loss"] for r in read_metrics(single)]
    assert_close([r["loss"] for r in read_metrics(tmp_path / "full3")], want, scope="model")
    a = load_file(single / "checkpoints" / "step-4" / "model.safetensors")
    b = load_file(tmp_path / "full3" / "checkpoints" / "step-4" / "model.safetensors")
    for name in a:
        assert_close(b[name], a[name], "float32", name, scope="model")
    ema_a = load_state(single / "checkpoints" / "step-4")["ema"]
    ema_b = load_state(tmp_path / "full3" / "checkpoints" / "step-4")["ema"]
    for name in ema_a:
        assert_close(ema_b[name], ema_a[name], "float32", name, scope="model")

    for stage in cases:
        full, split = tmp_path / f"full{stage}", tmp_path / f"split{stage}"
        shutil.copytree(full, split, ignore=shutil.ignore_patterns("step-4"))
        assert [p.name for p in (split / "checkpoints").iterdir()] == ["step-2"]
        assert (split / "checkpoints" / "step-2" / "deepspeed" / "step-2").is_dir()
    _wait(
        tmp_path,
        {
            f"split{s}": _launch(
                tmp_path, p, f"split{s}", "--output", str(tmp_path / f"split{s}"), "--resume"
            )
            for s, p in specs.items()
        },
    )

    for stage in cases:
        full, split = tmp_path / f"full{stage}", tmp_path / f"split{stage}"
        want, got = read_metrics(full), read_metrics(split)
        assert [r["step"] for r in got] == [1, 2, 3, 4]
        print(
            f"zero{stage} straight {[r['loss'] for r in want]} resumed {[r['loss'] for r in got]}"
        )
        for a, b in zip(want, got, strict=True):
            # resume is bit-exact: same engine, same restored state and generator
            assert (b["loss"], b["lr"]) == (a["loss"], a["lr"]), (stage, a["step"])
        assert json.loads((split / "summary.json").read_text())["resumed_from"] == 2
        a = load_file(full / "checkpoints" / "step-4" / "model.safetensors")
        b = load_file(split / "checkpoints" / "step-4" / "model.safetensors")
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(b[name], a[name]), (stage, name)
        if stage == 3:  # the EMA opponent (gathered from ZeRO-3 partitions) resumes too
            ema_a = load_state(full / "checkpoints" / "step-4")["ema"]
            ema_b = load_state(split / "checkpoints" / "step-4")["ema"]
            for name in ema_a:
                assert torch.equal(ema_b[name], ema_a[name]), name
