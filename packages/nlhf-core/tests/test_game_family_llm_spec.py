"""The LLM forms of sppo, inpo, onpo, mpo and egpo in core: the spec accepts each with an
LLM preference and rejects missing or invalid parameters with located errors; the
algorithm table's rows; sppo's K-sample layout and win-rate estimate against a brute-force
count written here."""

from __future__ import annotations

import textwrap
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from nlhf.errors import SpecError
from nlhf.spec import load_spec, load_spec_text
from nlhf.testing.tolerances import assert_close
from nlhf.training.algorithms import RULES, sample_layout, sppo_pairs, sppo_win_rates

REPO = Path(__file__).resolve().parents[3]
FAMILY = ("sppo", "inpo", "onpo", "mpo", "egpo")

LLM = """\
spec_version: 1
task: nash
policy: {{model: runs/quickstart-assets/policy}}
preference: {{name: oracle, function: population}}
data: {{path: runs/quickstart-assets/prompts.jsonl}}
algorithm: {algorithm}
output: {{dir: runs/x}}
"""


def issues(algorithm: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec_text(LLM.format(algorithm=algorithm), "s.yaml")
    return info.value.issues


@pytest.mark.parametrize("name", FAMILY)
def test_each_spec_example_validates(name: str) -> None:
    spec = load_spec(REPO / "specs" / f"quickstart-{name}.yaml")
    assert spec.algorithm is not None and spec.algorithm.name == name
    assert not spec.is_tabular


@pytest.mark.parametrize(
    ("algorithm", "where", "field", "fragment"),
    [
        ("{name: sppo}", "s.yaml:6:", "algorithm.eta: ", "needs its step η as a number"),
        ("{name: sppo, eta: auto}", "s.yaml:6:", "algorithm.eta: ", "`eta: auto` is the tabular"),
        ("{name: inpo, tau: 0.1}", "s.yaml:6:", "algorithm.eta: ", "needs its step η"),
        ("{name: onpo, tau: 0.1}", "s.yaml:6:", "algorithm.eta: ", "needs its step η"),
        ("{name: inpo, tau: 0.5, eta: 3.0}", "s.yaml:6:", "algorithm.eta: ", "η·τ = 1.5"),
        ("{name: egpo, tau: 0}", "s.yaml:6:", "algorithm.tau: ", "give tau > 0"),
        (
            "{name: sppo, eta: 1.0, num_samples: 1}",
            "s.yaml:6:",
            "algorithm.num_samples: ",
            "num_samples ≥ 2",
        ),
        ("{name: sppo, eta: -1.0}", "s.yaml:6:", "algorithm.eta", ""),
        ("{name: mpo, tau: 0.1, magnet_every: 0}", "s.yaml:6:", "algorithm.magnet_every", ""),
        ("{name: mpo, tau: 0.1, kl_estimator: k2}", "s.yaml:6:", "algorithm.kl_estimator", ""),
    ],
)
def test_bad_llm_parameters_are_located(
    algorithm: str, where: str, field: str, fragment: str
) -> None:
    """SPEC:LINE:COL: field: message, on the algorithm's line (its key, or the field's)."""
    found = issues(algorithm)
    assert any(i.startswith(where) and field in i and fragment in i for i in found), found


@pytest.mark.parametrize("name", ["sppo", "mpo", "onpo", "egpo"])
def test_deepspeed_refuses_the_algorithms_with_stepper_state(name: str) -> None:
    algorithm = {"sppo": "{name: sppo, eta: 1.0}", "mpo": "{name: mpo, tau: 0.1}"}.get(
        name, f"{{name: {name}, tau: 0.1, eta: 1.0}}"
    )
    text = LLM.format(algorithm=algorithm) + "distributed: {engine: deepspeed, zero_stage: 2}\n"
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "s.yaml")
    assert any(
        i.startswith("s.yaml:6:") and "algorithm.name: " in i and "deepspeed" in i
        for i in info.value.issues
    ), info.value.issues
    inpo = LLM.format(algorithm="{name: inpo, tau: 0.1, eta: 1.0}")
    load_spec_text(inpo + "distributed: {engine: deepspeed, zero_stage: 2}\n", "s.yaml")


def test_tabular_runs_keep_eta_auto() -> None:
    """The LLM-only checks do not apply to tabular runs: `eta: auto` stays valid there."""
    spec = load_spec_text(
        textwrap.dedent(
            """\
            spec_version: 1
            preference: {name: tabular, game: rps}
            algorithm: {name: sppo, steps: 10}
            """
        ),
        "t.yaml",
    )
    assert spec.algorithm is not None and spec.algorithm.eta == "auto"


def test_rules_of_the_family() -> None:
    assert {n: (RULES[n].loss, RULES[n].mechanics) for n in FAMILY} == {
        "sppo": ("sppo", None),
        "inpo": ("inpo", None),
        "onpo": ("inpo", "optimistic"),
        "mpo": ("nash_md_pg", "magnet"),
        "egpo": ("egpo", "extragradient"),
    }
    assert all(RULES[n].opponent == "policy" and RULES[n].fixed_beta == 0.0 for n in FAMILY)


@pytest.mark.parametrize(("prompts", "k"), [(1, 2), (3, 3), (2, 5)])
def test_sample_layout_covers_every_draw_once(prompts: int, k: int) -> None:
    m, layout = sample_layout(prompts, k)
    assert m == (k + 1) // 2 and len(layout) == prompts * k
    assert len(set(layout)) == len(layout)  # no draw used twice
    for i in range(prompts):  # response k of prompt i comes from a copy of prompt i
        for kk in range(k):
            row, _ = layout[i * k + kk]
            assert row % prompts == i and row < m * prompts


@pytest.mark.parametrize("k", [2, 3, 5])
def test_sppo_win_rates_against_a_brute_force_count(k: int) -> None:
    rng = np.random.default_rng(k)
    prompts = 3
    pairs = sppo_pairs(k)
    assert len(pairs) == k * (k - 1) // 2 and all(a < b for a, b in pairs)
    p = rng.uniform(size=prompts * len(pairs))
    got = sppo_win_rates(p, k).reshape(prompts, k)
    for i, a in product(range(prompts), range(k)):
        total = 0.5  # P(y_a ≻ y_a)
        for j, (x, y) in enumerate(pairs):
            total += p[i * len(pairs) + j] if x == a else 0.0
            total += 1.0 - p[i * len(pairs) + j] if y == a else 0.0
        assert_close(got[i, a], total / k, "float64", f"P̂ prompt {i} response {a}")
    assert_close(got.mean(axis=1), np.full(prompts, 0.5), "float64", "mean P̂ = ½")
