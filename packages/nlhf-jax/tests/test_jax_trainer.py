"""The jax trainer end to end on a tiny Llama with a plugin oracle: outputs, a checkpoint
transformers loads, and resume == uninterrupted run (bit-exact parameters)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from nlhf.runio import read_metrics
from nlhf.spec.models import RunSpec

pytestmark = [pytest.mark.jax, pytest.mark.slow]

KEYS = {"step", "loss", "score", "kl", "kl_estimator", "preference", "len_y", "len_y_prime",
        "tokens_per_s", "step_seconds", "lr", "beta", "tau"}  # fmt: skip


def _spec(ckpt, prompts, out, steps, algo="nash_md_pg"):
    return RunSpec.model_validate({
        "task": "nash", "seed": 3, "policy": {"model": str(ckpt)},
        "preference": {"name": "oracle", "function": "population"},
        "data": {"path": str(prompts), "format": "prompt"},
        "algorithm": {"name": algo, "tau": 0.05},
        "training": {"steps": steps, "batch_size": 2, "lr": 1e-2,
                     "generation": {"max_new_tokens": 3}},
        "output": {"dir": str(out), "checkpoint_every": 1},
    })  # fmt: skip


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("jax_prompts") / "prompts.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in ["Fruit?", "Pick:", "A", "B"])
    )
    return path


def test_train_resume_and_transformers_loadable(tiny_ckpts, prompts, tmp_path):
    from nlhf_jax.trainer import train_nash
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    ckpt = tiny_ckpts["llama"]
    full = train_nash(_spec(ckpt, prompts, tmp_path / "full", 2), tmp_path / "full")
    records = read_metrics(tmp_path / "full")
    assert [r["step"] for r in records] == [1, 2]
    assert set(records[-1]) >= KEYS
    assert records[-1]["kl"] > 0  # the policy moved away from the reference
    assert full["backend"] == "jax" and (tmp_path / "full" / "spec.resolved.yaml").is_file()
    train_nash(_spec(ckpt, prompts, tmp_path / "part", 1), tmp_path / "part")
    train_nash(_spec(ckpt, prompts, tmp_path / "part", 2), tmp_path / "part", resume=True)
    a = load_file(tmp_path / "full/checkpoints/step-2/model.safetensors")
    b = load_file(tmp_path / "part/checkpoints/step-2/model.safetensors")
    init = load_file(ckpt / "model.safetensors")
    assert max(np.abs(a[k] - init[k]).max() for k in a) > 1e-3
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [r["step"] for r in read_metrics(tmp_path / "part")] == [1, 2]
    AutoModelForCausalLM.from_pretrained(tmp_path / "full/checkpoints/step-2")
