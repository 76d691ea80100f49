"""Trainer-level conformance: every backend's Nash loop on one shared tiny checkpoint.

Subclass :class:`TrainerConformance` in a backend's tests (``backend = "NAME"``); its
cases run the core loop (:mod:`nlhf.training.loop`) on the backend's stepper
(``Backend.make_nash_stepper``) for 3 steps of Nash-MD-PG from a tiny Llama built with
NumPy (:mod:`nlhf.testing.tiny_models`), with a deterministic length oracle and the same
injected uniforms for every backend (``NashStepper.uniforms``), and check:

- ``metrics.jsonl``: every record has the core keys (:data:`nlhf.training.loop.RECORD_KEYS`)
  plus the algorithm's, all finite;
- ``summary.json``: exactly :data:`nlhf.training.loop.SUMMARY_KEYS`;
- resume: 2 steps, then ``--resume`` to 3, equals the uninterrupted run bit for bit
  (metrics other than timings, and the final weights); for each LLM form of the game
  family (:data:`GAME_FAMILY`, slow tier) 1 step, then ``--resume`` to 3;
- a preference outage (:class:`nlhf.errors.PreferenceUnavailableError` in the middle of
  step 3, after one micro-batch's gradient, with no periodic checkpoints and the
  stepper's own random stream): the step is abandoned, step 2 is checkpointed, and
  ``--resume`` equals the uninterrupted run bit for bit;
- against another backend (torch, else jax, when installed): the same record keys
  and summary keys, and every metric value within the model-scope tolerance
  (:func:`nlhf.testing.tolerances.tolerance`): same tokens, same preferences, same losses,
  same SGD steps.

:data:`TRAINER_CASES` freezes the case list; ``tests/conformance`` guards it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import nlhf
from nlhf.errors import PreferenceUnavailableError
from nlhf.testing.tolerances import assert_close
from nlhf.training.protocols import PolicyProbe

TRAINER_CASES = (
    "test_trainer_metrics_schema",
    "test_trainer_summary_schema",
    "test_trainer_resume_equals_uninterrupted",
    "test_trainer_preference_outage_resumes_exactly",
    "test_trainer_matches_reference_backend",
    "test_trainer_game_family_resume_equals_uninterrupted",
)

COMPARED = (
    "loss",
    "score",
    "kl",
    "preference",
    "len_y",
    "len_y_prime",
    "lr",
    "tau",
    "beta",
    "grad_norm",
    "generated_tokens",
)
"""Record keys compared across backends (timings and the estimator name excluded)."""

PROMPTS = ["Pick a fruit:", "Name a colour:", "Say a word:", "Hello there"]

GAME_FAMILY: dict[str, dict[str, Any]] = {
    "sppo": {"name": "sppo", "eta": 2.0, "num_samples": 3},
    "inpo": {"name": "inpo", "tau": 0.2, "eta": 2.0},
    "onpo": {"name": "onpo", "tau": 0.2, "eta": 2.0},
    "mpo": {"name": "mpo", "tau": 0.2, "magnet_every": 1},
    "egpo": {"name": "egpo", "tau": 0.5},
}
"""The LLM forms of the game family (docs/algorithms.md, "LLM forms") whose stepper state
the resume case carries across a checkpoint."""


class LengthOracle:
    """P(y≻y'|x) = σ((len y − len y′)/4) on characters: a deterministic preference every
    backend evaluates identically on identical texts."""

    def __call__(self, prompts: list[str], ys: list[str], yps: list[str]) -> list[float]:
        return [1 / (1 + math.exp(-(len(a) - len(b)) / 4)) for a, b in zip(ys, yps, strict=True)]

    def summary(self, *, probe: PolicyProbe, prompts: list[str], spec: Any) -> dict[str, Any]:
        """The end-of-run hook, through the backend-agnostic probe: log π(EOS | x) and
        log μ(EOS | x) of the first two prompts, and the lengths of one sample each."""
        tok = probe.tokenizer
        ids = [tok(p)["input_ids"] for p in prompts[:2]]
        eos = [[tok.eos_token_id] for _ in ids]
        logp = {
            m: probe.sequence_logprobs(ids, eos, model=m, temperature=1.0).tolist()
            for m in ("policy", "reference")
        }
        drawn = probe.sample_completions(ids, temperature=1.0, max_new_tokens=3, seed=0)
        return {
            "logp_eos_policy": logp["policy"],
            "logp_eos_reference": logp["reference"],
            "sampled_lengths": [len(d) for d in drawn],
        }


class FlakyLengthOracle(LengthOracle):
    """:class:`LengthOracle` that is unavailable at its ``fail_at``-th call (1-based)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, prompts: list[str], ys: list[str], yps: list[str]) -> list[float]:
        self.calls += 1
        if self.calls == self.fail_at:
            raise PreferenceUnavailableError("conformance: the preference server is down")
        return super().__call__(prompts, ys, yps)


