"""``task: offline`` on torch (DPO and IPO on pairs): the first step's loss and gradient
against the float64 NumPy oracle, the reference cache against a recomputation, bit-exact
resume, IPO's closed-form target margin, and the run directory as an ``nlhf eval`` policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nlhf.evaluation.llm import resolve_policy
from nlhf.spec.models import RunSpec
from nlhf.testing.numpy_lm import NumpyLM
from nlhf.testing.offline import (
    build_offline_fixture,
    directional_derivative,
    numpy_offline_loss,
    numpy_pair_logprobs,
    random_direction,
)
from nlhf.testing.tolerances import assert_close
from nlhf.training import offline
from nlhf.training.offline import offline_loop


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_offline_fixture(tmp_path_factory.mktemp("offline"))


def make_spec(fx: dict[str, Path], out: Path, **changes: Any) -> RunSpec:
    data: dict[str, Any] = {
        "task": "offline",
        "seed": 0,
        "policy": {"model": str(fx["policy"]), "dtype": "float32"},
        "reference": {"model": str(fx["reference"])},
        "data": {"path": str(fx["pairs"]), "format": "preference"},
        "algorithm": {"name": "dpo", "tau": 0.5},
        "training": {"steps": 4, "batch_size": 3, "lr": 0.01, "epochs": 2},
        "output": {"dir": str(out)},
    }
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return RunSpec.model_validate(data)


@pytest.mark.parametrize("name", ["dpo", "ipo"])
def test_first_step_loss_and_gradient_equal_numpy_oracle(
    fixture: dict[str, Path], tmp_path: Path, name: str
) -> None:
    """Float64 policy: the first step's loss equals the NumPy loss on NumpyLM log-probs, and
    ⟨∇L, v⟩ equals central differences of that loss along a random direction v. Compared
    at float32 model tolerance: transformers computes the rotary cos/sin in float32 even
    for a float64 model (measured: 2e-7 relative on the loss)."""
    spec = make_spec(
        fixture,
        tmp_path / "run",
        **{
            "policy.dtype": "float64",
            "algorithm.name": name,
            "training.batch_size": 4,
            "training.grad_accum": 2,
            "training.generation.temperature": 0.7,
        },
    )
    loop = offline_loop(spec, tmp_path / "run", backend="torch")
    grads: dict[str, np.ndarray] = {}
    apply = loop.stepper.apply

    def spy() -> Any:
        grads.update(loop.stepper.gradients())
        return apply()

    loop.stepper.apply = spy  # type: ignore[method-assign]
    record = loop.step(1)
    batch = loop.train_tokens.take(loop.batch_rows(1))
    policy, reference = NumpyLM.load(fixture["policy"]), NumpyLM.load(fixture["reference"])
    expected = numpy_offline_loss(name, policy, reference, batch, 0.5, temperature=0.7)
    assert_close(record["loss"], expected, "float32", f"{name} loss of step 1", scope="model")
    norm = np.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    unit = {k: g / norm for k, g in grads.items()}  # along it, <grad, v> = |grad|
    for what, v in (("grad/|grad|", unit), ("a random v", random_direction(grads))):
        along = sum(float(np.sum(grads[k] * v[k])) for k in v)
        fd = directional_derivative(name, policy, reference, batch, 0.5, v, temperature=0.7)
        assert_close(along, fd, "float32", f"<grad {name}, {what}>", scope="model")
    assert norm > 1e-2  # the gradient check is not vacuous


def test_cached_reference_logprobs_equal_recomputation(
    fixture: dict[str, Path], tmp_path: Path
) -> None:
    """The cache (memory and reference_logprobs.json) equals the stepper's direct
    recomputation bit for bit and the float64 NumPy forward at model tolerance."""
    out = tmp_path / "run"
    spec = make_spec(fixture, out, **{"data.eval_fraction": 0.34})
    loop = offline_loop(spec, out, backend="torch")
    assert loop.cache_computed
    direct = loop.stepper.pair_logprobs(loop.train_tokens, model="reference")
    np.testing.assert_array_equal(loop.reference.chosen, direct[0])
    np.testing.assert_array_equal(loop.reference.rejected, direct[1])
    lm = NumpyLM.load(fixture["reference"])
    tokens = loop.train_tokens
    assert_close(
        loop.reference.chosen,
        numpy_pair_logprobs(lm, tokens.prompt, tokens.chosen, 1.0),
        "float32",
        "log μ(y_w)",
        scope="model",
    )
    held = loop.eval_tokens
    assert len(held) == 2
    assert_close(
        loop.reference.eval_rejected,
        numpy_pair_logprobs(lm, held.prompt, held.rejected, 1.0),
        "float32",
        "log μ(y_l) held out",
        scope="model",
    )
    on_disk = json.loads((out / offline.CACHE_FILE).read_text())
    assert on_disk["key"] == loop.cache_record["key"]
    np.testing.assert_array_equal(np.asarray(on_disk["chosen"]), loop.reference.chosen)
    offline._MEMORY.clear()
    again = offline_loop(spec, out, backend="torch")  # read back from disk, not recomputed
    assert not again.cache_computed
    np.testing.assert_array_equal(again.reference.rejected, loop.reference.rejected)


def test_cache_key_follows_reference_and_data(fixture: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    spec = make_spec(fixture, out)
    loop = offline_loop(spec, out, backend="torch")
    key = loop.cache_record["key"]
    elsewhere = tmp_path / "elsewhere"
    second = offline_loop(make_spec(fixture, elsewhere), elsewhere, backend="torch")
    assert not second.cache_computed  # the same key in this process: from memory
    assert json.loads((elsewhere / offline.CACHE_FILE).read_text())["key"] == key  # and saved
    other = make_spec(fixture, out, **{"reference.model": str(fixture["policy"])})
    assert offline_loop(other, out, backend="torch").cache_computed  # another μ: recomputed
    data = tmp_path / "pairs.jsonl"
    data.write_text(fixture["pairs"].read_text() + "\n")  # same pairs, other bytes
    moved = make_spec(fixture, out, **{"data.path": str(data)})
    assert (
        offline.reference_cache_key(moved, "torch", loop.train_tokens, loop.eval_tokens)["key"]
        != key
    )


@pytest.mark.parametrize("name", ["dpo", pytest.param("ipo", marks=pytest.mark.slow)])
def test_resume_is_bit_exact(fixture: dict[str, Path], tmp_path: Path, name: str) -> None:
    """4 steps straight = 2 steps, a checkpoint, a resume (without recomputing the
    reference) and 2 more: parameters and records equal bit for bit."""
    from safetensors.numpy import load_file

    changes = {"algorithm.name": name, "output.checkpoint_every": 2, "data.shuffle": True}
    straight = offline.run_offline(
        make_spec(fixture, tmp_path / "a", **changes), tmp_path / "a", backend="torch"
    )
    short = make_spec(fixture, tmp_path / "b", **changes, **{"training.steps": 2})
    offline.run_offline(short, tmp_path / "b", backend="torch")
    offline._MEMORY.clear()
    resumed = offline.run_offline(
        make_spec(fixture, tmp_path / "b", **changes), tmp_path / "b", backend="torch", resume=True
    )
    assert resumed["resumed_from"] == 2 and resumed["reference_cache"]["computed"] is False
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step-4" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step-4" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    rows = [
        json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    ref = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    drop = ("step_seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows] == [
        {k: v for k, v in r.items() if k not in drop} for r in ref
    ]
    assert straight["final"]["loss"] == resumed["final"]["loss"]


@pytest.mark.slow
def test_ipo_drives_margin_to_closed_form(tmp_path: Path) -> None:
    """IPO's minimiser pair by pair is h = 1/(2τ) (Azar et al. 2023): on a 2-pair toy with
    τ = 0.5, the trained policy's margins, measured by the NumPy forward of its checkpoint,
    are within 2% of 1."""
    fx = build_offline_fixture(
        tmp_path / "fx",
        pairs=[
            {"prompt": "Which fruit?", "chosen": " apple", "rejected": " banana"},
            {"prompt": "Game", "chosen": " rock", "rejected": " paper"},
        ],
    )
    out = tmp_path / "run"
    spec = make_spec(
        fx,
        out,
        **{
            "algorithm.name": "ipo",
            "training.steps": 150,
            "training.batch_size": 2,
            "training.lr": 0.003,
            "training.epochs": 150,
            "training.max_grad_norm": None,
        },
    )
    loop = offline_loop(spec, out, backend="torch")
    summary = loop.run()
    trained = NumpyLM.load(Path(summary["checkpoint"]))
    reference = NumpyLM.load(fx["reference"])
    t = loop.train_tokens
    h = (
        numpy_pair_logprobs(trained, t.prompt, t.chosen, 1.0)
        - numpy_pair_logprobs(reference, t.prompt, t.chosen, 1.0)
        - numpy_pair_logprobs(trained, t.prompt, t.rejected, 1.0)
        + numpy_pair_logprobs(reference, t.prompt, t.rejected, 1.0)
    )
    np.testing.assert_allclose(h, 1.0 / (2 * 0.5), rtol=0.02)


def test_run_directory_is_an_eval_policy(fixture: dict[str, Path], tmp_path: Path) -> None:
    """The run directory resolves to its final checkpoint, which transformers loads and a
    win-rate evaluation samples from (its data and policy taken from the run's spec)."""
    from nlhf.plugins import get_backend
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    summary = offline.run_offline(
        make_spec(fixture, out, **{"training.steps": 2}), out, backend="torch"
    )
    entry = resolve_policy(str(out))
    assert entry.path == Path(summary["checkpoint"]) and entry.step == 2
    model = AutoModelForCausalLM.from_pretrained(entry.path)
    assert model.config.vocab_size == NumpyLM.load(fixture["policy"]).config["vocab_size"]
    assert set(json.loads((out / "summary.json").read_text())) == set(offline.SUMMARY_KEYS)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert set(record) == set(offline.RECORD_KEYS)
    evaluation = RunSpec.model_validate(
        {
            "task": "evaluate",
            "eval": {"policies": [f"dpo={out}", "reference"], "num_prompts": 2},
            "preference": {"name": "oracle", "function": "population"},
            "training": {"generation": {"max_new_tokens": 4}},
            "output": {"dir": str(tmp_path / "eval")},
        }
    )
    result = get_backend("torch").train(evaluation, tmp_path / "eval")
    assert result["policies"] == ["dpo", "reference"]
    assert result["per_policy"]["dpo"]["checkpoint"] == summary["checkpoint"]
    assert result["per_policy"]["dpo"]["kl_to_reference"] != 0.0  # the trained policy moved


@pytest.mark.slow
def test_lora_reference_is_the_base_and_resume_is_bit_exact(
    fixture: dict[str, Path], tmp_path: Path
) -> None:
    """policy.lora: μ is the base model with the adapter off (its cached log-probs are the
    NumPy forward of the base checkpoint), and a resumed run's adapter equals the straight
    run's bit for bit (LoRA dropout draws from the checkpointed RNG streams)."""
    pytest.importorskip("peft")
    from safetensors.numpy import load_file

    changes = {
        "reference.model": None,
        "policy.lora": {"r": 4, "alpha": 8.0, "dropout": 0.1},
        "output.checkpoint_every": 2,
        "training.lr": 0.05,
    }
    loop = offline_loop(
        make_spec(fixture, tmp_path / "a", **changes), tmp_path / "a", backend="torch"
    )
    base = NumpyLM.load(fixture["policy"])
    t = loop.train_tokens
    assert_close(
        loop.reference.chosen,
        numpy_pair_logprobs(base, t.prompt, t.chosen, 1.0),
        "float32",
        "log μ(y_w) of the base",
        scope="model",
    )
    loop.run()
    short = make_spec(fixture, tmp_path / "b", **changes, **{"training.steps": 2})
    offline.run_offline(short, tmp_path / "b", backend="torch")
    offline.run_offline(
        make_spec(fixture, tmp_path / "b", **changes), tmp_path / "b", backend="torch", resume=True
    )
    name = "adapter_model.safetensors"
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step-4" / name))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step-4" / name))
    initial = load_file(str(tmp_path / "b" / "checkpoints" / "step-2" / name))
    assert a.keys() == b.keys() and a
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert any(not np.array_equal(a[k], initial[k]) for k in a)  # steps 3-4 moved the adapter


