"""μ's log-probabilities under ``training.logprob_chunk`` (jax): the reference's (or the LoRA
policy's adapter-off μ's) log-probs of y' and of sppo's responses come from its final hidden
states chunk by chunk, the decode's reference logits are log-softmaxed chunk by chunk and
read in place by the exact-KL chunks, and ``task: offline`` scores pairs the same way.
Values against the full-logits path and NumPy; the traced update (its jaxpr, nested
jaxprs included) holds no array over the vocabulary with B×T rows, while the full path's
does."""

from __future__ import annotations

import functools
import json
import math
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


def _subjaxprs(params: dict[str, Any]) -> Any:
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(getattr(item, "jaxpr", None), "eqns"):
                yield item.jaxpr


def vocab_arrays(jaxpr: Any, vocab: int, rows: int) -> list[tuple[str, tuple[int, ...]]]:
    """(primitive, shape) of every value computed in ``jaxpr`` or its nested jaxprs (scan
    bodies, checkpoints, pjit) whose last axis is the vocabulary and whose leading axes
    hold at least ``rows`` positions: B×T×V-sized logits or a copy of them."""
    found = []
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            shape = tuple(getattr(var.aval, "shape", ()))
            if shape and shape[-1] == vocab and math.prod(shape[:-1]) >= rows:
                found.append((eqn.primitive.name, shape))
        for sub in _subjaxprs(eqn.params):
            found += vocab_arrays(sub, vocab, rows)
    return found


def _oracle(logits: np.ndarray, tokens: np.ndarray, temp: float) -> np.ndarray:
    z = logits / temp
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return np.take_along_axis(logp, tokens[..., None], -1)[..., 0]


# ------------------------------------------------------------------ the kernels
@pytest.mark.parametrize("chunk", [1, 3, 7, 20])
def test_chunked_logits_logprobs_equal_the_full_log_softmax(chunk: int) -> None:
    """float64 (scoped x64): chunk by chunk equals NumPy and the full path; the traced
    function makes no B×T×V array unless one chunk spans the sequence."""
    from nlhf_jax import kernels

    rng = np.random.default_rng(0)
    b, t, v, temp = 3, 7, 50, 0.7
    logits = rng.standard_normal((b, t, v)) * 3
    tokens = rng.integers(0, v, (b, t))
    with jax.enable_x64(True):
        x, y = jnp.asarray(logits), jnp.asarray(tokens)
        lp = kernels.chunked_logits_logprobs(x, y, temp, chunk)
        full = kernels.token_logprobs(x, y, temp)
        traced = jax.make_jaxpr(lambda a: kernels.chunked_logits_logprobs(a, y, temp, chunk))(x)
    assert lp.dtype == jnp.float64 and lp.shape == (b, t)
    assert_close(lp, _oracle(logits, tokens, temp), "float64", "vs NumPy")
    assert_close(lp, full, "float64", "vs full")
    assert bool(vocab_arrays(traced.jaxpr, v, b * t)) == (chunk >= t)


def test_chunked_kernels_refuse_a_bad_chunk() -> None:
    from nlhf_jax import kernels

    with pytest.raises(ValueError, match="chunk must be a positive"):
        kernels.chunked_logits_logprobs(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2), int), 1.0, 0)
    with pytest.raises(ValueError, match="chunk must be a positive"):
        kernels.chunked_token_logprobs(
            jnp.zeros((1, 2, 3)), lambda h: h, jnp.zeros((1, 2), int), 1.0, 0
        )


@pytest.mark.parametrize("chunk", [2, 3])
def test_exact_kl_chunks_read_the_reference_logits_in_place(chunk: int) -> None:
    """The gradient of Σ lp + Σ exact-KL through the chunked kernel: no copy of the
    reference logits (the kernel once padded and transposed them whole) and no stacked
    chunk residuals, T = 8 divisible by 2, not by 3; values equal the full path."""
    from nlhf_jax import kernels

    rng = np.random.default_rng(1)
    b, t, h, v, temp = 3, 8, 4, 50, 0.7
    hidden = jnp.asarray(rng.standard_normal((b, t, h)), jnp.float32)
    weight = jnp.asarray(rng.standard_normal((v, h)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
    ref = jnp.asarray(rng.standard_normal((b, t, v)), jnp.float32)

    def objective(hid: Any, w: Any, c: int | None) -> Any:
        if c is None:
            logits = hid @ w.T
            kl, _ = kernels.kl(logits, ref, tokens, jnp.ones((b, t)), "exact", temp)
            return jnp.sum(kernels.token_logprobs(logits, tokens, temp)) + jnp.sum(kl)
        lp, exact = kernels.chunked_token_logprobs(
            hid, lambda x: x @ w.T, tokens, temp, c, reference_logits=ref
        )
        return jnp.sum(lp) + jnp.sum(exact)

    grad = jax.value_and_grad(objective, argnums=(0, 1))
    traced = jax.make_jaxpr(functools.partial(grad, c=chunk))(hidden, weight)
    assert not vocab_arrays(traced.jaxpr, v, b * t)
    full = jax.make_jaxpr(functools.partial(grad, c=None))(hidden, weight)
    assert vocab_arrays(full.jaxpr, v, b * t)
    (value, grads), (value_full, grads_full) = (
        grad(hidden, weight, chunk),
        grad(hidden, weight, None),
    )
    assert_close(value, value_full, what="objective")
    for g, g_full in zip(grads, grads_full, strict=True):
        assert_close(g, g_full, what="gradient")


# ------------------------------------------------------------------ the nash stepper
@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jax_reference_chunks") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


ALGORITHMS = {
    "sampled": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1, "kl_estimator": "sampled"},
    "exact": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1, "kl_estimator": "exact"},
    "online_ipo": {"name": "online_ipo", "tau": 0.1},
    "inpo": {"name": "inpo", "tau": 0.1, "eta": 1.0},
    "egpo": {"name": "egpo", "tau": 0.1},
    "sppo": {"name": "sppo", "eta": 1.0, "num_samples": 3},
}


