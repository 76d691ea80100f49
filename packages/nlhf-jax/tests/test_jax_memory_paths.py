"""Memory options of the jax stepper: ``training.gradient_checkpointing`` (``nnx.remat``
around each decoder layer), ``training.precision: bf16-mixed`` and the chunked
log-probabilities (``training.logprob_chunk``), each against the plain path on the tiny
checkpoints (vocabulary ≈500 ≫ hidden 32); the chunked kernel also against torch's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nlhf.spec.models import RunSpec
from nlhf.testing.tolerances import assert_close

pytestmark = pytest.mark.jax

jax = pytest.importorskip("jax")
jnp = jax.numpy

PROMPTS = ["Fruit?", "Pick:", "A", "Name a colour:"]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jax_memory") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def _spec(
    ckpt: Path,
    prompts: Path,
    out: Path,
    *,
    algorithm: Any = None,
    reference: Path | None = None,
    **training: Any,
):
    algo = algorithm or {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1}
    ref = {} if reference is None else {"model": str(reference)}
    return RunSpec.model_validate(
        {
            "task": "nash",
            "seed": 3,
            "policy": {"model": str(ckpt)},
            "reference": ref,
            "preference": {"name": "oracle", "function": "population"},
            "data": {"path": str(prompts), "format": "prompt", "shuffle": False},
            "algorithm": algo,
            "training": {
                "steps": 2,
                "batch_size": 4,
                "lr": 1e-2,
                "logprob_chunk": "off",
                "generation": {"max_new_tokens": 6},
                **training,
            },
            "output": {"dir": str(out)},
        }
    )


# ------------------------------------------------------------------ the chunked kernel
def _inputs(cap: float | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    b, t, h, v = 3, 7, 8, 300
    mask = np.ones((b, t), np.int32)
    mask[0, 5:] = 0
    return {
        "hidden": rng.standard_normal((b, t, h)).astype(np.float32),
        "weight": rng.standard_normal((v, h)).astype(np.float32),
        "tokens": rng.integers(0, v, (b, t)).astype(np.int32),
        "ref": rng.standard_normal((b, t, v)).astype(np.float32),
        "weights": rng.standard_normal((b, t)).astype(np.float32),
        "mask": mask,
    }


def _jax_objective(x: dict[str, np.ndarray], chunk: int | None, cap: float | None, temp: float):
    """Σ w·lp + Σ m·exact-KL as a function of (hidden, weight): chunked or full logits."""
    from nlhf_jax import kernels

    def f(hidden, weight):
        def head(h):
            return h @ weight.T

        if chunk is None:
            logits = head(hidden)
            if cap is not None:
                logits = jnp.tanh(logits / cap) * cap
            lp = kernels.token_logprobs(logits, x["tokens"], temp)
            kl, _ = kernels.kl(logits, x["ref"], x["tokens"], x["mask"], "exact", temp)
        else:
            lp, exact = kernels.chunked_token_logprobs(
                hidden, head, x["tokens"], temp, chunk, softcap=cap, reference_logits=x["ref"]
            )
            kl = jnp.sum(exact * x["mask"], axis=-1)
        return jnp.sum(lp * x["weights"]) + jnp.sum(kl), lp

    return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(x["hidden"], x["weight"])


@pytest.mark.parametrize("chunk", [1, 3, 7])
@pytest.mark.parametrize("cap", [None, 2.5])
def test_chunked_token_logprobs_equal_the_full_path(chunk: int, cap: float | None) -> None:
    x = _inputs()
    (value, lp), grads = _jax_objective(x, chunk, cap, 0.7)
    (value_full, lp_full), grads_full = _jax_objective(x, None, cap, 0.7)
    assert_close(lp, lp_full, what="token log-probs")
    assert_close(value, value_full, what="objective")
    for g, g_full, name in zip(grads, grads_full, ("hidden", "W_lm"), strict=True):
        assert_close(g, g_full, what=f"∂/∂{name}")


@pytest.mark.parametrize("cap", [None, 2.5])
def test_chunked_token_logprobs_agree_with_torch(cap: float | None) -> None:
    torch = pytest.importorskip("torch")
    from nlhf_torch import kernels as tk

    x = _inputs()
    (_, lp), (g_hidden, g_weight) = _jax_objective(x, 3, cap, 0.7)
    hidden = torch.tensor(x["hidden"], requires_grad=True)
    head = torch.nn.Linear(8, 300, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(x["weight"]))
    t_lp, exact = tk.chunked_token_logprobs(
        hidden,
        head,
        torch.tensor(x["tokens"]).long(),
        0.7,
        3,
        softcap=cap,
        reference_logits=torch.tensor(x["ref"]),
    )
    assert exact is not None
    objective = (t_lp * torch.tensor(x["weights"])).sum() + (exact * torch.tensor(x["mask"])).sum()
    objective.backward()
    assert_close(t_lp.detach(), lp, what="torch vs jax token log-probs")
    assert_close(hidden.grad, g_hidden, what="torch vs jax ∂/∂hidden")
    assert_close(head.weight.grad, g_weight, what="torch vs jax ∂/∂W_lm")


# ------------------------------------------------------------------ remat
@pytest.mark.slow
def test_remat_is_applied_and_gives_the_same_gradients(tiny_ckpts: dict[str, Path]) -> None:
    from flax import nnx
    from nlhf_jax.models import load_model

    model = load_model(tiny_ckpts["qwen2"], dtype="float32", head="causal_lm")
    ids = jnp.array([[1, 5, 6, 7, 8], [0, 0, 9, 10, 11]])
    mask = (ids > 0).astype(jnp.int32)

    def loss(m):
        logits, _ = m(ids, mask)
        return jnp.sum(jax.nn.log_softmax(logits)[..., 3] * mask)

    plain = nnx.grad(loss)(model)
    plain_jaxpr = str(jax.make_jaxpr(lambda m: nnx.grad(loss)(m))(model))
    model.model.remat = True
    remat = nnx.grad(loss)(model)
    remat_jaxpr = str(jax.make_jaxpr(lambda m: nnx.grad(loss)(m))(model))
    assert "checkpoint" in remat_jaxpr or "remat" in remat_jaxpr
    assert "checkpoint" not in plain_jaxpr and "remat" not in plain_jaxpr
    flat, flat_remat = jax.tree.leaves(plain), jax.tree.leaves(remat)
    assert max(float(jnp.abs(g).max()) for g in flat) > 1e-3
    for g, r in zip(flat, flat_remat, strict=True):
        assert_close(r, g, what="remat gradient", scope="model")


# ------------------------------------------------------------------ the stepper
def _sampled(spec: RunSpec) -> tuple[Any, tuple[Any, ...]]:
    from nlhf_jax.trainer import JaxStepper

    stepper = JaxStepper(spec, None)
    ids = [stepper.tokenizer(p)["input_ids"] for p in PROMPTS]
    samples = stepper.sample(1, 0, ids, 0.25)
    return samples, stepper._inputs(samples, np.array([0.9, 0.2, 0.6, 0.4]), 0.1)


def _grads(spec: RunSpec, inputs: tuple[Any, ...]) -> list[Any]:
    from nlhf_jax.trainer import JaxStepper

    s = JaxStepper(spec, None)
    _, _, grads = s._grad_fn(s.state, s.frozen, s.ref_state, *inputs, **s._static())
    leaves = jax.tree.leaves(grads)
    assert max(float(jnp.abs(g).max()) for g in leaves) > 0
    return leaves


@pytest.mark.slow
@pytest.mark.parametrize(
    ("option", "algorithm"),
    [
        ({"gradient_checkpointing": True}, None),
        ({"logprob_chunk": 2}, {"kl_estimator": "exact"}),
        ({"logprob_chunk": 4}, {"kl_estimator": "sampled"}),
        ({"logprob_chunk": 1, "gradient_checkpointing": True}, {"kl_estimator": "k3"}),
        ({"logprob_chunk": 2}, {"name": "online_ipo"}),
        ({"logprob_chunk": 2}, {"name": "egpo"}),
        ({"logprob_chunk": 3}, {"name": "inpo", "eta": 1.0}),
    ],
)
def test_memory_options_give_the_plain_gradients(
    tiny_ckpts: dict[str, Path],
    prompts: Path,
    tmp_path: Path,
    option: Any,
    algorithm: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nlhf_jax import trainer

    hidden_calls: list[int] = []  # traced calls: chunked log-probs read the hidden states
    real_hidden = trainer.sequence_hidden

    def counted(*args: Any, **kwargs: Any) -> Any:
        hidden_calls.append(1)
        return real_hidden(*args, **kwargs)

    monkeypatch.setattr(trainer, "sequence_hidden", counted)
    algo = {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1, **(algorithm or {})}
    if algo["name"] in ("online_ipo", "egpo", "inpo"):  # y' ~ π: no β
        algo = {"name": algo["name"], "tau": 0.1, **({"eta": 1.0} if "eta" in algo else {})}
    ckpt = tiny_ckpts["llama"]
    plain = _spec(ckpt, prompts, tmp_path / "a", algorithm=algo)
    _, inputs = _sampled(plain)
    expected = _grads(plain, inputs)
    assert not hidden_calls
    got = _grads(_spec(ckpt, prompts, tmp_path / "b", algorithm=algo, **option), inputs)
    assert bool(hidden_calls) == ("logprob_chunk" in option)
    for g, e in zip(got, expected, strict=True):
        assert_close(g, e, what="gradient leaf", scope="model")


@pytest.mark.slow
def test_bf16_mixed_state_and_step(tiny_ckpts: dict[str, Path], prompts: Path, tmp_path: Path):
    """Parameters and optimizer state stay float32; one SGD update relative to the largest
    float32 update is within the bfloat16 model tolerance and differs from it."""
    from nlhf_jax.trainer import JaxStepper

    ckpt = tiny_ckpts["llama"]
    # a reference other than the policy: at π = μ the exact KL's gradient is round-off,
    # which bfloat16 would decide
    sgd = {"optimizer": {"name": "sgd"}, "max_grad_norm": None, "lr": 0.5}
    ref = tiny_ckpts["llama_tied"]
    plain = _spec(ckpt, prompts, tmp_path / "a", reference=ref, **sgd)
    _, inputs = _sampled(plain)
    updates = []
    for precision in ("pure", "bf16-mixed"):
        out = tmp_path / precision
        spec = _spec(ckpt, prompts, out, reference=ref, precision=precision, **sgd)
        s = JaxStepper(spec, None)
        before = jax.tree.leaves(s.state)
        s._pending.append(inputs)
        s.apply()
        after = jax.tree.leaves(s.state)
        assert all(a.dtype == jnp.float32 for a in after)
        assert all(
            x.dtype == jnp.float32
            for x in jax.tree.leaves(s.opt_state)
            if jnp.issubdtype(x.dtype, jnp.floating)
        )
        updates.append([np.asarray(a) - np.asarray(b) for a, b in zip(after, before, strict=True)])
    full, mixed = (np.concatenate([u.ravel() for u in us]) for us in updates)
    scale = np.abs(full).max()
    assert scale > 1e-3
    assert_close(mixed / scale, full / scale, "bfloat16", "update / max|update|", scope="model")
    assert not np.array_equal(mixed, full)


@pytest.mark.slow
def test_bf16_mixed_adam_state_is_float32(tiny_ckpts: dict[str, Path], prompts: Path, tmp_path):
    from nlhf_jax.trainer import JaxStepper

    spec = _spec(tiny_ckpts["llama"], prompts, tmp_path / "a", precision="bf16-mixed")
    _, inputs = _sampled(spec)
    s = JaxStepper(spec, None)
    s._pending.append(inputs)
    s.apply()
    floats = [x for x in jax.tree.leaves(s.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s.state))


@pytest.mark.slow
def test_bf16_mixed_resume_is_bit_exact(tiny_ckpts: dict[str, Path], prompts: Path, tmp_path):
    from nlhf_jax.trainer import train_nash
    from safetensors.numpy import load_file

    ckpt = tiny_ckpts["llama"]
    options = {"precision": "bf16-mixed", "logprob_chunk": 2, "gradient_checkpointing": True}

    def spec(out: Path, steps: int) -> RunSpec:
        s = _spec(ckpt, prompts, out, steps=steps, **options)
        return s.model_copy(update={"output": s.output.model_copy(update={"checkpoint_every": 1})})

    train_nash(spec(tmp_path / "full", 2), tmp_path / "full")
    train_nash(spec(tmp_path / "part", 1), tmp_path / "part")
    train_nash(spec(tmp_path / "part", 2), tmp_path / "part", resume=True)
    a = load_file(tmp_path / "full/checkpoints/step-2/model.safetensors")
    b = load_file(tmp_path / "part/checkpoints/step-2/model.safetensors")
    init = load_file(ckpt / "model.safetensors")
    assert max(np.abs(a[k] - init[k]).max() for k in a) > 1e-4
    for k in a:
        assert a[k].dtype == np.float32
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
