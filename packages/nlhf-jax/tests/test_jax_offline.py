"""``task: offline`` on jax (DPO and IPO on pairs): the first step's loss and gradient
against the float64 NumPy oracle, and bit-exact resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nlhf.spec.models import RunSpec
from nlhf.testing.numpy_lm import NumpyLM
from nlhf.testing.offline import build_offline_fixture, directional_derivative, numpy_offline_loss
from nlhf.testing.tolerances import assert_close
from nlhf.training import offline
from nlhf.training.offline import offline_loop


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_offline_fixture(tmp_path_factory.mktemp("offline"))


def make_spec(fx: dict[str, Path], out: Path, **training: Any) -> RunSpec:
    return RunSpec.model_validate(
        {
            "task": "offline",
            "policy": {"model": str(fx["policy"])},
            "reference": {"model": str(fx["reference"])},
            "data": {"path": str(fx["pairs"]), "format": "preference"},
            "algorithm": {"name": training.pop("name", "dpo"), "tau": 0.5},
            "training": {"steps": 4, "batch_size": 3, "lr": 0.01, "epochs": 2, **training},
            "output": {"dir": str(out), "checkpoint_every": 2},
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dpo", "ipo"])
def test_first_step_loss_and_gradient_equal_numpy_oracle(
    fixture: dict[str, Path], tmp_path: Path, name: str
) -> None:
    """Float32 jax: the first step's loss equals the float64 NumPy loss, and the directional
    derivative along the gradient (= |grad|) equals central differences of that loss."""
    spec = make_spec(fixture, tmp_path, name=name, batch_size=4, grad_accum=2)
    loop = offline_loop(spec, tmp_path, backend="jax")
    grads: dict[str, np.ndarray] = {}
    apply = loop.stepper.apply

    def spy() -> Any:
        grads.update(loop.stepper.gradients())
        return apply()

    loop.stepper.apply = spy  # type: ignore[method-assign]
    record = loop.step(1)
    batch = loop.train_tokens.take(loop.batch_rows(1))
    policy, reference = NumpyLM.load(fixture["policy"]), NumpyLM.load(fixture["reference"])
    expected = numpy_offline_loss(name, policy, reference, batch, 0.5)
    assert_close(record["loss"], expected, "float32", f"{name} loss of step 1", scope="model")
    norm = np.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    unit = {k: g / norm for k, g in grads.items()}
    fd = directional_derivative(name, policy, reference, batch, 0.5, unit)
    assert norm > 1e-2
    assert_close(norm, fd, "float32", f"<grad {name}, grad/|grad|>", scope="model")


@pytest.mark.slow
def test_resume_is_bit_exact(fixture: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    offline.run_offline(make_spec(fixture, tmp_path / "a"), tmp_path / "a", backend="jax")
    offline.run_offline(make_spec(fixture, tmp_path / "b", steps=2), tmp_path / "b", backend="jax")
    offline._MEMORY.clear()
    resumed = offline.run_offline(
        make_spec(fixture, tmp_path / "b"), tmp_path / "b", backend="jax", resume=True
    )
    assert resumed["resumed_from"] == 2 and resumed["reference_cache"]["computed"] is False
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step-4" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step-4" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    losses = [
        [
            json.loads(line)["loss"]
            for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
        ]
        for d in ("a", "b")
    ]
    assert losses[0] == losses[1]


@pytest.mark.slow
def test_lora_reference_is_the_base_and_resume_is_bit_exact(
    fixture: dict[str, Path], tmp_path: Path
) -> None:
    """policy.lora: μ is the base model with the adapter off (its cached log-probs are the
    NumPy forward of the base checkpoint), and a resumed run's adapter equals the straight
    run's bit for bit (dropout keys from the seed, the update and the micro-batch)."""
    from nlhf.testing.offline import numpy_pair_logprobs
    from safetensors.numpy import load_file

    def spec(out: Path, steps: int = 4) -> RunSpec:
        data = make_spec(fixture, out, steps=steps, grad_accum=3, lr=0.05).model_dump()
        data["reference"]["model"] = None
        data["policy"]["lora"] = {"r": 4, "alpha": 8.0, "dropout": 0.1}
        return RunSpec.model_validate(data)

    loop = offline_loop(spec(tmp_path / "a"), tmp_path / "a", backend="jax")
    base, t = NumpyLM.load(fixture["policy"]), loop.train_tokens
    expected = numpy_pair_logprobs(base, t.prompt, t.rejected, 1.0)
    assert_close(
        loop.reference.rejected, expected, "float32", "log μ(y_l) of the base", scope="model"
    )
    loop.run()
    offline.run_offline(spec(tmp_path / "b", steps=2), tmp_path / "b", backend="jax")
    offline.run_offline(spec(tmp_path / "b"), tmp_path / "b", backend="jax", resume=True)
    name = "adapter_model.safetensors"
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step-4" / name))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step-4" / name))
    half = load_file(str(tmp_path / "b" / "checkpoints" / "step-2" / name))
    assert a.keys() == b.keys() and a
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert any(not np.array_equal(a[k], half[k]) for k in a)
