"""DeepSpeed ZeRO 1/2/3 on 2 CPU processes (issue 6): a tiny Llama trained for 2
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
    root: Path, model: Path, data: Path, out: Path, stage: int | None, optimizer: str = "sgd"
) -> Path:
    raw: dict[str, Any] = {
        "seed": 3,
        "policy": {"model": str(model)},
        "preference": {"name": "oracle", "function": "length"},
        "data": {"path": str(data)},
        "algorithm": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1},
        "training": {
            "steps": 3,
            "batch_size": 4,
            "grad_accum": 2,
            "lr": 1e-1,
            "optimizer": {"name": optimizer},
            "max_grad_norm": 1.0,
            "generation": {"max_new_tokens": 5},
        },
        "output": {"dir": str(out)},
    }
    if stage is not None:
        raw["distributed"] = {"engine": "deepspeed", "zero_stage": stage}
    path = root / f"spec-{stage}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_deepspeed_zero_stages_match_single_process(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "policy", "llama", corpus=CORPUS, vocab_size=300, seed=1)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (tmp_path / "ds_test_plugin.py").write_text(PLUGIN)
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

    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    procs = {}
    for stage in STAGES:
        out = tmp_path / f"zero{stage}"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "nlhf_torch.launch",
            str(_spec(tmp_path, model, data, out, stage)),
            "--plugin",
            "ds_test_plugin:plugin",
        ]
        log = (tmp_path / f"zero{stage}.log").open("w")
        procs[stage] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), out)
    for stage, (proc, _) in procs.items():
        rc = proc.wait(timeout=900)
        assert rc == 0, (tmp_path / f"zero{stage}.log").read_text()[-4000:]

    single_weights = load_file(single / "checkpoints" / "step-3" / "model.safetensors")
    for stage, (_, out) in procs.items():
        records = read_metrics(out)
        losses = [r["loss"] for r in records]
        print(f"zero{stage} losses {losses} single {expected}")
        assert losses == pytest.approx(expected, abs=1e-5), f"stage {stage}"
        assert all(r["world_size"] == 2 for r in records)
        ckpt = out / "checkpoints" / "step-3"
        weights = load_file(ckpt / "model.safetensors")
        assert weights.keys() == single_weights.keys()
        for name, value in single_weights.items():
            assert weights[name].shape == value.shape, name
            torch.testing.assert_close(weights[name], value, atol=1e-5, rtol=1e-4)
        assert (ckpt / "deepspeed").is_dir()
        summary = json.loads((out / "summary.json").read_text())
        assert summary["distributed"]["zero_stage"] == stage

    # the consolidated ZeRO-3 checkpoint reloads in plain transformers
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(procs[3][1] / "checkpoints" / "step-3")
        want = AutoModelForCausalLM.from_pretrained(single / "checkpoints" / "step-3")
        torch.testing.assert_close(got(ids).logits, want(ids).logits, atol=1e-4, rtol=1e-4)
