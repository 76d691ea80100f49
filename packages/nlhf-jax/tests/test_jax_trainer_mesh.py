"""The jax nash trainer end to end on a 4-device mesh equals the unsharded run
(docs/jax.md, Sharding): same per-step losses and metrics, same parameters after the last
step, same sampled lengths; also with LoRA adapters on a sharded base model. A subprocess
sets ``XLA_FLAGS`` before jax is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from nlhf.testing.tolerances import assert_close

pytestmark = [pytest.mark.jax, pytest.mark.slow]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    from nlhf.spec.models import RunSpec
    from nlhf.training import nash_loop

    assert jax.device_count() == 4, jax.devices()
    results = []
    for doc in json.loads(sys.argv[1]):
        trainer = nash_loop(RunSpec.model_validate(doc), doc["output"]["dir"], backend="jax")
        trainer.run()
        stepper = trainer.stepper
        params = stepper.frozen if doc["policy"].get("lora") else stepper.state  # base weights
        q = params["model"]["layers"][0]["mlp"]["up_proj"]["kernel"]
        results.append({"q_spec": str(getattr(q.sharding, "spec", None)),
                        "q_shards": len(q.addressable_shards)})
    print(json.dumps(results))
    """
)

RULES = [
    ["(q|k|v|gate|up)_proj/kernel", ["fsdp", "tensor"]],
    ["(o|down)_proj/kernel", ["tensor", "fsdp"]],
    ["embed_tokens", [None, "fsdp"]],
]


LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]}


def _doc(ckpt, reward, prompts, out, mesh, lora=None):
    doc = {
        "task": "nash", "seed": 11, "policy": {"model": str(ckpt), "lora": lora},
        "preference": {"name": "bradley_terry_reward", "path": str(reward)},
        "data": {"path": str(prompts), "format": "prompt"},
        "algorithm": {"name": "nash_md_pg", "tau": 0.1, "beta": 0.25},
        "training": {"steps": 2, "batch_size": 4, "lr": 0.05, "max_grad_norm": 1.0,
                     "optimizer": {"name": "sgd"}, "generation": {"max_new_tokens": 4}},
        "output": {"dir": str(out)},
    }  # fmt: skip
    if mesh is not None:
        doc["distributed"] = {"engine": "jax", "mesh": mesh, "rules": RULES}
    return doc


def _run(docs, tmp_path):
    script = tmp_path / "run_mesh.py"
    script.write_text(SCRIPT)
    # the runs share a persistent compilation cache: a program two runs trace alike (same
    # program, shardings and devices, XLA's key) is compiled once
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-compilation-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    out = subprocess.run(
        [sys.executable, str(script), json.dumps(docs)],
        env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


MESHES = {"data_fsdp": {"data": 2, "fsdp": 2, "tensor": 1},
          "fsdp_tensor": {"data": 1, "fsdp": 2, "tensor": 2}}  # fmt: skip


def test_mesh_runs_equal_the_unsharded_run(tiny_ckpts, tmp_path):
    """One subprocess (one jax start-up): the plain run, then one run per mesh."""
    from nlhf.runio import read_metrics
    from safetensors.numpy import load_file

    prompts = tmp_path / "prompts.jsonl"
    texts = ["Fruit?", "Pick one:", "A", "Tell me about cats", "B", "Why?", "Go", "Hi"]
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in texts))
    ckpt, reward = tiny_ckpts["llama"], tiny_ckpts["llama_rm"]
    docs = [_doc(ckpt, reward, prompts, tmp_path / "plain", None)]
    docs += [_doc(ckpt, reward, prompts, tmp_path / name, m) for name, m in MESHES.items()]
    docs += [_doc(ckpt, reward, prompts, tmp_path / "lora_plain", None, LORA),
             _doc(ckpt, reward, prompts, tmp_path / "lora_mesh", MESHES["data_fsdp"], LORA)]  # fmt: skip
    plain, *sharded, lora_plain, lora_mesh = _run(docs, tmp_path)
    assert plain["q_shards"] == 1
    a = read_metrics(tmp_path / "plain")
    pa = load_file(tmp_path / "plain/checkpoints/step-2/model.safetensors")
    start = load_file(ckpt / "model.safetensors")
    assert max(np.abs(pa[k] - start[k]).max() for k in pa) > 1e-3  # the run moved θ
    for name, info in zip(MESHES, sharded, strict=True):
        assert info["q_shards"] == 4 and "fsdp" in info["q_spec"], (name, info)
        b = read_metrics(tmp_path / name)
        assert len(a) == len(b) == 2
        for ra, rb in zip(a, b, strict=True):
            assert ra["len_y"] == rb["len_y"] and ra["len_y_prime"] == rb["len_y_prime"]
            assert 0.0 < ra["preference"] < 1.0 and ra["preference"] != 0.5
            for key in ("loss", "kl", "preference", "score", "grad_norm"):
                assert_close(rb[key], ra[key], what=f"{name}: {key}", scope="model")
        pb = load_file(tmp_path / name / "checkpoints/step-2/model.safetensors")
        for k in pa:
            assert_close(pb[k], pa[k], what=f"{name}: {k}", scope="model")
    # LoRA on the mesh: base weights sharded by the rules, adapters trained the same
    assert lora_plain["q_shards"] == 1 and lora_mesh["q_shards"] == 4
    la, lb = read_metrics(tmp_path / "lora_plain"), read_metrics(tmp_path / "lora_mesh")
    assert la[1]["kl"] > 1e-7  # the adapters moved π away from μ (adapter off)
    for ra, rb in zip(la, lb, strict=True):
        for key in ("loss", "kl", "preference", "grad_norm"):
            assert_close(rb[key], ra[key], what=f"lora: {key}", scope="model")
    aa = load_file(tmp_path / "lora_plain/checkpoints/step-2/adapter_model.safetensors")
    ab = load_file(tmp_path / "lora_mesh/checkpoints/step-2/adapter_model.safetensors")
    assert len(aa) == 12 and max(np.abs(v).max() for k, v in aa.items() if "lora_B" in k) > 0
    for k in aa:
        assert_close(ab[k], aa[k], what=f"lora: {k}", scope="model")
