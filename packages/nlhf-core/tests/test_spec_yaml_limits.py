"""The YAML loader is bounded: nesting by :data:`MAX_YAML_DEPTH`, alias expansion by the
values built (:data:`MAX_YAML_NODES`), for spec files and ``--set`` values alike; every
refusal is located ``FILE:LINE:COL`` and fast; specs within the limits still load."""

from __future__ import annotations

import time

import pytest
from nlhf.errors import SpecError
from nlhf.spec import load_spec_text
from nlhf.spec.load import MAX_YAML_DEPTH, MAX_YAML_NODES, parse_yaml


def _error(text: str, overrides: tuple[str, ...] = ()) -> list[str]:
    start = time.monotonic()
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "s.yaml", overrides)
    assert time.monotonic() - start < 5
    return info.value.issues


def _laughs(levels: int, width: int = 10) -> str:
    lines = ['a0: &a0 ["lol"]']
    for k in range(1, levels):
        lines.append(f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * width)}]")
    return "\n".join(lines) + f"\nbomb: *a{levels - 1}\n"


def test_limits_are_generous_for_real_specs() -> None:
    assert MAX_YAML_DEPTH >= 100 and MAX_YAML_NODES >= 100_000


@pytest.mark.parametrize("levels", [6, 9, 40])
def test_billion_laughs_is_refused_at_the_alias_that_overflows(levels: int) -> None:
    [issue] = _error(_laughs(levels))
    assert issue.startswith("s.yaml:")
    assert f"YAML expands to more than {MAX_YAML_NODES} values" in issue


def test_expansion_just_under_the_cap_loads() -> None:
    # 10^4 + 10^3 + ... values: under the cap, parsed (then refused only as unknown keys)
    located = parse_yaml(_laughs(5), "s.yaml")
    assert len(located.data["bomb"]) == 10
    assert sum(1 for _ in located.positions) < MAX_YAML_NODES


@pytest.mark.parametrize(
    "text",
    [
        "algorithm: " + "[" * 5000 + "]" * 5000,
        "algorithm: " + "{a: " * 2000 + "1" + "}" * 2000,
        "algorithm:\n" + "".join(f"{'  ' * (k + 1)}k{k}:\n" for k in range(MAX_YAML_DEPTH + 5)),
    ],
    ids=["flow-list", "flow-map", "block-map"],
)
def test_deep_nesting_is_refused_not_a_recursion_error(text: str) -> None:
    [issue] = _error(text)
    assert issue.startswith("s.yaml:") and f"YAML nested deeper than {MAX_YAML_DEPTH}" in issue


def test_nesting_at_the_limit_parses() -> None:
    depth = MAX_YAML_DEPTH - 1  # the root mapping is one level
    located = parse_yaml("x: " + "[" * depth + "]" * depth, "s.yaml")
    node = located.data["x"]
    for _ in range(depth - 1):
        (node,) = node
    assert node == []


def test_an_alias_that_contains_itself_is_refused() -> None:
    [issue] = _error("a: &a [*a]\n")
    assert issue.startswith("s.yaml:1:") and "an alias that contains itself" in issue


def test_set_values_are_bounded_too() -> None:
    bomb = "[" * 3000 + "]" * 3000
    [issue] = _error("task: nash\n", (f"algorithm.x={bomb}",))
    assert issue.startswith("--set algorithm.x=") and "YAML nested deeper" in issue
    laughs = "[" + ", ".join(
        ["&a [1,1,1,1,1,1,1,1,1,1]"]
        + [f"&b{k} [{', '.join([f'*b{k - 1}' if k else '*a'] * 10)}]" for k in range(6)]
    )
    [issue] = _error("task: nash\n", (f"algorithm.x={laughs}]",))
    assert issue.startswith("--set algorithm.x=") and "YAML expands to more than" in issue


def test_a_large_real_matrix_still_loads() -> None:
    n = 200  # 40 000 entries: well under the cap
    rows = []
    for i in range(n):
        row = ["0.5" if i == j else ("0.6" if i < j else "0.4") for j in range(n)]
        rows.append("[" + ", ".join(row) + "]")
    text = (
        "task: nash\npreference:\n  name: tabular\n  matrix: [" + ", ".join(rows) + "]\n"
        "algorithm: {name: nash_md}\n"
    )
    spec = load_spec_text(text, "s.yaml")
    assert spec.preference.num_responses() == n  # type: ignore[union-attr]
