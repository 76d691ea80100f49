"""What the torch backend declares it runs (:data:`nlhf_torch.plugin.CAPABILITIES`) agrees
with its code (the algorithms of the core loop), and ``TorchBackend`` refuses the rest
before any model loads: ``train`` (e.g. ``top_k`` in an evaluation, which samples the full
vocabulary) and ``launch_command`` (a task it cannot launch)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nlhf.errors import NLHFError, SpecError
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


@pytest.mark.parametrize(
    "task",
    [
        {"algorithm": {"name": "nash_md_pg"}, "preference": {"name": "llm_judge", "model": "j"}},
        {"task": "offline", "algorithm": {"name": "dpo", "tau": 0.1}},
        {
            "task": "evaluate",
            "preference": {"name": "llm_judge", "model": "j"},
            "eval": {"policies": ["reference"]},
        },
    ],
    ids=["nash", "offline", "evaluate"],
)
def test_train_checks_capabilities_once(
    task: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``TorchBackend.train`` of a spec it runs calls :func:`nlhf.spec.capabilities.require`
    once (in ``nash_loop`` / ``offline_loop``, or in the backend for the other tasks), then
    fails on the missing model."""
    import nlhf.spec.capabilities as capabilities
    import nlhf_torch.backend as backend

    calls: list[str] = []
    real = capabilities.require

    def counted(spec: RunSpec, name: str, *args: object, **kwargs: object) -> None:
        calls.append(name)
        real(spec, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(capabilities, "require", counted)
    monkeypatch.setattr(backend, "require", counted)
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "x", "chosen": "a", "rejected": "b"}\n')
    spec = RunSpec.model_validate(
        {"policy": {"model": str(tmp_path / "no-such-model")}, "data": {"path": str(data)}, **task}
    )
    with pytest.raises(NLHFError, match="no-such-model"):  # a located error, never a traceback
        TorchBackend().train(spec, tmp_path / "out")
    assert calls == ["torch"]
