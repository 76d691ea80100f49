"""load_spec: located errors (SPEC:LINE:COL: field.path: message), every error at once,
did-you-mean, --set overrides, plugin preference models."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import nlhf
import pytest
from nlhf import plugins as plugins_mod
from nlhf.errors import SpecError
from nlhf.spec import RunSpec, load_spec, load_spec_text
from nlhf.spec.load import apply_overrides, parse_yaml
from pydantic import BaseModel, ConfigDict, model_validator

GOOD = """\
spec_version: 1
task: nash
preference: {name: tabular, matrix: [[0.5, 0.9], [0.1, 0.5]]}
reference: {probs: [0.5, 0.5]}
algorithm: {name: nash_md, tau: 0.1, steps: 2000}
output: {dir: runs/example}
"""


def issues_of(text: str, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec_text(textwrap.dedent(text), "s.yaml", overrides)
    assert info.value.issues, "a SpecError must carry at least one issue"
    for issue in info.value.issues:
        assert "pydantic" not in issue and "https://" not in issue, issue
    return info.value.issues


def test_spec_good_tabular_contract(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(GOOD)
    spec = load_spec(path)
    assert isinstance(spec, RunSpec)
    assert spec.is_tabular
    assert spec.preference.matrix == [[0.5, 0.9], [0.1, 0.5]]
    assert spec.algorithm.name == "nash_md" and spec.algorithm.steps == 2000
    assert spec.reference.probs == [0.5, 0.5]
    assert spec.output.dir == "runs/example"


def test_spec_yaml12_floats_are_numbers() -> None:
    spec = load_spec_text(GOOD.replace("tau: 0.1", "tau: 1e-1"), "s.yaml")
    assert spec.algorithm.tau == pytest.approx(0.1)
    assert parse_yaml("a: 1e-5\nb: '1e-5'\n").data == {"a": 1e-5, "b": "1e-5"}


# (spec text, expected "LINE:COL: field.path" prefix, a fragment of the message)
BAD_SPECS = [
    # 1 unknown top-level key with did-you-mean
    (GOOD + "outptu: {dir: x}\n", "7:1: outptu", "unknown key (did you mean 'output'?)"),
    # 2 unknown key inside a section
    (GOOD.replace("tau: 0.1", "tua: 0.1"), "5:28: algorithm.tua", "did you mean 'tau'?"),
    # 3 unknown algorithm name
    (GOOD.replace("nash_md,", "nash_mdd,"), "5:19: algorithm.name", "did you mean 'nash_md'?"),
    # 4 bad number
    (GOOD.replace("tau: 0.1", "tau: -1"), "5:33: algorithm.tau", "greater than 0"),
    # 5 non-numeric matrix entry (flow list item located)
    (GOOD.replace("0.9]", "x]"), "3:44: preference.matrix.0.1", "valid number"),
    # 6 model-level validator of a section
    (GOOD.replace("[0.5, 0.5]", "[0.5, 0.6]"), "4:1: reference", "sum to 1"),
    # 7 unknown game
    (
        GOOD.replace("matrix: [[0.5, 0.9], [0.1, 0.5]]", "game: dicee"),
        "3:35: preference.game",
        "'dice'",
    ),
    # 8 matrix and game together (cross-field rule of the section)
    (GOOD.replace("matrix:", "game: dice, matrix:"), "3:1: preference", "exactly one of"),
    # 9 cross-section rule: LLM algorithm with a tabular preference
    (
        GOOD.replace("name: nash_md,", "name: nash_md_pg,").replace(", steps: 2000", ""),
        "5:13: algorithm.name",
        "LLM algorithm",
    ),
    # 10 wrong spec_version
    ("spec_version: 2\n" + GOOD.split("\n", 1)[1], "1:15: spec_version", "Input should be 1"),
    # 11 unknown task
    (GOOD.replace("task: nash", "task: nsah"), "2:7: task", "'nash'"),
    # 12 distributed engine unknown
    (
        GOOD + "distributed: {engine: deepspeeed}\n",
        "7:23: distributed.engine",
        "did you mean 'deepspeed'?",
    ),
    # 13 deepspeed field out of range (tag dropped from the path)
    (
        GOOD + "distributed: {engine: deepspeed, zero_stage: 4}\n",
        "7:46: distributed.zero_stage",
        "0, 1, 2 or 3",
    ),
    # 14 missing required field of an LLM preference
    (
        "task: nash\npreference: {name: pairwise_model}\nalgorithm: {name: nash_md_pg}\n",
        "2:1: preference.path",
        "required field is missing",
    ),
    # 15 section of the wrong type
    (GOOD + "training: [1, 2]\n", "7:1: training", "expected a mapping"),
    # 16 nested unknown key, block style
    (
        GOOD + "training:\n  generation:\n    max_new_tokn: 3\n",
        "9:5: training.generation.max_new_tokn",
        "did you mean 'max_new_tokens'?",
    ),
    # 17 schedule: unknown key inside a float-or-schedule union
    (
        "task: nash\npolicy: {model: m}\ndata: {path: d}\npreference: {name: oracle, function: f}\n"
        "algorithm: {name: nash_md_pg, beta: {kind: linear, start: 0, endd: 1}}\n",
        "5:62: algorithm.beta.endd",
        "did you mean 'end'?",
    ),
    # 18 float-or-schedule given a string
    (
        "task: nash\npolicy: {model: m}\ndata: {path: d}\npreference: {name: oracle, function: f}\n"
        "algorithm: {name: nash_md_pg, tau: abc}\n",
        "5:36: algorithm.tau",
        "expected a number or a Schedule mapping",
    ),
    # 19 missing algorithm for task nash (root-level rule, no such key in the file)
    (
        "task: nash\npreference: {name: tabular, game: dice}\n",
        "1:1: algorithm",
        "needs an `algorithm` section",
    ),
    # 20 algorithm section without a name
    (
        GOOD.replace("{name: nash_md, ", "{"),
        "5:1: algorithm.name",
        "missing `name`; choose one of: nash_md, omd",
    ),
]


@pytest.mark.parametrize(("text", "where", "fragment"), BAD_SPECS)
def test_spec_bad_spec_is_located(text: str, where: str, fragment: str) -> None:
    issues = issues_of(text)
    wanted = f"s.yaml:{where}: "
    matching = [i for i in issues if i.startswith(wanted)]
    assert matching, f"no issue starts with {wanted!r}: {issues}"
    assert any(fragment in i for i in matching), (fragment, matching)


def test_spec_at_least_15_distinct_bad_specs() -> None:
    assert len({text for text, _, _ in BAD_SPECS}) >= 15


def test_spec_every_error_reported_at_once() -> None:
    text = """\
    spec_version: 1
    task: nash
    preference:
      name: tabular
      matrix: [[0.5, "x"], [0.1, 0.5]]
      sizee: 3
    algorithm:
      name: nash_md
      tau: -1
    distributed: {engine: deepspeed, zero_stage: 5}
    outptu: {dir: x}
    training:
      generation: {temperature: 0}
    """
    issues = issues_of(text)
    paths = [re.match(r"s\.yaml:\d+:\d+: ([\w.]+):", i).group(1) for i in issues]
    assert paths == [
        "preference.matrix.0.1",
        "preference.sizee",
        "algorithm.tau",
        "distributed.zero_stage",
        "outptu",
        "training.generation.temperature",
    ]
    lines = [int(i.split(":")[1]) for i in issues]
    assert lines == [5, 6, 9, 10, 11, 13]


def test_spec_cross_section_problems_are_split_and_located() -> None:
    text = """\
    task: nash
    preference: {name: tabular, game: dice}
    policy: {model: gpt2}
    reference: {model: gpt2}
    algorithm: {name: nash_md}
    """
    issues = issues_of(text)
    assert issues == [
        "s.yaml:3:1: policy: tabular runs have no policy model; remove `policy`",
        "s.yaml:4:13: reference.model: tabular runs take `reference.probs`",
    ]


def test_spec_union_member_errors_are_merged() -> None:
    issues = issues_of(
        "task: nash\npolicy: {model: m, lora: {target_modules: 5}}\ndata: {path: d}\n"
        "preference: {name: oracle, function: f}\nalgorithm: {name: nash_md_pg}\n"
    )
    assert issues == [
        "s.yaml:2:43: policy.lora.target_modules: expected a list or 'all-linear'; got 5"
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the spec is empty"),
        ("# only a comment\n", "the spec is empty"),
        ("- a\n- b\n", "s.yaml:1:1: the spec must be a mapping"),
        ("task: nash\n  bad: indent\n", "s.yaml:2:6: YAML syntax error"),
        ("a: [1, 2\n", "s.yaml:2:1: YAML syntax error"),
        ("task: nash\ntask: nash\n", "s.yaml:2:1: duplicate key 'task' (first given on line 1)"),
        ("a: !!python/object:os.system x\n", "s.yaml:1:4: YAML syntax error"),
    ],
)
def test_spec_yaml_level_errors(text: str, fragment: str) -> None:
    issues = issues_of(text)
    assert any(fragment in i for i in issues), issues


def test_spec_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)


# ----------------------------------------------------------------------- overrides
def test_spec_overrides_set_values_and_create_mappings() -> None:
    spec = load_spec_text(
        GOOD,
        "s.yaml",
        [
            "algorithm.tau=0.05",
            "training.generation.temperature=0.7",
            "preference.matrix.0.1=0.8",
            "preference.matrix.1.0=0.2",
            "output.dir=runs/other",
            "seed=7",
        ],
    )
    assert spec.algorithm.tau == 0.05
    assert spec.training.generation.temperature == 0.7
    assert spec.preference.matrix == [[0.5, 0.8], [0.2, 0.5]]
    assert spec.output.dir == "runs/other"
    assert spec.seed == 7


def test_spec_override_flow_values_and_null() -> None:
    spec = load_spec_text(GOOD, "s.yaml", ["reference.probs=[0.25, 0.75]", "output.keep_last="])
    assert spec.reference.probs == [0.25, 0.75]
    assert spec.output.keep_last is None


def test_spec_override_errors_are_attributed_to_the_override() -> None:
    issues = issues_of(GOOD, ("algorithm.tau=-1", "training.steps=0", "algorithm.tua=1"))
    assert issues == [
        "--set algorithm.tau=-1: algorithm.tau: Input should be greater than 0; got -1",
        "--set training.steps=0: training.steps: Input should be greater than 0; got 0",
        "--set algorithm.tua=1: algorithm.tua: unknown key (did you mean 'tau'?)",
    ]


def test_spec_override_of_algorithm_name() -> None:
    issues = issues_of(GOOD, ("algorithm.name=nash_mdd",))
    assert len(issues) == 1
    assert issues[0].startswith("--set algorithm.name=nash_mdd: algorithm.name: unknown algorithm")
    assert "did you mean 'nash_md'?" in issues[0] and "online_ipo" in issues[0]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("algorithm.tau", "expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("a..b=1", "expected KEY=VALUE"),
        ("algorithm.tau.x=1", "algorithm.tau: cannot set a key inside a float"),
        ("preference.matrix.5.0=1", "preference.matrix.5: index out of range"),
        ("seed=[1, 2", "not valid YAML"),
    ],
)
def test_spec_bad_override_syntax(override: str, fragment: str) -> None:
    issues = issues_of(GOOD, (override,))
    assert issues[0].startswith(f"--set {override}: "), issues
    assert fragment in issues[0], issues


def test_spec_apply_overrides_returns_paths() -> None:
    data: dict = {"a": [{"b": 1}]}
    applied = apply_overrides(data, ["a.0.b=2", "c.d=x"])
    assert data == {"a": [{"b": 2}], "c": {"d": "x"}}
    assert [o.path for o in applied] == [("a", 0, "b"), ("c", "d")]


# -------------------------------------------------------------- plugin preferences
class _ToyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = 1.0
    size: int

    @model_validator(mode="after")
    def _check(self) -> _ToyParams:
        problems = []
        if self.size % 2 == 0:
            problems.append("size: must be odd; use 3 or 5")
        if self.temperature > 10:
            problems.append("temperature: too hot")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class _ToyPlugin:
    __name__ = "toy_pref_plugin"

    @nlhf.hookimpl
    def nlhf_register_preference_models(self, register):  # type: ignore[no-untyped-def]
        register("toy_pref", lambda: None, params_model=_ToyParams, description="toy")


@pytest.fixture
def toy_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLHF_PLUGINS", "")
    built = plugins_mod.build_plugins(extra=[_ToyPlugin()])
    monkeypatch.setattr(plugins_mod, "get_plugins", lambda: built)


LLM = "task: nash\npolicy: {model: m}\ndata: {path: d}\nalgorithm: {name: nash_md_pg}\n"


def test_spec_plugin_preference_accepted(toy_plugins: None) -> None:
    spec = load_spec_text(LLM + "preference: {name: toy_pref, size: 3}\n", "s.yaml")
    assert spec.preference.name == "toy_pref"
    assert spec.preference.model_extra == {"size": 3}


def test_spec_plugin_preference_params_validated(toy_plugins: None) -> None:
    issues = issues_of(LLM + "preference: {name: toy_pref, sise: 3, temperature: hot}\n")
    assert "s.yaml:5:30: preference.sise: unknown key (did you mean 'size'?)" in issues
    assert any(
        i.startswith("s.yaml:5:1: preference.size: required field is missing") for i in issues
    )
    assert any(i.startswith("s.yaml:5:52: preference.temperature: ") for i in issues), issues


def test_spec_unknown_preference_name_did_you_mean(toy_plugins: None) -> None:
    issues = issues_of(LLM + "preference: {name: toy_prefs}\n")
    assert len(issues) == 1
    assert issues[0].startswith("s.yaml:5:20: preference.name: unknown preference 'toy_prefs'")
    assert "did you mean 'toy_pref'?" in issues[0]
    assert "tabular" in issues[0]


def test_spec_model_validator_message_split_per_field(toy_plugins: None) -> None:
    issues = issues_of(LLM + "preference:\n  name: toy_pref\n  size: 4\n  temperature: 11\n")
    assert issues == [
        "s.yaml:7:3: preference.size: must be odd; use 3 or 5",
        "s.yaml:8:3: preference.temperature: too hot",
    ]