class _OraclePlugin:
    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at

    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        register("conformance_length", lambda **kw: FlakyLengthOracle(self.fail_at))


def shared_uniforms(step: int, offset: int, rows: int, tokens: int) -> np.ndarray:
    """The same (2·rows, tokens) draws for every backend, from NumPy seeded by the step."""
    return np.random.default_rng([7, step, offset]).uniform(size=(2 * rows, tokens))


@dataclass
class TrainerRun:
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    weights: dict[str, np.ndarray]


def _run(
    backend: str,
    root: Path,
    name: str,
    model: Path,
    data: Path,
    steps: int,
    resume: bool = False,
    *,
    shared: bool = True,
    checkpoint_every: int | None = 1,
    fail_at: int | None = None,
    algorithm: dict[str, Any] | None = None,
) -> TrainerRun:
    """``steps`` steps of the kit's spec; ``shared``: the backend-independent uniforms
    (else the stepper's own stream); ``fail_at``: the oracle call that is unavailable;
    ``algorithm``: the spec's algorithm section (default Nash-MD-PG, β = 0.25, τ = 0.1)."""
    from safetensors.numpy import load_file

    from nlhf.plugins import build_plugins, get_backend
    from nlhf.runio import read_metrics
    from nlhf.spec import RunSpec
    from nlhf.training import NashLoop

    out = root / name
    spec = RunSpec.model_validate(
        {
            "task": "nash",
            "seed": 3,
            "policy": {"model": str(model), "chat_template": False},
            "preference": {"name": "oracle", "function": "conformance_length"},
            "data": {"path": str(data), "shuffle": True},
            "algorithm": algorithm or {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1},
            "training": {
                "steps": steps,
                "batch_size": 4,
                "grad_accum": 2,
                "lr": 0.05,
                "optimizer": {"name": "sgd"},
                "generation": {"max_new_tokens": 4, "temperature": 1.0},
            },
            "output": {"dir": str(out), "checkpoint_every": checkpoint_every},
        }
    )
    impl = get_backend(backend)

    def make(spec: Any, checkpoint: Path | None, plugins: Any) -> Any:
        stepper = impl.make_nash_stepper(spec, checkpoint, plugins)
        if shared:
            stepper.uniforms = shared_uniforms
        return stepper

    plugins = build_plugins(extra=[_OraclePlugin(fail_at)])
    loop = NashLoop(spec, out, make, backend=backend, resume=resume, plugins=plugins)
    summary = loop.run()
    weights = load_file(out / "checkpoints" / f"step-{steps}" / "model.safetensors")
    return TrainerRun(read_metrics(out), summary, weights)