def _spec(ckpts: dict[str, Path], prompts: Path, out: Path, algorithm: str, chunk: Any, lora: bool):
    policy: dict[str, Any] = {"model": str(ckpts["llama"])}
    if lora:
        policy["lora"] = {"r": 4, "target_modules": ["q_proj", "v_proj"]}
    return RunSpec.model_validate(
        {
            "task": "nash",
            "seed": 3,
            "policy": policy,
            "reference": {} if lora else {"model": str(ckpts["llama_tied"])},
            "preference": {"name": "oracle", "function": "population"},
            "data": {"path": str(prompts), "format": "prompt", "shuffle": False},
            "algorithm": ALGORITHMS[algorithm],
            "training": {
                "steps": 2,
                "batch_size": 4,
                "lr": 1e-2,
                "logprob_chunk": chunk,
                "generation": {"max_new_tokens": 12, "temperature": 0.8},
            },
            "output": {"dir": str(out)},
        }
    )


def _traced_update(spec: RunSpec) -> tuple[Any, Any, int, int]:
    """(loss and metrics, jaxpr of ``_loss_grads``, B·T of its completions, V)."""
    from nlhf_jax.trainer import JaxStepper

    s = JaxStepper(spec, None)
    ids = [s.tokenizer(p)["input_ids"] for p in PROMPTS]
    samples = s.sample(1, 0, ids, 0.25)
    inputs = s._inputs(samples, np.linspace(0.1, 0.9, len(samples.rows)), 0.1)
    args = (s.state, s.frozen, s.ref_state, *inputs)
    fn = functools.partial(s._loss_grads, **s._static())
    loss, metrics, _ = s._grad_fn(*args, **s._static())
    rows, positions = inputs[0]["y"].shape
    hidden = s.policy.config.hidden_size
    assert rows * positions > hidden  # so a (H, V) weight is not counted as B×T×V
    return (loss, metrics), jax.make_jaxpr(fn)(*args), rows * positions, s.policy.config.vocab_size


@pytest.mark.slow
@pytest.mark.parametrize(
    ("algorithm", "lora"),
    [(name, False) for name in ALGORITHMS] + [("online_ipo", True), ("sppo", True)],
)
def test_update_traces_no_full_logits(
    tiny_ckpts: dict[str, Path], prompts: Path, tmp_path: Path, algorithm: str, lora: bool
) -> None:
    """Every loss family with ``logprob_chunk: 2`` (a tied-Llama reference, or the LoRA
    policy's adapter-off μ): loss and metrics (μ's log-probs enter KL and margins) equal
    the full path's, whose traced update holds B×T×V logits; the chunked one holds none."""
    (loss, metrics), traced, rows, vocab = _traced_update(
        _spec(tiny_ckpts, prompts, tmp_path / "b", algorithm, 2, lora)
    )
    (want_loss, want), full, _, _ = _traced_update(
        _spec(tiny_ckpts, prompts, tmp_path / "a", algorithm, "off", lora)
    )
    assert vocab_arrays(full.jaxpr, vocab, rows), "the full path computes B×T×V logits"
    assert not vocab_arrays(traced.jaxpr, vocab, rows)
    assert_close(loss, want_loss, what="loss", scope="model")
    assert metrics.keys() == want.keys()
    for key, value in want.items():
        assert_close(metrics[key], value, what=key, scope="model")


