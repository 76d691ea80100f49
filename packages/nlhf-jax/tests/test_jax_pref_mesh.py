"""``task: preference_model`` on a jax device mesh equals the single-device run, for real on
4 CPU devices (a subprocess sets XLA_FLAGS before jax is imported): per-step
losses, held-out metrics and final parameters within 1e-5, parameters and batches really
sharded, and a sharded run resumed from its checkpoint continues like the uninterrupted
unsharded one. The oracle is the unsharded run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from nlhf.runio import read_metrics
from nlhf.testing.tolerances import assert_close

pytestmark = pytest.mark.jax

TEMPLATE = "Q: {prompt} A1: {response_1} A2: {response_2} Better:"
FSDP_RULES = [
    ["(q|k|v|gate|up)_proj/kernel", ["fsdp", None]],
    ["(o|down)_proj/kernel", [None, "fsdp"]],
    ["embed_tokens", [None, "fsdp"]],
]
TENSOR_RULES = [
    ["(q|k|v|gate|up)_proj/kernel", [None, "tensor"]],
    ["(o|down)_proj/kernel", ["tensor", None]],
    ["lm_head/kernel", [None, "tensor"]],
]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    import nlhf_jax.sharding as sharding
    import nlhf_jax.preference.train as train
    from nlhf.spec.models import RunSpec

    assert jax.device_count() == 4, jax.devices()
    runs = json.loads(open(sys.argv[1]).read())
    seen = {"batch_specs": set(), "q_kernel": set()}
    shard_batch = sharding.shard_batch

    def axes(sharding):  # the PartitionSpec's axes, trailing Nones dropped; None: one device
        if not hasattr(sharding, "spec"):
            return "None"
        spec = list(sharding.spec)
        while spec and spec[-1] is None:
            spec.pop()
        return str(tuple(spec))

    def spy_batch(mesh, *arrays):
        out = shard_batch(mesh, *arrays)
        seen["batch_specs"].add(axes(out[0].sharding))
        return out

    sharding.shard_batch = spy_batch
    step = train.Stepper.step

    def spy_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        q = self.model.state["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"]
        shards = {tuple(s.data.shape) for s in q.addressable_shards}
        seen["q_kernel"].add((axes(q.sharding), len(q.addressable_shards), str(shards)))
        return out

    train.Stepper.step = spy_step
    report = {}
    for run in runs:
        for k in seen:
            seen[k] = set()
        for raw, resume in run["calls"]:
            train.train_preference_model(RunSpec.model_validate(raw), run["out"], resume=resume)
        report[run["name"]] = {k: sorted(map(list, v) if k == "q_kernel" else v)
                               for k, v in seen.items()}
    print(json.dumps(report))
    """
)


def _rows(n: int) -> list[dict[str, str]]:
    """Pairs whose chosen response mentions "apple" (a learnable signal)."""
    rng = np.random.default_rng(0)
    words = np.array(["pear", "plum", "fig", "kiwi", "lime", "date", "grape", "melon"])
    out = []
    for _ in range(n):
        chosen, rejected = rng.choice(words, 3), rng.choice(words, 3)
        chosen[rng.integers(3)] = "apple"
        out.append({"prompt": f"pick {rng.choice(words)}", "chosen": " ".join(chosen),
                    "rejected": " ".join(rejected)})  # fmt: skip
    return out


def _spec(model: Path, data: Path, steps: int, mesh: dict | None, rules: list) -> dict:
    """AdamW with eps = 1e-3: at the default 1e-8 its update ≈ lr·sign(g) where g ≈ 0 turns
    float-rounding differences of such entries (the sums run in another order on a mesh)
    into differences of order lr; a larger eps keeps the update Lipschitz in g."""
    raw = {
        "task": "preference_model",
        "seed": 0,
        "policy": {"model": str(model)},
        "data": {"path": str(data), "eval_fraction": 0.25, "max_length": 48},
        "preference_training": {"kind": "pairwise", "head": "lm", "template": TEMPLATE},
        "training": {"steps": steps, "batch_size": 6, "grad_accum": 4, "lr": 3e-3,
                     "epochs": 100, "optimizer": {"name": "adamw", "eps": 1e-3}},
    }  # fmt: skip
    if mesh is not None:
        raw["distributed"] = {"engine": "jax", "mesh": mesh, "rules": rules}
    return raw


