"""Backend capabilities as data (:mod:`nlhf.spec.capabilities`): one test per rule on
synthetic capabilities, the registry path (``register(..., capabilities=...)``), the located
format of ``nlhf validate --backend`` and the check ``nlhf run`` makes before a backend is
even created. The real backends' declarations are tested in tests/test_backend_capabilities.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import nlhf
import pytest
from nlhf import cli
from nlhf import plugins as plugins_mod
from nlhf.errors import PluginError, SpecError, UnknownNameError
from nlhf.spec import RunSpec, load_spec
from nlhf.spec.capabilities import (
    Capabilities,
    Problem,
    capabilities_of,
    check_capabilities,
    check_spec_file,
    require,
)
from pydantic import ValidationError
from typer.testing import CliRunner

runner = CliRunner()

ALL_LLM = ("nash_md_pg", "nash_ema_pg", "self_play", "best_response", "rlhf_pg", "online_ipo")
TABULAR = ("nash_md", "omd", "self_play", "best_response")
FULL = Capabilities(
    tasks=("nash", "preference_model", "evaluate"),
    tabular_tasks=("nash",),
    algorithms=ALL_LLM,
    tabular_algorithms=TABULAR,
    preferences=("bradley_terry_reward", "llm_judge", "oracle", "pairwise_model"),
    engines={"nash": ("none", "jax"), "preference_model": ("none", "jax")},
    lora=("nash", "preference_model"),
    dtypes=("float32", "float64", "bfloat16", "float16"),
    top_k=True,
    batch_axes=("data", "fsdp"),
    launch_tasks=("nash",),
    launch_engines=("jax",),
)
"""Supports everything the rules ask about, so each test below removes one thing."""
TABULAR_ONLY = Capabilities(tabular_tasks=("nash",), tabular_algorithms=TABULAR)


def llm(**sections: Any) -> RunSpec:
    data: dict[str, Any] = {
        "task": "nash",
        "policy": {"model": "m"},
        "preference": {"name": "bradley_terry_reward", "path": "rm"},
        "data": {"path": "p.jsonl"},
        "algorithm": {"name": "nash_md_pg"},
        "training": {"batch_size": 8},
    }
    data.update(sections)
    return RunSpec.model_validate(data)


def tabular(**sections: Any) -> RunSpec:
    data: dict[str, Any] = {
        "preference": {"name": "tabular", "game": "rps"},
        "algorithm": {"name": "nash_md", "tau": 0.1},
    }
    data.update(sections)
    return RunSpec.model_validate(data)


def only(caps: Capabilities, **changes: Any) -> Capabilities:
    return caps.model_copy(update=changes)


def problems(spec: RunSpec, caps: Capabilities, **kw: Any) -> list[str]:
    return [str(p) for p in check_capabilities(spec, caps, "b", **kw)]


# ------------------------------------------------------------------------- the data
def test_full_capabilities_accept_a_plain_spec() -> None:
    assert problems(llm(), FULL) == []
    assert problems(tabular(), FULL) == []


def test_capabilities_reject_unknown_names_and_are_frozen() -> None:
    with pytest.raises(ValidationError, match=r"algorithms: unknown 'nash_md' \(known: nash_md_pg"):
        Capabilities(algorithms=("nash_md",))  # a tabular algorithm in the LLM list
    with pytest.raises(ValidationError, match=r"engines\.nash: unknown 'horovod'"):
        Capabilities(engines={"nash": ("none", "horovod")})
    with pytest.raises(ValidationError, match="tasks"):
        Capabilities(tasks=("train",))
    with pytest.raises(ValidationError, match="extra"):
        Capabilities(gpus=True)
    with pytest.raises(ValidationError, match="frozen"):
        FULL.top_k = False  # type: ignore[misc]


def test_describe_lists_what_is_supported() -> None:
    rows = dict(FULL.describe())
    assert rows["tasks"] == "nash, preference_model, evaluate"
    assert rows["distributed"] == "none, jax (nash, preference_model); none (evaluate)"
    assert rows["--nproc N"] == "jax (nash)"
    assert rows["tabular"] == "nash: nash_md, omd, self_play, best_response"
    assert dict(TABULAR_ONLY.describe()) == {
        "tasks": "none",
        "tabular": "nash: nash_md, omd, self_play, best_response",
    }


# ----------------------------------------------------------------------- one per rule
def test_task_llm_spec_on_a_tabular_backend() -> None:
    got = problems(llm(), TABULAR_ONLY, others={"t": FULL, "n": TABULAR_ONLY})
    assert got == [
        "task: 'nash' with an LLM policy is not supported by backend 'b' (LLM tasks: none; "
        "tabular tasks: nash); use --backend t"
    ]  # one problem: the other rules describe a task this backend does not run


def test_task_tabular_spec_on_an_llm_backend() -> None:
    got = problems(tabular(), only(FULL, tabular_tasks=()), others={"n": TABULAR_ONLY})
    assert got == [
        "task: 'nash' with a tabular preference is not supported by backend 'b' (LLM tasks: "
        "nash, preference_model, evaluate; tabular tasks: none); use --backend n"
    ]
    got = problems(tabular(task="evaluate", algorithm=None, eval={"policies": ["a"]}), FULL)
    assert got[0].endswith("tabular win-rates are exact: `nlhf eval SPEC --backend numpy`")


def test_task_not_declared() -> None:
    spec = llm(task="preference_model", preference=None, algorithm=None)
    assert problems(spec, only(FULL, tasks=("nash",))) == [
        "task: 'preference_model' with an LLM policy is not supported by backend 'b' "
        "(LLM tasks: nash; tabular tasks: nash)"
    ]


def test_tabular_algorithm_and_engine() -> None:
    caps = only(FULL, tabular_algorithms=("nash_md",))
    assert problems(tabular(algorithm={"name": "omd"}), caps) == [
        "algorithm.name: 'omd' is not supported by backend 'b' (supported: nash_md)"
    ]
    assert problems(tabular(distributed={"engine": "jax"}), FULL) == [
        "distributed.engine: 'jax': tabular runs are single-process; remove the distributed section"
    ]


def test_llm_algorithm() -> None:
    caps = only(FULL, algorithms=("nash_md_pg",))
    assert problems(llm(algorithm={"name": "online_ipo"}), caps, others={"t": FULL}) == [
        "algorithm.name: 'online_ipo' is not supported by backend 'b' (supported: nash_md_pg); "
        "use --backend t"
    ]


def test_preference_kind() -> None:
    caps = only(FULL, preferences=("oracle",))
    spec = llm(preference={"name": "llm_judge", "model": "j"})
    assert problems(spec, caps) == [
        "preference.name: 'llm_judge' is not supported by backend 'b' (supported: oracle)"
    ]
    evaluate = llm(task="evaluate", algorithm=None, preference=None, eval={"policies": ["a"]})
    assert problems(evaluate, caps) == []  # filled from a run directory later


class PrefPlugin:
    __name__ = "pref_plugin"

    @nlhf.hookimpl
    def nlhf_register_preference_models(self, register: Any) -> None:
        register("mine", object, backends=("b",))
        register("theirs", object, backends=("other",))

    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        register("no_reward", object, reward=False)
        register("unsaid", object)


@pytest.fixture
def plugin_set(monkeypatch: pytest.MonkeyPatch) -> plugins_mod.Plugins:
    monkeypatch.setenv("NLHF_PLUGINS", "")
    return plugins_mod.build_plugins(extra=[PrefPlugin()])


def test_plugin_preference_models(plugin_set: plugins_mod.Plugins) -> None:
    spec = llm(preference={"name": "mine"})
    assert problems(spec, FULL) == [
        "preference.name: plugin preference model 'mine' is not built by backend 'b' "
        "(supported: bradley_terry_reward, llm_judge, oracle, pairwise_model)"
    ]
    builds = only(FULL, plugin_preferences=True)
    assert problems(spec, builds, plugins=plugin_set) == []
    theirs = llm(preference={"name": "theirs"})  # its registration lists backend 'other' only
    assert len(problems(theirs, builds, plugins=plugin_set)) == 1
    assert problems(theirs, builds) == []  # without the registry there is nothing to go by


@pytest.mark.parametrize(
    "pref", [{"name": "llm_judge", "model": "j"}, {"name": "pairwise_model", "path": "pm"}]
)
def test_rlhf_pg_needs_a_scalar_reward(pref: dict[str, str]) -> None:
    got = problems(llm(algorithm={"name": "rlhf_pg"}, preference=pref), FULL)
    assert got == [
        f"algorithm.name: rlhf_pg needs a scalar reward r(x, y), and preference "
        f"{pref['name']!r} gives P(y ≻ y′) only; use a bradley_terry_reward preference (or an "
        "oracle with `reward`), or a preference-based algorithm such as nash_md_pg"
    ]
    assert problems(llm(algorithm={"name": "rlhf_pg"}), FULL) == []  # bradley_terry_reward


def test_rlhf_pg_with_an_oracle_is_decided_by_its_registration(
    plugin_set: plugins_mod.Plugins,
) -> None:
    def spec(function: str) -> RunSpec:
        return llm(
            algorithm={"name": "rlhf_pg"}, preference={"name": "oracle", "function": function}
        )

    (got,) = problems(spec("no_reward"), FULL, plugins=plugin_set)
    assert "oracle 'no_reward' has none (registered with reward=False)" in got
    assert problems(spec("unsaid"), FULL, plugins=plugin_set) == []  # decided when it is built
    assert problems(spec("no_reward"), FULL) == []  # no registry given: nothing to go by


def test_engine_per_task() -> None:
    spec = llm(distributed={"engine": "deepspeed"})
    assert problems(spec, FULL, others={"t": only(FULL, engines={"nash": ("deepspeed",)})}) == [
        "distributed.engine: 'deepspeed' is not supported by backend 'b' (supported: none, jax); "
        "use --backend t"
    ]
    evaluate = llm(
        task="evaluate", algorithm=None, eval={"policies": ["a"]}, distributed={"engine": "jax"}
    )
    assert problems(evaluate, FULL) == [
        "distributed.engine: 'jax' is not supported by backend 'b' for task 'evaluate' "
        "(supported: none)"
    ]


def test_dtypes_of_every_model() -> None:
    caps = only(FULL, dtypes=("float32",))
    spec = llm(
        policy={"model": "m", "dtype": "bfloat16"},
        reference={"model": "r", "dtype": "float16"},
        preference={"name": "bradley_terry_reward", "path": "rm", "dtype": "float64"},
    )
    assert problems(spec, caps) == [
        "reference.dtype: 'float16' is not supported by backend 'b' (supported: float32)",
        "policy.dtype: 'bfloat16' is not supported by backend 'b' (supported: float32)",
        "preference.dtype: 'float64' is not supported by backend 'b' (supported: float32)",
    ]


def test_top_k_where_responses_are_sampled() -> None:
    caps = only(FULL, top_k=False)
    gen = {"batch_size": 8, "generation": {"top_k": 5}}
    (got,) = problems(llm(training=gen), caps)
    assert got.startswith("training.generation.top_k: 5 is not supported by backend 'b': it ")
    evaluate = llm(task="evaluate", algorithm=None, training=gen, eval={"policies": ["a"]})
    assert len(problems(evaluate, caps)) == 1
    pm = llm(task="preference_model", algorithm=None, preference=None, training=gen)
    assert problems(pm, caps) == []  # preference training samples nothing
    assert problems(llm(training=gen), FULL) == []


def test_lora_per_task() -> None:
    caps = only(FULL, lora=("nash",))
    lora = {"model": "m", "lora": {"r": 4}}
    assert problems(llm(policy=lora), caps) == []
    pm = llm(task="preference_model", algorithm=None, preference=None, policy=lora)
    assert problems(pm, caps, others={"t": FULL}) == [
        "policy.lora: LoRA is not supported by backend 'b' for task 'preference_model' (LoRA "
        "tasks: nash); remove policy.lora to train every parameter; use --backend t"
    ]
    evaluate = llm(task="evaluate", algorithm=None, policy=lora, eval={"policies": ["a"]})
    assert problems(evaluate, only(FULL, lora=())) == []  # evaluation reads checkpoints


def test_lora_with_reference_model() -> None:
    spec = llm(policy={"model": "m", "lora": {"r": 4}}, reference={"model": "r"})
    assert problems(spec, FULL) == [
        "reference.model: with policy.lora the reference is the policy with its adapter "
        "disabled; remove reference.model"
    ]
    assert problems(spec, only(FULL, lora_with_reference_model=True)) == []


def test_grad_accum_must_divide_the_batch() -> None:
    spec = llm(training={"batch_size": 8})
    spec.training.grad_accum = 3  # the schema refuses it in a file; Python callers can set it
    assert problems(spec, FULL) == [
        "training.grad_accum: batch_size 8 is not divisible by grad_accum 3; each optimiser "
        "step takes batch_size prompts in grad_accum equal micro-batches"
    ]


@pytest.mark.parametrize(
    ("batch", "accum", "mesh", "ways"),
    [
        (8, 1, {"data": 2, "fsdp": 2, "tensor": 3}, None),
        (12, 2, {"data": 2, "fsdp": 2, "tensor": 3}, 4),
        (6, 1, {"fsdp": 4}, 4),
        (6, 1, {"tensor": 4}, None),
    ],
)
def test_mesh_batch_axes_must_divide_the_micro_batch(
    batch: int, accum: int, mesh: dict[str, int], ways: int | None
) -> None:
    spec = llm(
        training={"batch_size": batch, "grad_accum": accum},
        distributed={"engine": "jax", "mesh": mesh},
    )
    got = problems(spec, FULL)
    if ways is None:  # the product of the data and fsdp sizes divides batch / accum
        assert got == []
        return
    assert got == [
        f"training.batch_size: micro-batches of {batch // accum} prompts (batch_size / grad_accum) "
        f"cannot be split over the {ways} data-parallel devices of distributed.mesh {mesh} (axes "
        f"data, fsdp); use a multiple of {ways}"
    ]


def test_launch_rules() -> None:
    no_launch = only(FULL, launch_tasks=(), launch_engines=())
    assert problems(llm(), no_launch, nproc=2, others={"t": FULL}) == [
        "--nproc 2: backend 'b' has no distributed launch; run with --nproc 1; use --backend t"
    ]
    assert problems(llm(), FULL, nproc=1) == []
    assert problems(llm(), FULL, nproc=4) == [
        "distributed.engine: 'none' runs one process; --nproc 4 on backend 'b' needs jax: add "
        "`distributed: {engine: jax}` to the spec (or --set distributed.engine=jax), or run with "
        "--nproc 1"
    ]
    jax = {"engine": "jax", "mesh": {"data": 1}}
    assert problems(llm(distributed=jax), FULL, nproc=4) == []
    pm = llm(task="preference_model", algorithm=None, preference=None, distributed=jax)
    assert problems(pm, FULL, nproc=2) == [
        "task: 'preference_model' has no distributed launch on backend 'b' (--nproc 2 runs: "
        "nash); use --nproc 1"
    ]
    assert problems(tabular(), FULL, nproc=2) == [
        "--nproc 2: tabular runs are single-process; run with --nproc 1"
    ]


# ---------------------------------------------------------------------- the registry
class CapsPlugin:
    __name__ = "caps_plugin"

    @nlhf.hookimpl
    def nlhf_register_backends(self, register: Any) -> None:
        register("declared", _never, capabilities=TABULAR_ONLY)
        register("as_dict", _never, capabilities={"tabular_tasks": ["nash"]})
        register("bad", _never, capabilities={"tabular_task": ["nash"]})
        register("silent", _never)


def _never() -> Any:
    raise AssertionError("a capability check created the backend")


@pytest.fixture
def caps_plugins(monkeypatch: pytest.MonkeyPatch) -> plugins_mod.Plugins:
    monkeypatch.setenv("NLHF_PLUGINS", "")
    built = plugins_mod.build_plugins(extra=[CapsPlugin()])
    monkeypatch.setattr(plugins_mod, "get_plugins", lambda: built)
    return built


def test_capabilities_come_from_the_registration(caps_plugins: plugins_mod.Plugins) -> None:
    assert capabilities_of("declared") is TABULAR_ONLY
    assert capabilities_of("as_dict") == Capabilities(tabular_tasks=("nash",))
    assert capabilities_of("silent") is None
    with pytest.raises(
        PluginError,
        match=r"backend 'bad' \(caps_plugin\): invalid capabilities: "
        r"tabular_task: Extra inputs are not permitted",
    ):
        capabilities_of("bad")


def test_require_raises_one_spec_error(caps_plugins: plugins_mod.Plugins) -> None:
    with pytest.raises(SpecError) as info:
        require(llm(distributed={"engine": "jax"}), "x", only(FULL, engines={}, top_k=False))
    assert info.value.issues == [
        "distributed.engine: 'jax' is not supported by backend 'x' (supported: none)"
    ]
    require(tabular(), "declared")  # by name, through the registry
    require(llm(), "silent")  # nothing declared: nothing to check
    with pytest.raises(SpecError, match="task: 'nash' with an LLM policy"):
        require(llm(), "declared")


def test_require_falls_back_to_the_process_wide_backends(
    caps_plugins: plugins_mod.Plugins, plugin_set: plugins_mod.Plugins
) -> None:
    """A trainer handed a test's plugin set (oracles only) still finds its backend."""
    assert "declared" not in plugin_set.backends
    with pytest.raises(SpecError, match="task: 'nash' with an LLM policy"):
        require(llm(), "declared", plugins=plugin_set)
    with pytest.raises(UnknownNameError, match="unknown backend 'nope'"):
        require(llm(), "nope", plugins=plugin_set)


