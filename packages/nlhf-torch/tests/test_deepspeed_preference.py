"""``task: preference_model`` under DeepSpeed (docs/distributed.md): the rank shares of a step weigh
every pair as the single-process mean does, and 2 CPU processes under ZeRO-2 and ZeRO-3
give the single-process losses, gradient norms, held-out metrics and weights (including
the short last batch of an epoch)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from nlhf.runio import read_metrics
from nlhf.spec import load_spec
from nlhf.testing.tolerances import assert_close
from nlhf_torch.preference.train import _shares, train_preference_model
from nlhf_torch.tiny import build_tiny_model
from safetensors.torch import load_file

WORDS = ["pear", "plum", "fig", "kiwi", "lime", "date", "grape", "melon"]
TEMPLATE = "Q: {prompt} A1: {response_1} A2: {response_2} Better:"


@pytest.mark.parametrize(("size", "parts", "world"), [(8, 2, 2), (5, 2, 2), (3, 2, 2), (7, 1, 3)])
def test_shares_weigh_pairs_like_the_global_mean(size: int, parts: int, world: int) -> None:
    """Σ over ranks and micro-steps of w/|share| per pair, averaged over ranks, is 1/|idx|
    (the single-process mean); every rank runs ``parts`` micro-steps."""
    idx = list(range(100, 100 + size))
    per_pair: dict[int, float] = defaultdict(float)
    for rank in range(world):
        shares = _shares(idx, parts, world, rank)
        assert len(shares) == parts
        for share, weight in shares:
            assert share
            for i in share:
                per_pair[i] += weight / len(share) / world
    assert sorted(per_pair) == idx
    assert_close(list(per_pair.values()), [1 / size] * len(per_pair), "float64", "weights")


def _rows(n: int) -> list[dict[str, str]]:
    rng = random.Random(0)

    def response(keyword: bool) -> str:
        words = [rng.choice(WORDS) for _ in range(3)]
        if keyword:
            words[rng.randrange(3)] = "apple"
        return " ".join(words)

    return [
        {
            "prompt": f"pick {rng.choice(WORDS)}",
            "chosen": response(True),
            "rejected": response(False),
        }
        for _ in range(n)
    ]


@pytest.mark.slow
def test_preference_model_deepspeed_matches_single_process(tmp_path: Path) -> None:
    rows = _rows(36)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = [TEMPLATE + " 1", TEMPLATE + " 2"] + [" ".join(r.values()) for r in rows[:10]]
    model = build_tiny_model(tmp_path / "lm", "llama", corpus=corpus, vocab_size=300, seed=4)
    raw: dict[str, Any] = {
        "task": "preference_model",
        "seed": 1,
        "policy": {"model": str(model)},
        "data": {"path": str(data), "eval_fraction": 0.2, "max_length": 64},
        "preference_training": {"kind": "pairwise", "head": "lm", "template": TEMPLATE},
        "training": {
            "steps": 4,
            "batch_size": 8,
            "grad_accum": 2,
            "lr": 0.05,
            "optimizer": {"name": "sgd"},
            "max_grad_norm": 1.0,
            "epochs": 10,
        },
    }

    def write(name: str, stage: int | None) -> Path:
        spec = {**raw, "output": {"dir": str(tmp_path / name)}}
        if stage is not None:
            spec["distributed"] = {"engine": "deepspeed", "zero_stage": stage}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    procs = {}
    for stage in (2, 3):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc_per_node=2", "-m", "nlhf_torch.launch", str(write(f"z{stage}", stage))]
        log = (tmp_path / f"z{stage}.log").open("w")
        procs[stage] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    single = train_preference_model(load_spec(write("single", None)), tmp_path / "single")
    assert single["data"]["train_pairs"] % 8 != 0  # a short last batch is part of the run
    want = read_metrics(tmp_path / "single")
    want_w = load_file(tmp_path / "single" / "model" / "model.safetensors")
    for stage, proc in procs.items():
        assert proc.wait(timeout=600) == 0, (tmp_path / f"z{stage}.log").read_text()[-4000:]
        out = tmp_path / f"z{stage}"
        got = read_metrics(out)
        assert [r["step"] for r in got] == [r["step"] for r in want]
        print(f"zero{stage}", [r.get("loss") for r in got], "single", [r.get("loss") for r in want])
        for a, b in zip(want, got, strict=True):
            for key in ("loss", "grad_norm", "eval/log_loss", "eval/accuracy"):
                if key in a:
                    assert_close(
                        b[key], a[key], "float32", str((stage, a["step"], key)), scope="model"
                    )
        got_w = load_file(out / "model" / "model.safetensors")
        assert got_w.keys() == want_w.keys()
        for name, value in want_w.items():
            assert_close(got_w[name], value, "float32", name, scope="model")
        summary = json.loads((out / "summary.json").read_text())
        assert summary["distributed"] == {
            "engine": "deepspeed",
            "zero_stage": stage,
            "world_size": 2,
        }
        assert (out / "checkpoints" / "step-4" / "deepspeed" / "step-4").is_dir()
        assert (out / "checkpoints" / "step-4" / "nlhf_preference.json").is_file()