def _params(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(directory / "model.safetensors"))


@pytest.mark.slow
def test_sharded_preference_training_equals_unsharded(tmp_path: Path) -> None:
    pytest.importorskip("flax")
    from nlhf.testing.tiny_models import build_tiny_model

    rows = _rows(24)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = [TEMPLATE.format(prompt=r["prompt"], response_1=r["chosen"],
                              response_2=r["rejected"]) + " 1" for r in rows]  # fmt: skip
    model = build_tiny_model(tmp_path / "lm", "llama", corpus=[*corpus, TEMPLATE + " 2"],
                             vocab_size=300)  # fmt: skip
    fsdp, tensor = {"data": 2, "fsdp": 2}, {"data": 2, "tensor": 2}
    runs = [
        {"name": "single", "out": str(tmp_path / "single"),
         "calls": [(_spec(model, data, 3, None, []), False)]},
        # two steps, then resumed to three: the sharded optimiser state is restored
        {"name": "fsdp", "out": str(tmp_path / "fsdp"),
         "calls": [(_spec(model, data, 2, fsdp, FSDP_RULES), False),
                   (_spec(model, data, 3, fsdp, FSDP_RULES), True)]},
        {"name": "tensor", "out": str(tmp_path / "tensor"),
         "calls": [(_spec(model, data, 3, tensor, TENSOR_RULES), False)]},
    ]  # fmt: skip
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    script = tmp_path / "mesh_pref.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")  # fmt: skip
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "runs.json")],
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])

    # the batches and parameters were really placed on the mesh
    assert seen["single"]["batch_specs"] == []
    assert seen["fsdp"]["batch_specs"] == ["(('data', 'fsdp'),)"]
    assert seen["tensor"]["batch_specs"] == ["('data',)"]
    assert seen["single"]["q_kernel"] == [["None", 1, "{(32, 32)}"]]
    assert seen["fsdp"]["q_kernel"] == [["('fsdp',)", 4, "{(16, 32)}"]]
    assert seen["tensor"]["q_kernel"] == [["(None, 'tensor')", 4, "{(32, 16)}"]]

    single = tmp_path / "single"
    losses = [r["loss"] for r in read_metrics(single) if "loss" in r]
    norms = [r["grad_norm"] for r in read_metrics(single) if "loss" in r]
    evals = [r["eval/log_loss"] for r in read_metrics(single) if "eval/log_loss" in r]
    assert len(losses) == 3 and len(evals) == 2
    assert np.ptp(losses) > 1e-3  # the runs really train
    start = _params(tmp_path / "lm")
    final = _params(single / "model")
    moved = max(float(np.abs(final[k] - start[k]).max()) for k in final if k in start)
    assert moved > 1e-3
    for name in ("fsdp", "tensor"):
        run = tmp_path / name
        got = [r["loss"] for r in read_metrics(run) if "loss" in r]
        assert_close(got, losses, "float32", name, scope="model")
        got_norms = [r["grad_norm"] for r in read_metrics(run) if "loss" in r]
        assert_close(got_norms, norms, "float32", name, scope="model")
        got_eval = [r["eval/log_loss"] for r in read_metrics(run) if "eval/log_loss" in r]
        assert_close(got_eval[-1], evals[-1], "float32", name, scope="model")
        params = _params(run / "model")
        assert params.keys() == final.keys()
        for key, value in final.items():
            assert_close(params[key], value, "float32", key, scope="model")
        summary = json.loads((run / "summary.json").read_text())
        assert summary["distributed"]["devices"] == 4
