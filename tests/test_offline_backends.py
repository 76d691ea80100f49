"""``task: offline``: torch and jax take the same first steps from the same tiny models and
pairs: the records within the float32 model tolerance, and under SGD the parameters too
(Adam's normalised step m/√v turns float32 rounding in near-zero gradient entries into
parameter differences of order lr, so parameters are compared where the step is linear in
the gradient)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nlhf.spec.models import RunSpec
from nlhf.testing.offline import build_offline_fixture
from nlhf.testing.tolerances import assert_close
from nlhf.training.offline import run_offline

pytest.importorskip("torch")
pytest.importorskip("jax")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "optimizer", "lr"), [("dpo", "adamw", 0.005), ("ipo", "sgd", 0.05)]
)
def test_torch_and_jax_agree_on_the_first_steps(
    tmp_path: Path, name: str, optimizer: str, lr: float
) -> None:
    from safetensors.numpy import load_file

    fx = build_offline_fixture(tmp_path / "fx")
    records, weights = {}, {}
    for backend in ("torch", "jax"):
        out = tmp_path / backend
        spec = RunSpec.model_validate(
            {
                "task": "offline",
                "policy": {"model": str(fx["policy"])},
                "reference": {"model": str(fx["reference"])},
                "data": {"path": str(fx["pairs"]), "format": "preference"},
                "algorithm": {"name": name, "tau": 0.5},
                "training": {
                    "steps": 3,
                    "epochs": 2,
                    "batch_size": 4,
                    "grad_accum": 2,
                    "lr": lr,
                    "optimizer": {"name": optimizer},
                },
                "output": {"dir": str(out)},
            }
        )
        summary = run_offline(spec, out, backend=backend)
        records[backend] = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
        weights[backend] = load_file(str(Path(summary["checkpoint"]) / "model.safetensors"))
    assert [r["step"] for r in records["torch"]] == [1, 2, 3]
    for key in ("loss", "margin", "chosen_ratio", "rejected_ratio", "grad_norm"):
        assert_close(
            [r[key] for r in records["jax"]],
            [r[key] for r in records["torch"]],
            "float32",
            f"{name} {key}",
            scope="model",
        )
    assert weights["jax"].keys() == weights["torch"].keys()
    if optimizer != "sgd":
        return
    for key, value in weights["torch"].items():
        assert_close(weights["jax"][key], value, "float32", key, scope="model")
    assert not np.array_equal(
        weights["torch"]["lm_head.weight"],
        load_file(str(fx["policy"] / "model.safetensors"))["lm_head.weight"],
    )  # the steps moved θ