@pytest.mark.slow
def test_frozen_logprobs_equal_the_full_logits(
    tiny_ckpts: dict[str, Path], prompts: Path, tmp_path: Path
) -> None:
    """μ's sequence log-probs of y' through its hidden states in chunks of 2 (and of y
    from the decode's logits) equal those of its full logits."""
    from nlhf_jax import kernels
    from nlhf_jax.trainer import JaxStepper

    s = JaxStepper(_spec(tiny_ckpts, prompts, tmp_path, "online_ipo", 2, False), None)
    ids = [s.tokenizer(p)["input_ids"] for p in PROMPTS]
    batch = s.sample(1, 0, ids, 0.25).payload[2]
    reference = s._reference(s.state, s.frozen, s.ref_state)
    args = (reference, batch["ids"], batch["mask"], batch["yp"], batch["ypm"])
    got = s._sequence_logprobs(*args, 2)
    want = s._sequence_logprobs(*args, None)
    policy = s._sequence_logprobs(s._model(s.state, s.frozen), *args[1:], None)
    assert_close(got, want, what="log μ(y'|x), chunked vs full")
    assert not np.allclose(np.asarray(want), np.asarray(policy))  # μ is not the policy
    decoded = s._decoded_logprobs(batch["ref"], batch["y"], batch["ym"], 3)
    temp = s.spec.training.generation.temperature
    full = kernels.sequence_logprobs(batch["ref"], batch["y"], batch["ym"], temp)
    assert_close(decoded, full, what="log μ(y|x) from the decode's logits")


# ------------------------------------------------------------------ task: offline
@pytest.mark.slow
def test_offline_logprobs_in_chunks(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Offline DPO: chunked pair log-probs of policy and reference equal the full ones,
    the gradient of one micro-batch too, and its traced gradient holds no B×T×V array."""
    from nlhf.testing.offline import build_offline_fixture
    from nlhf.training.offline import offline_loop

    fx = build_offline_fixture(tmp_path_factory.mktemp("jax_offline_chunks"))

    def loop(out: Path, chunk: Any) -> Any:
        spec = RunSpec.model_validate(
            {
                "task": "offline",
                "seed": 0,
                "policy": {"model": str(fx["policy"])},
                "reference": {"model": str(fx["reference"])},
                "data": {"path": str(fx["pairs"]), "format": "preference"},
                "algorithm": {"name": "dpo", "tau": 0.5},
                "training": {"steps": 1, "batch_size": 4, "lr": 0.01, "logprob_chunk": chunk},
                "output": {"dir": str(out)},
            }
        )
        return offline_loop(spec, out, backend="jax")

    root = tmp_path_factory.mktemp("jax_offline_runs")
    full, chunked = loop(root / "a", "off"), loop(root / "b", 3)
    batch = chunked.train_tokens.take(chunked.batch_rows(1))
    for which in ("policy", "reference"):
        got = chunked.stepper.pair_logprobs(batch, model=which)
        want = full.stepper.pair_logprobs(batch, model=which)
        for g, w in zip(got, want, strict=True):
            assert_close(g, w, what=f"{which}: chunked vs full")
    stepper = chunked.stepper
    tokens = stepper._batch(batch)
    reference = tuple(jnp.asarray(r, jnp.float32) for r in want)
    args = (stepper.state, stepper.frozen, tokens, *reference, 0.5, 1.0, None)
    rows = math.prod(tokens["y"].shape)
    hidden = json.loads((fx["policy"] / "config.json").read_text())["hidden_size"]
    assert rows > hidden  # so a (H, V) weight is not counted as B×T×V
    traced = jax.make_jaxpr(stepper._loss_grads)(*args)
    assert not vocab_arrays(traced.jaxpr, stepper.vocab, rows)
    assert vocab_arrays(jax.make_jaxpr(full.stepper._loss_grads)(*args).jaxpr, stepper.vocab, rows)
    _, _, grads = stepper._grad_fn(*args)
    _, _, grads_full = full.stepper._grad_fn(*args)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_full), strict=True):
        assert_close(g, w, what="gradient leaf", scope="model")


@pytest.mark.slow
def test_chunked_reference_resume_is_bit_exact(
    tiny_ckpts: dict[str, Path], prompts: Path, tmp_path: Path
) -> None:
    """INPO with ``logprob_chunk: 2`` and ``grad_accum: 2`` (μ's y' forward and the decode
    logits of y in chunks): 2 steps straight equal 1 step and a resume, bit for bit."""
    from nlhf_jax.trainer import train_nash
    from safetensors.numpy import load_file

    def spec(out: Path, steps: int) -> RunSpec:
        s = _spec(tiny_ckpts, prompts, out, "inpo", 2, False)
        training = s.training.model_copy(update={"steps": steps, "grad_accum": 2})
        output = s.output.model_copy(update={"checkpoint_every": 1})
        return s.model_copy(update={"training": training, "output": output})

    train_nash(spec(tmp_path / "full", 2), tmp_path / "full")
    train_nash(spec(tmp_path / "part", 1), tmp_path / "part")
    train_nash(spec(tmp_path / "part", 2), tmp_path / "part", resume=True)
    a = load_file(tmp_path / "full/checkpoints/step-2/model.safetensors")
    b = load_file(tmp_path / "part/checkpoints/step-2/model.safetensors")
    init = load_file(tiny_ckpts["llama"] / "model.safetensors")
    assert max(np.abs(a[k] - init[k]).max() for k in a) > 1e-4
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