def test_sigterm_checkpoints_and_the_resume_is_bit_exact(
    fixture: dict[str, Path], tmp_path: Path
) -> None:
    """SIGTERM during step 2 (no checkpoint cadence): the step finishes, checkpoint step-2
    is written, the run exits 128 + 15; its resume ends where the uninterrupted run does."""
    import os
    import signal

    from safetensors.numpy import load_file

    straight = offline.run_offline(
        make_spec(fixture, tmp_path / "a"), tmp_path / "a", backend="torch"
    )
    loop = offline_loop(make_spec(fixture, tmp_path / "b"), tmp_path / "b", backend="torch")
    step = loop.step

    def interrupted(n: int) -> dict[str, Any]:
        if n == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(n)

    loop.step = interrupted  # type: ignore[method-assign]
    with pytest.raises(SystemExit) as exit_code:
        loop.run()
    assert exit_code.value.code == 128 + signal.SIGTERM
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-2"]
    resumed = offline.run_offline(
        make_spec(fixture, tmp_path / "b"), tmp_path / "b", backend="torch", resume=True
    )
    assert resumed["resumed_from"] == 2
    a = load_file(str(Path(straight["checkpoint"]) / "model.safetensors"))
    b = load_file(str(Path(resumed["checkpoint"]) / "model.safetensors"))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_resume_refuses_pairs_that_lost_rows(fixture: dict[str, Path], tmp_path: Path) -> None:
    """A checkpoint past the run's last step, because the pairs file lost rows since it was
    written, is refused with what changed."""
    from nlhf.errors import InputError

    data = tmp_path / "pairs.jsonl"
    data.write_text(fixture["pairs"].read_text())
    spec = make_spec(fixture, tmp_path / "run", **{"data.path": str(data)})
    offline.run_offline(spec, tmp_path / "run", backend="torch")  # 4 steps: 2 epochs of 6 pairs
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:3]))
    with pytest.raises(InputError, match=r"at step 4, past this run's 2 steps .* over 3 pairs"):
        offline_loop(spec, tmp_path / "run", backend="torch", resume=True)
