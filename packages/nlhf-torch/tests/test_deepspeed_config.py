"""DeepSpeed configuration layer (docs/distributed.md): spec -> DeepSpeed JSON, user JSON merge,
clear errors and launch helpers. None of these tests needs DeepSpeed installed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from nlhf.errors import InputError, NLHFError
from nlhf.spec import RunSpec
from nlhf.spec.models import NoDistributed
from nlhf_torch import distributed as D
from nlhf_torch.distributed import (
    DEEPSPEED_MISSING,
    build_deepspeed_config,
    launch_command,
    launch_env,
    load_user_config,
    parse_local_rank,
    require_deepspeed,
    world_size_from_env,
)


def make_spec(
    ds: dict[str, Any] | None = None, *, dtype: str = "float32", **training: Any
) -> RunSpec:
    raw: dict[str, Any] = {
        "policy": {"model": "tiny", "dtype": dtype},
        "preference": {"name": "oracle", "function": "length"},
        "data": {"path": "prompts.jsonl"},
        "algorithm": {"name": "nash_md_pg", "beta": 0.25, "tau": 0.1},
        "training": {"batch_size": 8, "grad_accum": 2, "max_grad_norm": 0.5, **training},
        "distributed": {"engine": "deepspeed", **(ds or {})},
    }
    return RunSpec.model_validate(raw)


# ----------------------------------------------------------------------- derivation
@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("offload", [False, True])
def test_stages_with_and_without_offload(stage: int, offload: bool) -> None:
    spec = make_spec(
        {
            "zero_stage": stage,
            "offload_optimizer": offload,
            "offload_params": offload and stage == 3,
        }
    )
    cfg = build_deepspeed_config(spec, world_size=2)
    assert cfg["train_batch_size"] == 8
    assert cfg["gradient_accumulation_steps"] == 2
    assert cfg["train_micro_batch_size_per_gpu"] == 2  # 8 / (2 processes × 2 accum)
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"] == {"enabled": False} and cfg["fp16"] == {"enabled": False}
    zero = cfg["zero_optimization"]
    assert zero["stage"] == stage
    assert zero["offload_optimizer"] == {"device": "cpu" if offload else "none"}
    if stage == 3:
        assert zero["offload_param"] == {"device": "cpu" if offload else "none"}
    else:
        assert "offload_param" not in zero
    # A torch optimizer under ZeRO-Offload needs DeepSpeed told so.
    assert cfg.get("zero_force_ds_cpu_optimizer", True) is (not offload)
    json.dumps(cfg)  # DeepSpeed takes it as JSON


@pytest.mark.parametrize(
    ("dtype", "bf16", "fp16"), [("bfloat16", True, False), ("float16", False, True)]
)
def test_precision_from_policy_dtype(dtype: str, bf16: bool, fp16: bool) -> None:
    cfg = build_deepspeed_config(make_spec(dtype=dtype), world_size=1)
    assert cfg["bf16"]["enabled"] is bf16 and cfg["fp16"]["enabled"] is fp16


def test_micro_batch_given_and_no_clipping() -> None:
    spec = make_spec({"micro_batch_size": 1}, batch_size=8, grad_accum=4, max_grad_norm=None)
    cfg = build_deepspeed_config(spec, world_size=2)
    assert cfg["train_micro_batch_size_per_gpu"] == 1
    assert cfg["gradient_accumulation_steps"] == 4
    assert cfg["gradient_clipping"] == 0.0


def test_user_json_extra_keys_kept_and_agreeing_keys_allowed() -> None:
    user = {
        "train_batch_size": 8,
        "gradient_clipping": 0.5,
        "steps_per_print": 1000,
        "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
    }
    cfg = build_deepspeed_config(make_spec({"config": user}), world_size=2)
    assert cfg["steps_per_print"] == 1000
    assert cfg["zero_optimization"]["overlap_comm"] is True
    assert cfg["zero_optimization"]["stage"] == 2
    assert cfg["zero_optimization"]["offload_optimizer"] == {"device": "none"}
    assert user["zero_optimization"] == {  # the spec's mapping is not mutated
        "stage": 2,
        "overlap_comm": True,
        "contiguous_gradients": True,
    }


def test_auto_values_are_filled(tmp_path: Path) -> None:
    user = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "zero_optimization": {
            "stage": "auto",
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "sub_group_size": 1000,
        },
    }
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user))
    spec = make_spec({"zero_stage": 3, "config": str(path)}, dtype="bfloat16")
    cfg = build_deepspeed_config(spec, world_size=4, hidden_size=32)
    assert cfg["train_batch_size"] == 8
    assert cfg["train_micro_batch_size_per_gpu"] == 1
    assert cfg["gradient_accumulation_steps"] == 2
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"] == {"enabled": True}
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3 and zero["sub_group_size"] == 1000
    assert zero["reduce_bucket_size"] == 32 * 32
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 32 * 32)
    assert zero["stage3_param_persistence_threshold"] == 320
    assert "auto" not in json.dumps(cfg)
    # Without the model's hidden size, unfillable "auto"s are left to DeepSpeed's defaults.
    cfg = build_deepspeed_config(spec, world_size=4)
    assert "reduce_bucket_size" not in cfg["zero_optimization"]
    assert "auto" not in json.dumps(cfg)


def test_relative_json_path_uses_base_dir(tmp_path: Path) -> None:
    (tmp_path / "ds.json").write_text('{"wall_clock_breakdown": true}')
    spec = make_spec({"config": "ds.json"})
    cfg = build_deepspeed_config(spec, world_size=1, base_dir=tmp_path)
    assert cfg["wall_clock_breakdown"] is True


# ------------------------------------------------------------------------ conflicts
def test_conflicts_are_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(
        json.dumps(
            {
                "train_batch_size": 32,
                "gradient_accumulation_steps": 4,
                "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}},
                "bf16": {"enabled": True},
                "gradient_clipping": 1.0,
                "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
            }
        )
    )
    spec = make_spec({"zero_stage": 2, "config": str(path)})
    with pytest.raises(InputError) as info:
        build_deepspeed_config(spec, world_size=2)
    msg = str(info.value)
    assert str(path) in msg and "7 setting(s)" in msg
    assert (
        "distributed.config.train_batch_size = 32 conflicts with training.batch_size = 8; "
        "remove it from the JSON or change the spec" in msg
    )
    assert "gradient_accumulation_steps = 4 conflicts with training.grad_accum = 2" in msg
    assert "zero_optimization.stage = 3 conflicts with distributed.zero_stage = 2" in msg
    assert (
        'offload_optimizer.device = "cpu" conflicts with distributed.offload_optimizer = false'
        in msg
    )
    assert "bf16.enabled = true conflicts with policy.dtype = float32" in msg
    assert "gradient_clipping = 1.0 conflicts with training.max_grad_norm = 0.5" in msg
    assert "distributed.config.optimizer conflicts with training.optimizer" in msg


def test_conflicting_micro_batch_names_its_derivation() -> None:
    spec = make_spec({"config": {"train_micro_batch_size_per_gpu": 4}})
    with pytest.raises(InputError, match=r"= 4 conflicts with training.batch_size / \(world"):
        build_deepspeed_config(spec, world_size=2)


def test_non_object_section_in_user_json() -> None:
    spec = make_spec({"zero_stage": 3, "config": {"zero_optimization": 2}})
    with pytest.raises(InputError, match=r"zero_optimization = 2 must be a JSON object") as info:
        build_deepspeed_config(spec, world_size=1)
    assert "1 setting(s)" in str(info.value)  # reported once, not once per derived key


def test_scheduler_in_user_json_is_rejected() -> None:
    spec = make_spec({"config": {"scheduler": {"type": "WarmupLR"}}})
    with pytest.raises(InputError, match=r"scheduler conflicts with training\.lr_schedule"):
        build_deepspeed_config(spec, world_size=1)


def test_offload_device_choice_is_the_jsons() -> None:
    user = {"zero_optimization": {"offload_optimizer": {"device": "nvme", "nvme_path": "/x"}}}
    spec = make_spec({"offload_optimizer": True, "config": user})
    cfg = build_deepspeed_config(spec, world_size=1)
    assert cfg["zero_optimization"]["offload_optimizer"] == {"device": "nvme", "nvme_path": "/x"}


# --------------------------------------------------------------------------- errors
def test_world_size_not_dividing_batch() -> None:
    spec = make_spec(batch_size=8, grad_accum=2)
    with pytest.raises(InputError) as info:
        build_deepspeed_config(spec, world_size=3)
    msg = str(info.value)
    assert "training.batch_size = 8 is not divisible by world size 3" in msg
    assert "= 6" in msg and "multiple of 6 (e.g. 12)" in msg and "--nproc" in msg


def test_micro_batch_inconsistent_with_batch() -> None:
    spec = make_spec({"micro_batch_size": 3}, batch_size=8, grad_accum=2)
    with pytest.raises(InputError, match=r"micro_batch_size = 3 × world size 2 × .* = 12"):
        build_deepspeed_config(spec, world_size=2)


@pytest.mark.parametrize(
    ("ds", "dtype", "needle"),
    [
        ({"zero_stage": 2, "offload_params": True}, "float32", "needs ZeRO stage 3"),
        ({"zero_stage": 0, "offload_optimizer": True}, "float32", "needs ZeRO stage 1, 2 or 3"),
        ({}, "float64", "not float64"),
    ],
)
def test_unsupported_combinations(ds: dict[str, Any], dtype: str, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        build_deepspeed_config(make_spec(ds, dtype=dtype), world_size=1)


def test_not_a_deepspeed_spec() -> None:
    spec = make_spec().model_copy(update={"distributed": NoDistributed()})
    with pytest.raises(InputError, match="not DeepSpeed"):
        build_deepspeed_config(spec, world_size=1)


def test_user_json_path_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(InputError, match=r"nope\.json' does not exist"):
        build_deepspeed_config(make_spec({"config": str(missing)}), world_size=1)
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "train_batch_size": 8,\n}\n')
    with pytest.raises(InputError, match=r"bad\.json' is not valid JSON: .* line 3"):
        load_user_config(str(bad))
    arr = tmp_path / "list.json"
    arr.write_text("[1, 2]")
    with pytest.raises(InputError, match="holds a JSON list"):
        load_user_config(arr)


def test_missing_deepspeed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` fails
    with pytest.raises(NLHFError) as info:
        require_deepspeed()
    assert str(info.value) == DEEPSPEED_MISSING
    assert "pip install nlhf-torch[deepspeed]" in DEEPSPEED_MISSING
    assert "DS_BUILD_OPS=0" in DEEPSPEED_MISSING and "DS_ACCELERATOR=cpu" in DEEPSPEED_MISSING


def test_broken_deepspeed_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found but not importable (e.g. a failed op build): the hint plus the import error."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "deepspeed":
            raise ImportError("libcuda.so: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.delitem(sys.modules, "deepspeed", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(NLHFError, match=r"pip install nlhf-torch\[deepspeed\].*libcuda\.so"):
        require_deepspeed()


# --------------------------------------------------------------------------- launch
@pytest.mark.parametrize(
    ("argv", "rank", "rest"),
    [
        (["run", "--local_rank=1", "spec.yaml"], 1, ["run", "spec.yaml"]),
        (["--local_rank", "3", "spec.yaml"], 3, ["spec.yaml"]),
        (["spec.yaml", "--local-rank=0"], 0, ["spec.yaml"]),
    ],
)
def test_parse_local_rank(
    argv: list[str], rank: int, rest: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert parse_local_rank(argv) == (rank, rest)


def test_parse_local_rank_env_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert parse_local_rank(["a"]) == (None, ["a"])
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert parse_local_rank(["a"]) == (2, ["a"])
    with pytest.raises(InputError, match="non-negative integer, got 'x'"):
        parse_local_rank(["--local_rank=x"])
    with pytest.raises(InputError, match="needs a value"):
        parse_local_rank(["--local_rank"])


def test_launch_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert launch_env() == {"DS_ACCELERATOR": "cpu"} and launch_env(cpu=False) == {}
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    assert D.dist_backend() == "gloo"
    cmd = launch_command("spec.yaml", 2, ["--resume"])
    assert cmd[:5] == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
    ]
    assert cmd[5:] == ["-m", "nlhf_torch.launch", "spec.yaml", "--resume"]
    with pytest.raises(InputError, match="--nproc must be >= 1"):
        launch_command("spec.yaml", 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert world_size_from_env() == 2
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(InputError, match="WORLD_SIZE='two'"):
        world_size_from_env()


def test_config_accepted_by_deepspeed() -> None:
    """When DeepSpeed happens to be installed, its own parser accepts the config."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig

    spec = make_spec({"zero_stage": 3, "offload_optimizer": True, "offload_params": True})
    parsed = DeepSpeedConfig(build_deepspeed_config(spec, world_size=1))
    assert parsed.train_batch_size == 8 and parsed.zero_optimization_stage == 3
    assert parsed.gradient_accumulation_steps == 2
