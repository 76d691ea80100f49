"""What the torch backend declares it runs (:data:`nlhf_torch.plugin.CAPABILITIES`) agrees
with its code (the algorithms of the core loop), and ``TorchBackend`` refuses the rest
before any model loads: ``train`` (e.g. ``top_k`` in an evaluation, which samples the full
vocabulary) and ``launch_command`` (a task it cannot launch)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nlhf.errors import SpecError
from nlhf.spec import DeepSpeedSpec, RunSpec
from nlhf.training.algorithms import RULES
from nlhf_torch.backend import TorchBackend
from nlhf_torch.plugin import CAPABILITIES


def test_declared_algorithms_are_the_core_loop_s() -> None:
    assert set(CAPABILITIES.algorithms) == set(RULES)
    assert TorchBackend.capabilities is CAPABILITIES


def test_train_refuses_before_any_model_loads(tmp_path: Path) -> None:
    spec = RunSpec.model_validate(
        {
            "task": "evaluate",
            "policy": {"model": str(tmp_path / "no-such-model")},
            "preference": {"name": "llm_judge", "model": "judge"},
            "data": {"path": "p.jsonl"},
            "training": {"generation": {"top_k": 3}},
            "eval": {"policies": ["reference"]},
        }
    )
    with pytest.raises(SpecError) as info:
        TorchBackend().train(spec, tmp_path / "out")
    assert info.value.issues == [
        "training.generation.top_k: 3 is not supported by backend 'torch': it samples from the "
        "full vocabulary (exact Nash-MD-PG gradients need it); set top_k: 0"
    ]
    assert not (tmp_path / "out").exists()
    spec.training.generation.top_k = 0
    spec.distributed = DeepSpeedSpec()
    with pytest.raises(SpecError, match="task: 'evaluate' has no distributed launch"):
        TorchBackend().launch_command(spec, "spec.yaml", 2)