SPEC = """\
spec_version: 1
task: nash
policy: {model: m, dtype: float64}
preference: {name: bradley_terry_reward, path: rm}
data: {path: p.jsonl}
algorithm: {name: nash_md_pg}
training:
  batch_size: 8
  generation: {top_k: 5}
distributed: {engine: deepspeed}
"""


class LLMPlugin:
    __name__ = "llm_plugin"
    created: ClassVar[list[str]] = []

    @nlhf.hookimpl
    def nlhf_register_backends(self, register: Any) -> None:
        register("numpy", _never, capabilities=TABULAR_ONLY)
        register("mine", self._create, capabilities=only(FULL, dtypes=("float32",), top_k=False))

    def _create(self) -> Any:
        LLMPlugin.created.append("mine")
        raise AssertionError("created")


@pytest.fixture
def llm_plugins(monkeypatch: pytest.MonkeyPatch) -> plugins_mod.Plugins:
    monkeypatch.setenv("NLHF_PLUGINS", "")
    built = plugins_mod.build_plugins(extra=[LLMPlugin()])
    monkeypatch.setattr(plugins_mod, "get_plugins", lambda: built)
    LLMPlugin.created = []
    return built


def test_check_spec_file_locates_every_problem(tmp_path: Path, llm_plugins: Any) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SPEC)
    overrides = ["algorithm.name=online_ipo", "reference.dtype=bfloat16"]
    spec = load_spec(path, overrides)
    with pytest.raises(SpecError) as info:
        check_spec_file(spec, "mine", path, overrides, nproc=2)
    assert info.value.issues == [
        f"{path}:3:27: policy.dtype: 'float64' is not supported by backend 'mine' (supported: "
        "float32)",
        f"{path}:9:23: training.generation.top_k: 5 is not supported by backend 'mine': it "
        "samples from the full vocabulary (exact Nash-MD-PG gradients need it); set top_k: 0",
        f"{path}:10:23: distributed.engine: 'deepspeed' is not supported by backend 'mine' "
        "(supported: none, jax)",
        "--set reference.dtype=bfloat16: reference.dtype: 'bfloat16' is not supported by "
        "backend 'mine' (supported: float32)",
    ]
    assert (
        check_spec_file(
            load_spec(
                path,
                ["policy.dtype=float32", "training.generation.top_k=0", "distributed.engine=none"],
            ),
            "mine",
            path,
        )
        is not None
    )


