"""The LLM forms of sppo, inpo, onpo, mpo and egpo through the core Nash loop on torch and
jax (docs/algorithms.md, "LLM forms").

Every run uses the trainer conformance kit's tiny Llama, deterministic length oracle and
backend-independent uniforms (:mod:`nlhf.testing.trainer`), so both backends sample the
same tokens (resume across each algorithm's stepper state is the kit's own case,
``TrainerConformance.test_trainer_game_family_resume_equals_uninterrupted``). Oracles,
none of them the code under test:

- the other backend: every record value and the final weights within the model-scope
  float32 tolerance (same tokens, same preferences, the same loss kernels);
- step 1, where π_θ = π_t = μ: the log-ratios and margins vanish, and each loss lies
  between the square of its mean target (Jensen) and the square of its largest target;
- mechanics: egpo's step 2 (a full step) is evaluated at θ_0, so its margin and KL are
  0; under SGD, onpo's θ_2 = 2θ_2(inpo) − 2θ_1 + θ_0 (the optimistic 2·g_t − g_{t−1});
  mpo with a magnet refreshed every step has KL(π‖m) = 0 from step 2 on, while with the
  magnet μ it does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nlhf.testing.tolerances import assert_close
from nlhf.testing.trainer import PROMPTS, TrainerRun, _OraclePlugin, shared_uniforms

pytestmark = [pytest.mark.slow, pytest.mark.jax]

ALGORITHMS: dict[str, dict[str, Any]] = {
    "sppo": {"name": "sppo", "eta": 2.0, "num_samples": 3},
    "inpo": {"name": "inpo", "tau": 0.2, "eta": 2.0},
    "onpo": {"name": "onpo", "tau": 0.2, "eta": 2.0},
    "mpo": {"name": "mpo", "tau": 0.2, "magnet_every": 1},
    "egpo": {"name": "egpo", "tau": 0.5},
}
TIMINGS = ("tokens_per_s", "step_seconds", "generation_seconds")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from nlhf.testing.tiny_models import build_tiny_model

    root = tmp_path_factory.mktemp("game-family")
    model = build_tiny_model(root / "model", "llama", seed=11, std=0.3)
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return root, model, data


def run(
    backend: str,
    inputs: tuple[Path, Path, Path],
    name: str,
    algorithm: dict[str, Any],
    steps: int,
    resume: bool = False,
) -> TrainerRun:
    from nlhf.plugins import build_plugins, get_backend
    from nlhf.runio import read_metrics
    from nlhf.spec import RunSpec
    from nlhf.training import NashLoop
    from safetensors.numpy import load_file

    root, model, data = inputs
    out = root / backend / name
    spec = RunSpec.model_validate(
        {
            "task": "nash",
            "seed": 3,
            "policy": {"model": str(model), "chat_template": False},
            "preference": {"name": "oracle", "function": "conformance_length"},
            "data": {"path": str(data), "shuffle": True},
            "algorithm": algorithm,
            "training": {
                "steps": steps,
                "batch_size": 4,
                "grad_accum": 2,
                "lr": 0.005,  # η = 2 makes gradient norms of 50–250: small steps
                "max_grad_norm": None,  # plain SGD: the onpo and egpo identities are exact
                "optimizer": {"name": "sgd"},
                "generation": {"max_new_tokens": 4, "temperature": 1.0},
            },
            "output": {"dir": str(out), "checkpoint_every": 1},
        }
    )
    impl = get_backend(backend)

    def make(spec: Any, checkpoint: Path | None, plugins: Any) -> Any:
        stepper = impl.make_nash_stepper(spec, checkpoint, plugins)
        stepper.uniforms = shared_uniforms
        return stepper

    plugins = build_plugins(extra=[_OraclePlugin()])
    summary = NashLoop(spec, out, make, backend=backend, resume=resume, plugins=plugins).run()
    weights = load_file(out / "checkpoints" / f"step-{steps}" / "model.safetensors")
    return TrainerRun(read_metrics(out), summary, weights)


_RUNS: dict[tuple[str, str], TrainerRun] = {}


def straight(backend: str, inputs: tuple[Path, Path, Path], algo: str) -> TrainerRun:
    """The uninterrupted 3-step run of ``algo`` on ``backend`` (once per session)."""
    if (backend, algo) not in _RUNS:
        _RUNS[backend, algo] = run(backend, inputs, f"{algo}-straight", ALGORITHMS[algo], 3)
    return _RUNS[backend, algo]


def _untimed(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in TIMINGS}


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_torch_and_jax_agree(inputs, algo: str) -> None:
    mine, theirs = straight("jax", inputs, algo), straight("torch", inputs, algo)
    for a, b in zip(mine.records, theirs.records, strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if key not in (*TIMINGS, "kl_estimator") and value is not None:
                assert_close(
                    value, b[key], "float32", f"{algo} step {a['step']} {key}", scope="model"
                )
    for name, value in theirs.weights.items():
        assert_close(mine.weights[name], value, "float32", f"{algo} {name}", scope="model")


@pytest.mark.parametrize("algo", ["sppo", "inpo", "egpo"])
def test_first_step_starts_at_the_reference(inputs, algo: str) -> None:
    """At step 1 π_θ = π_t = μ (the policy is its own reference): the log-ratios vanish,
    and by Jensen the loss is at least the square of its mean target."""
    first = straight("torch", inputs, algo).records[0]
    params = ALGORITHMS[algo]
    tol = "float32"
    assert 0.0 < first["preference"] < 1.0 and first["preference"] != 0.5
    if algo == "sppo":
        k, eta = params["num_samples"], params["eta"]
        assert_close(first["log_ratio"], 0.0, tol, "log π_θ/π_t at step 1", scope="model")
        gap = first["win_rate_gap"]
        assert 0.0 < gap <= (k - 1) / (2 * k)  # |P̂ − ½| ≤ (K − 1)/(2K)
        assert (eta * gap) ** 2 * (1 - 1e-6) <= first["loss"] <= (eta * (k - 1) / (2 * k)) ** 2
        return
    scale = params["eta"] if algo == "inpo" else 1.0 / params["tau"]
    assert_close(first["margin"], 0.0, tol, "h at π = μ", scope="model")
    assert_close(first["kl"], 0.0, tol, "log π/μ(y) at π = μ", scope="model")
    assert first["loss"] >= (scale * (first["preference"] - 0.5)) ** 2 * (1 - 1e-6)
    assert first["loss"] <= (scale / 2) ** 2


def _checkpoint_weights(inputs: tuple[Path, Path, Path], name: str, step: int) -> dict:
    from safetensors.numpy import load_file

    root = inputs[0] / "torch" / name / "checkpoints"
    return load_file(root / f"step-{step}" / "model.safetensors")


def test_egpo_full_step_is_taken_from_theta_0(inputs) -> None:
    """Step 2 (a full step) evaluates its loss at θ_0 = μ with pairs sampled from θ_{½}:
    its margin and KL are those of μ (0), while step 3 (a half step from θ_1) moved."""
    records = straight("torch", inputs, "egpo").records
    assert_close(records[1]["margin"], 0.0, "float32", "h at θ_0", scope="model")
    assert_close(records[1]["kl"], 0.0, "float32", "log π/μ at θ_0", scope="model")
    assert abs(records[2]["margin"]) > 1e-4
    half = _checkpoint_weights(inputs, "egpo-straight", 1)
    full = _checkpoint_weights(inputs, "egpo-straight", 2)
    assert max(np.abs(half[k] - full[k]).max() for k in half) > 1e-4


def test_onpo_is_inpo_with_the_optimistic_gradient(inputs) -> None:
    """With SGD and the same first two steps' samples: θ_1 is the same, and
    θ_2(onpo) = θ_1 − lr(2g_2 − g_1) = 2θ_2(inpo) − 2θ_1 + θ_0."""
    from safetensors.numpy import load_file

    straight("torch", inputs, "inpo"), straight("torch", inputs, "onpo")
    theta0 = load_file(inputs[1] / "model.safetensors")
    inpo = [_checkpoint_weights(inputs, "inpo-straight", s) for s in (1, 2)]
    onpo = [_checkpoint_weights(inputs, "onpo-straight", s) for s in (1, 2)]
    for name in theta0:
        np.testing.assert_array_equal(onpo[0][name], inpo[0][name], err_msg=name)
        expected = 2 * inpo[1][name] - 2 * inpo[0][name] + theta0[name]
        assert_close(onpo[1][name], expected, "float32", name, scope="model")
    assert max(np.abs(onpo[1][k] - inpo[1][k]).max() for k in theta0) > 1e-5


def test_mpo_magnet_refresh(inputs) -> None:
    """magnet_every: 1 makes m = θ_{s−1} at step s, which is the sampling policy itself:
    the KL to the magnet is 0 from step 2 on, while with the magnet μ it is not."""
    refreshed = straight("torch", inputs, "mpo").records
    fixed = run("torch", inputs, "mpo-mu", {"name": "mpo", "tau": 0.2}, 3).records
    assert _untimed(refreshed[0]) == _untimed(fixed[0])  # step 1: m = μ in both
    for r in refreshed[1:]:
        assert_close(r["kl"], 0.0, "float32", f"KL(π‖m) step {r['step']}", scope="model")
    assert abs(fixed[2]["kl"]) > 1e-4
