"""The torch and jax tabular runners (``nlhf_torch.tabular``, ``nlhf_jax.tabular``) against
the NumPy runner, the oracle: same π_T, same metrics.jsonl (float64, 1e-10), same
InputError for η·τ > 1; float64 stays local (no global dtype / x64 switch flipped)."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nlhf.errors import InputError
from nlhf.spec.models import RunSpec
from nlhf.tabular import runner
from nlhf.testing.tolerances import assert_close

BACKENDS = [pytest.param("jax", marks=pytest.mark.jax),
            pytest.param("torch", marks=pytest.mark.torch)]  # fmt: skip


def _train_tabular(backend: str) -> Any:
    pytest.importorskip(backend)
    return importlib.import_module(f"nlhf_{backend}.tabular").train_tabular


def _default_dtype(backend: str) -> str:
    """The framework's default float dtype (must not change: float64 is scoped)."""
    if backend == "jax":
        import jax.numpy as jnp

        return str(jnp.zeros(1).dtype)
    import torch

    return str(torch.get_default_dtype())


MU = [0.5, 0.3, 0.2]
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "nash_md": ("population", {"name": "nash_md", "tau": 0.3, "steps": 300, "log_every": 1}),
    "omd": ("population", {"name": "omd", "tau": 0.2, "steps": 300}),
    "self_play_tau_schedule": (
        "population",
        {
            "name": "self_play",
            "tau": {"kind": "linear", "start": 0.5, "end": 0.1},
            "eta": 0.5,
            "steps": 300,
        },
    ),
    "self_play_cycling": (
        "rps",
        {"name": "self_play", "tau": 0.0, "eta": 1.0, "steps": 300, "log_every": 7},
    ),
    "best_response": ("population", {"name": "best_response", "tau": 0.2}),
    "egpo": ("population", {"name": "egpo", "tau": 0.1, "steps": 300}),
    "egpo_tau0": ("rps", {"name": "egpo", "tau": 0.0, "steps": 300}),
    # a magnet refresh every 50 steps: not a divisor of the 64-step chunks
    "mpo_magnet": ("rps", {"name": "mpo", "tau": 0.2, "magnet_every": 50, "steps": 300}),
    "onpo": ("population", {"name": "onpo", "tau": 0.1, "steps": 300}),
    "inpo": ("rps", {"name": "inpo", "tau": 0.1, "steps": 300}),
    "sppo": ("rps", {"name": "sppo", "steps": 300, "log_every": 7}),
    "best_response_tau0": ("rps", {"name": "best_response", "tau": 0.0}),
}
CLOSE = (
    "policy",
    "duality_gap",
    "exploitability",
    "kl_to_reference",
    "kl_to_solution",
    "average_policy",  # sppo's average iterate
    "average_duality_gap",
    "average_exploitability",
    "average_kl_to_solution",
)


def _spec(game: str, algorithm: dict[str, Any]) -> RunSpec:
    return RunSpec.model_validate(
        {
            "spec_version": 1,
            "task": "nash",
            "preference": {"name": "tabular", "game": game},
            "reference": {"probs": MU},
            "algorithm": algorithm,
            "output": {"dir": "unused"},
        }
    )


def _metrics(run: Path) -> list[dict[str, float]]:
    return [
        {k: float(v) for k, v in json.loads(line).items()}  # "inf" is written as a string
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_tabular_matches_the_numpy_runner(
    backend: str, case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_tabular = _train_tabular(backend)

    game, algorithm = CASES[case]
    spec = _spec(game, algorithm)
    expected = runner.train_spec(spec, tmp_path / "numpy", progress=False)
    dtype_before = _default_dtype(backend)
    monkeypatch.setattr(runner, "CHUNK_STEPS", 64)  # several chunks: log π carried across
    summary = train_tabular(spec, tmp_path / backend)
    assert _default_dtype(backend) == dtype_before

    assert summary["backend"] == backend and expected["backend"] == "numpy"
    assert np.max(np.abs(np.asarray(expected["policy"]) - MU)) > 1e-2  # the run moved
    assert_close(summary["policy"], expected["policy"], "float64", f"{case} π_T")
    for key in sorted(expected.keys() - {"backend", "seconds", *CLOSE}):
        assert summary[key] == expected[key], key
    for key in CLOSE[1:]:
        if key in expected:
            assert_close(summary[key], expected[key], "float64", f"{case} summary {key}")
    assert (algorithm["name"] == "sppo") == ("average_policy" in summary)
    got, want = _metrics(tmp_path / backend), _metrics(tmp_path / "numpy")
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for key in want[0]:
        assert_close([r[key] for r in got], [r[key] for r in want], "float64", f"{case} {key}")
    assert (tmp_path / backend / "spec.resolved.yaml").read_text() == (
        tmp_path / "numpy" / "spec.resolved.yaml"
    ).read_text()


@pytest.mark.parametrize("backend", BACKENDS)
def test_eta_tau_above_one_is_the_numpy_input_error(backend: str, tmp_path: Path) -> None:
    train_tabular = _train_tabular(backend)

    spec = _spec("population", {"name": "nash_md", "tau": 0.5, "eta": 3.0, "steps": 20})
    with pytest.raises(InputError, match=r"eta·tau = 3·0.5 = 1.5 > 1 at step 0") as numpy_err:
        runner.train_spec(spec, tmp_path / "numpy", progress=False)
    with pytest.raises(InputError, match=f"^{re.escape(str(numpy_err.value))}$"):
        train_tabular(spec, tmp_path / backend)
    assert not (tmp_path / backend).exists()  # checked before anything is written