def test_cli_validate_backend_exit_2_located(tmp_path: Path, llm_plugins: Any) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SPEC)
    result = runner.invoke(cli.get_app(plugins=False), ["validate", str(path), "-b", "mine"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        f"{path}:3:27",
        f"{path}:9:23",
        f"{path}:10:23",
        "error",
    ]
    assert lines[-1] == "error: 3 problems in the spec"
    assert "Traceback" not in result.output
    # the default backend (torch, not registered here) is reported, not an error
    result = runner.invoke(cli.get_app(plugins=False), ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "backend torch is not installed: its capabilities were not checked" in result.stdout
    result = runner.invoke(cli.get_app(plugins=False), ["validate", str(path), "-b", "nope"])
    assert result.exit_code == 1
    assert "unknown backend 'nope'" in result.stderr
    assert LLMPlugin.created == []


def test_cli_run_checks_before_creating_the_backend(tmp_path: Path, llm_plugins: Any) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SPEC)
    out = tmp_path / "out"
    for extra in ([], ["--nproc", "2"]):
        args = ["run", str(path), "-b", "mine", "-o", str(out), *extra]
        result = runner.invoke(cli.get_app(plugins=False), args)
        assert result.exit_code == 2, result.output
        assert f"{path}:10:23: distributed.engine: 'deepspeed'" in result.stderr
    assert LLMPlugin.created == [] and not out.exists()


def test_cli_backends_prints_capabilities(llm_plugins: Any) -> None:
    result = runner.invoke(cli.get_app(plugins=False), ["backends"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    table = result.stdout.split("what each backend runs")[1]
    assert "nash: nash_md, omd, self_play, best_response" in table
    assert "none, jax (nash, preference_model); none (evaluate)" in table


def test_problem_str() -> None:
    assert str(Problem(("a", "b"), "m")) == "a.b: m"
    assert str(Problem((), "m", option="--nproc 2")) == "--nproc 2: m"