class TrainerConformance:
    """The trainer-level cases (see the module docstring); set ``backend``."""

    backend: ClassVar[str]
    reference_backends: ClassVar[tuple[str, ...]] = ("torch", "jax")
    """Compared with the first of these that is installed and is not ``backend``."""

    @pytest.fixture(scope="class")
    @classmethod
    def trainer_inputs(cls, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
        from nlhf.testing.tiny_models import build_tiny_model

        root = tmp_path_factory.mktemp(f"trainer-{cls.backend}")
        model = build_tiny_model(root / "model", "llama", seed=11, std=0.3)
        data = root / "prompts.jsonl"
        data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
        return root, model, data

    @pytest.fixture(scope="class")
    @classmethod
    def straight(cls, trainer_inputs: tuple[Path, Path, Path]) -> TrainerRun:
        root, model, data = trainer_inputs
        return _run(cls.backend, root, "straight", model, data, 3)

    def test_trainer_metrics_schema(self, straight: TrainerRun) -> None:
        from nlhf.training.loop import RECORD_KEYS

        assert [r["step"] for r in straight.records] == [1, 2, 3]
        need = set(RECORD_KEYS) | {"beta", "len_y_prime"}
        for record in straight.records:
            assert need <= record.keys(), sorted(need - record.keys())
            for key, value in record.items():
                if key != "kl_estimator" and value is not None:
                    assert math.isfinite(value), (key, value)
            assert record["grad_norm"] is not None and record["grad_norm"] > 0
            assert 0.0 < record["preference"] < 1.0

    def test_trainer_summary_schema(self, straight: TrainerRun) -> None:
        from nlhf.training.loop import SUMMARY_KEYS

        assert set(straight.summary) == set(SUMMARY_KEYS)
        assert straight.summary["backend"] == self.backend
        oracle = straight.summary["oracle"]  # the preference's summary hook ran, via the probe
        assert all(1 <= n <= 3 for n in oracle["sampled_lengths"])
        assert all(lp < 0 for lp in oracle["logp_eos_policy"] + oracle["logp_eos_reference"])
        assert oracle["logp_eos_policy"] != oracle["logp_eos_reference"]  # θ moved from μ
        steps = [r["step_seconds"] for r in straight.records]
        assert_close(
            straight.summary["seconds_per_step"], sum(steps) / 3, "float64", "seconds_per_step"
        )

    def test_trainer_resume_equals_uninterrupted(
        self, trainer_inputs: tuple[Path, Path, Path], straight: TrainerRun
    ) -> None:
        from nlhf.training.loop import TIMING_KEYS

        root, model, data = trainer_inputs
        _run(self.backend, root, "split", model, data, 2)
        resumed = _run(self.backend, root, "split", model, data, 3, resume=True)
        assert resumed.summary["resumed_from"] == 2
        for a, b in zip(straight.records, resumed.records, strict=True):
            assert {k: v for k, v in a.items() if k not in TIMING_KEYS} == {
                k: v for k, v in b.items() if k not in TIMING_KEYS
            }
        for name, value in straight.weights.items():
            np.testing.assert_array_equal(resumed.weights[name], value, err_msg=name)
        steps = [r["step_seconds"] for r in resumed.records]  # restored + new time, / total
        assert_close(
            resumed.summary["seconds_per_step"],
            sum(steps) / 3,
            "float64",
            "seconds_per_step after resume",
        )

    def test_trainer_preference_outage_resumes_exactly(
        self, trainer_inputs: tuple[Path, Path, Path]
    ) -> None:
        from nlhf.runio import list_checkpoints
        from nlhf.training.loop import TIMING_KEYS

        root, model, data = trainer_inputs
        own = {"shared": False, "checkpoint_every": None}
        straight = _run(self.backend, root, "own-stream", model, data, 3, **own)
        # 2 generation calls per step: call 6 is step 3's second, after one micro-batch
        with pytest.raises(PreferenceUnavailableError) as err:
            _run(self.backend, root, "outage", model, data, 3, fail_at=6, **own)
        message = str(err.value)
        assert "server is down" in message and "step 3 was abandoned" in message
        assert "holds step 2" in message and "--resume" in message
        assert [step for step, _ in list_checkpoints(root / "outage")] == [2]
        resumed = _run(self.backend, root, "outage", model, data, 3, resume=True, **own)
        assert resumed.summary["resumed_from"] == 2
        for a, b in zip(straight.records, resumed.records, strict=True):
            assert {k: v for k, v in a.items() if k not in TIMING_KEYS} == {
                k: v for k, v in b.items() if k not in TIMING_KEYS
            }
        for name, value in straight.weights.items():
            np.testing.assert_array_equal(resumed.weights[name], value, err_msg=name)

    @pytest.mark.slow
    @pytest.mark.parametrize("algorithm", list(GAME_FAMILY))
    def test_trainer_game_family_resume_equals_uninterrupted(
        self, trainer_inputs: tuple[Path, Path, Path], algorithm: str
    ) -> None:
        """1 step, then ``--resume`` to 3, equals 3 straight steps bit for bit for each LLM
        form of the game family: the checkpoint after step 1 carries mpo's magnet, onpo's
        previous gradient and egpo's anchor (step 1 is its half step)."""
        from nlhf.training.loop import TIMING_KEYS

        root, model, data = trainer_inputs
        algo = GAME_FAMILY[algorithm]
        straight = _run(self.backend, root, f"{algorithm}-3", model, data, 3, algorithm=algo)
        _run(self.backend, root, f"{algorithm}-1", model, data, 1, algorithm=algo)
        resumed = _run(self.backend, root, f"{algorithm}-1", model, data, 3, True, algorithm=algo)
        assert resumed.summary["resumed_from"] == 1
        for a, b in zip(straight.records, resumed.records, strict=True):
            assert {k: v for k, v in a.items() if k not in TIMING_KEYS} == {
                k: v for k, v in b.items() if k not in TIMING_KEYS
            }
        for name, value in straight.weights.items():
            np.testing.assert_array_equal(resumed.weights[name], value, err_msg=name)

    def test_trainer_matches_reference_backend(
        self, trainer_inputs: tuple[Path, Path, Path], straight: TrainerRun
    ) -> None:
        from nlhf.plugins import get_plugins

        backends = get_plugins().backends
        others = [
            name
            for name in self.reference_backends
            if name != self.backend and name in backends and backends.get(name).available()
        ]
        if not others:
            pytest.skip(f"none of {self.reference_backends} besides {self.backend} is installed")
        other = others[0]
        root, model, data = trainer_inputs
        ref = _run(other, root, f"reference-{other}", model, data, 3)
        assert set(straight.summary) == set(ref.summary)
        for mine, theirs in zip(straight.records, ref.records, strict=True):
            assert mine.keys() == theirs.keys()
            for key in COMPARED:
                assert_close(
                    mine[key], theirs[key], "float32", f"step {mine['step']} {key}", scope="model"
                )
        for name, value in ref.weights.items():
            assert_close(straight.weights[name], value, "float32", name, scope="model")
        for key in ("logp_eos_policy", "logp_eos_reference"):
            mine, theirs = straight.summary["oracle"][key], ref.summary["oracle"][key]
            assert_close(mine, theirs, "float32", f"summary hook {key}", scope="model")
