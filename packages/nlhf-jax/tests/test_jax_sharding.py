"""Sharded == unsharded, for real on 4 CPU devices (a subprocess sets XLA_FLAGS before
jax is imported; docs/jax.md, Sharding)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from nlhf.testing.tolerances import assert_close, tolerance

pytestmark = pytest.mark.jax

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from nlhf.spec.models import JaxMeshSpec
    from nlhf_jax.generation import sequence_logits
    from nlhf_jax.kernels import nash_md_pg_loss
    from nlhf_jax.models import load_model
    from nlhf_jax.sharding import make_mesh, shard_batch, shard_state

    assert jax.device_count() == 4, jax.devices()
    model = load_model(sys.argv[1])
    spec = JaxMeshSpec.model_validate({
        "engine": "jax", "mesh": {"data": 2, "fsdp": 2},
        "rules": [["(q|k|v|gate|up)_proj/kernel", ["fsdp", None]],
                  ["(o|down)_proj/kernel", [None, "fsdp"]],
                  ["embed_tokens", [None, "fsdp"]]],
    })
    rng = np.random.RandomState(0)
    B, P, T, V = 4, 5, 6, model.config.vocab_size
    ids = rng.randint(3, V, (B, P)); mask = np.ones_like(ids); mask[1, :2] = 0
    y = rng.randint(3, V, (B, T)); ym = np.ones_like(y); ym[2, 3:] = 0
    pref = rng.rand(B).astype(np.float32)
    ref_logits = rng.randn(B, T, V).astype(np.float32)
    graphdef, state = nnx.split(model)

    def loss_fn(state, ids, mask, y, ym, pref, ref_logits):
        logits = sequence_logits(nnx.merge(graphdef, state), ids, mask, y, ym)
        return nash_md_pg_loss(logits, ref_logits, y, ym, pref, 0.1, 0.9, "exact")[0]

    vg = jax.jit(jax.value_and_grad(loss_fn))
    loss0, g0 = vg(state, ids, mask, y, ym, pref, ref_logits)
    mesh = make_mesh(spec.mesh)
    sstate = shard_state(state, mesh, spec.rules)
    batch = shard_batch(mesh, ids, mask, y, ym, pref, ref_logits)
    loss1, g1 = vg(sstate, *batch)
    q = sstate["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"]
    flat0 = [np.asarray(x) for x in jax.tree.leaves(g0)]
    flat1 = [np.asarray(x) for x in jax.tree.leaves(g1)]
    print(json.dumps({
        "loss0": float(loss0), "loss1": float(loss1),
        "grad_diff": max(float(np.abs(a - b).max()) for a, b in zip(flat0, flat1)),
        "grad_scale": max(float(np.abs(a).max()) for a in flat0),
        "q_spec": str(q.sharding.spec), "q_shards": len(q.addressable_shards),
        "q_shard_shape": list(q.addressable_shards[0].data.shape),
        "ids_spec": str(batch[0].sharding.spec),
    }))
    """
)


@pytest.mark.slow
def test_sharded_loss_and_grads_equal_unsharded(tiny_ckpts, tmp_path):
    script = tmp_path / "shard.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")  # fmt: skip
    out = subprocess.run(
        [sys.executable, str(script), str(tiny_ckpts["llama"])],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert "fsdp" in r["q_spec"] and r["q_shards"] == 4
    assert r["q_shard_shape"] == [16, 32]  # (32, 32) kernel split over fsdp=2 on dim 0
    assert "data" in r["ids_spec"] and "fsdp" in r["ids_spec"]
    assert abs(r["loss0"]) > 1e-3
    assert_close(r["loss1"], r["loss0"], what="sharded loss", scope="model")
    assert r["grad_scale"] > 1e-3
    tol = tolerance("float32", "model")  # grad_diff = max |sharded − plain| over the leaves
    assert r["grad_diff"] <= tol.atol + tol.rtol * r["grad_scale"]


def test_mesh_errors_are_clear():
    from nlhf.errors import InputError
    from nlhf_jax.sharding import make_mesh

    with pytest.raises(InputError, match="needs 64 devices"):
        make_mesh({"data": 8, "fsdp": 8})
