"""The backend-agnostic preference scorers (:mod:`nlhf.preference.scorers`) with fake
score functions, against closed forms computed by hand."""

from __future__ import annotations

import math
from typing import Any

import nlhf
import numpy as np
import pytest
from nlhf.errors import InputError, NLHFError, UnknownNameError
from nlhf.plugins import build_plugins
from nlhf.preference import scorers as S
from nlhf.spec.models import (
    LLMJudgePreference,
    OraclePreference,
    PluginPreference,
    TabularPreference,
)
from nlhf.testing.tolerances import assert_close

PROMPTS = ["Q1", "Q2", "Q3"]
YS = ["a", "bb", "ccc"]
YPS = ["dddd", "e", "ff"]


def _sigma(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_sigmoid_closed_form_and_no_overflow() -> None:
    z = np.array([-3.0, -0.5, 0.0, 2.0])
    assert_close(S.sigmoid(z), [_sigma(v) for v in z], "float64", "σ")
    with np.errstate(over="raise"):
        np.testing.assert_array_equal(S.sigmoid([-1000.0, 1000.0]), [0.0, 1.0])
    assert_close(
        S.prob_from_rewards([1.0, 0.0], [0.0, 2.5]),
        [_sigma(1), _sigma(-2.5)],
        "float64",
        "σ(r − r')",
    )


def test_average_orders_is_antisymmetric_whatever_the_bias() -> None:
    # a judge preferring whatever it sees first: p(1|y,y') = 0.9, p(1|y',y) = 0.7
    assert_close(S.average_orders([0.9], [0.7]), [0.6], "float64", "½(0.9 + 1 − 0.7)")
    p, q = np.array([0.9, 0.2, 0.5]), np.array([0.7, 0.6, 0.5])
    assert_close(S.average_orders(p, q) + S.average_orders(q, p), 1.0, "float64", "P + P'")


def test_judge_texts_show_each_response_first_once() -> None:
    fwd, bwd = S.judge_texts("[{prompt}] 1:{response_1} 2:{response_2} {x}", ["Q"], ["a"], ["b"])
    assert fwd == ["[Q] 1:a 2:b {x}"] and bwd == ["[Q] 1:b 2:a {x}"]  # other braces kept


def test_input_checks() -> None:
    with pytest.raises(InputError, match="got 2 prompts, 1 ys, 1 y_primes"):
        S.check_comparisons(["a", "b"], ["c"], ["d"])
    with pytest.raises(NLHFError, match="returned 2 probabilities for 3 comparisons"):
        S.check_probabilities([0.1, 0.2], 3, "judge")
    for bad in ([0.1, 1.5], [0.1, -0.1], [0.1, math.nan]):
        with pytest.raises(NLHFError, match=r"judge: returned values outside \[0, 1\]"):
            S.check_probabilities(bad, 2, "judge")
    with pytest.raises(NLHFError, match="non-finite rewards"):
        S.check_rewards([1.0, math.inf], 2, "rm")
    assert S.check_probabilities([0, 1], 2, "x").dtype == np.float64


class LengthRewards:
    """r(text) = len(text); records the batch sizes it was called with."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, texts: list[str]) -> list[float]:
        self.calls.append(len(texts))
        return [float(len(t)) for t in texts]


def test_bradley_terry_scorer() -> None:
    score = LengthRewards()
    bt = S.BradleyTerryScorer(score, batch_size=4)
    assert bt.has_reward()
    np.testing.assert_array_equal(bt.reward(PROMPTS, YS), [3.0, 4.0, 5.0])  # len("Q1a"), ...
    assert score.calls == [3]
    got = bt.prob(PROMPTS, YS, YPS)
    # r(x+y) − r(x+y') = len(y) − len(y')
    assert_close(got, [_sigma(1 - 4), _sigma(2 - 1), _sigma(3 - 2)], "float64", "BT P")
    assert score.calls == [3, 4, 2]  # 6 texts in batches of 4
    with pytest.raises(NLHFError, match="1 scores for 2 texts"):
        S.BradleyTerryScorer(lambda texts: [0.0], batch_size=2).reward(PROMPTS[:2], YS[:2])


def test_judge_scorer_reads_both_orders_per_batch() -> None:
    template = "{prompt}|{response_1}|{response_2}"
    calls: list[list[str]] = []

    def v(texts: list[str]) -> np.ndarray:  # v = 0.2 + len(response 1) − len(response 2)
        calls.append(texts)
        return np.array([0.2 + len(t.split("|")[1]) - len(t.split("|")[2]) for t in texts])

    judge = S.JudgeScorer(v, template=template, batch_size=3)
    got = judge.prob(PROMPTS, YS, YPS)
    d = [len(a) - len(b) for a, b in zip(YS, YPS, strict=True)]
    expected = [0.5 * (_sigma(0.2 + k) + 1 - _sigma(0.2 - k)) for k in d]
    assert_close(got, expected, "float64", "judge P")
    # ⌊3/2⌋ = 1 comparison per call, its two orders together
    assert calls[0] == ["Q1|a|dddd", "Q1|dddd|a"] and [len(c) for c in calls] == [2, 2, 2]
    assert_close(got + judge.prob(PROMPTS, YPS, YS), 1.0, "float64", "P + P'")
    assert not judge.has_reward()
    with pytest.raises(InputError, match="rlhf_pg needs a scalar reward"):
        judge.reward(PROMPTS, YS)
    assert judge.prob([], [], []).shape == (0,)


def test_judge_scorer_wraps_texts_and_reports_position_bias() -> None:
    """With v = 0.2 + len(r1) − len(r2) the judge favours the first slot: position bias
    b = ½·(σ(0.2 + k) + σ(0.2 − k)) − ½ per comparison (k = len y − len y'), computed by
    hand; the order agreement counts comparisons whose two orders pick the same winner."""
    template = "{prompt}|{response_1}|{response_2}"
    seen: list[str] = []

    def v(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        inner = [t.removeprefix("<u>").removesuffix("</u>") for t in texts]
        return np.array([0.2 + len(t.split("|")[1]) - len(t.split("|")[2]) for t in inner])

    judge = S.JudgeScorer(v, template=template, batch_size=8, wrap=lambda t: f"<u>{t}</u>")
    assert judge.pop_metrics() == {}
    got = judge.prob(PROMPTS, YS, YPS)
    assert seen[0] == "<u>Q1|a|dddd</u>" and seen[3] == "<u>Q1|dddd|a</u>"
    d = [len(a) - len(b) for a, b in zip(YS, YPS, strict=True)]  # −3, 1, 1
    assert_close(got, [0.5 * (_sigma(0.2 + k) + 1 - _sigma(0.2 - k)) for k in d], "float64", "P")
    metrics = judge.pop_metrics()
    bias = np.mean([0.5 * (_sigma(0.2 + k) + _sigma(0.2 - k)) - 0.5 for k in d])
    assert_close(metrics["judge_position_bias"], bias, "float64", "position bias")
    assert metrics["judge_position_bias"] > 0  # this judge favours the first slot
    assert metrics["judge_order_agreement"] == 1.0  # |k| ≥ 1 > 0.2: both orders agree
    assert judge.pop_metrics() == {}  # reset
    judge.prob(["Q"], ["ab"], ["cd"])  # k = 0: σ(0.2) > ½ in both orders, they disagree
    assert judge.pop_metrics()["judge_order_agreement"] == 0.0
    assert_close(S.position_bias([0.7, 0.2], [0.3, 0.2]), [0.0, -0.3], "float64", "b")


class FixedModel:
    def __init__(self, values: list[float]) -> None:
        self.values = values

    def prob(self, prompts: list[str], ys: list[str], y_primes: list[str]) -> list[float]:
        return self.values


def test_pairwise_scorer_checks_the_model_output() -> None:
    got = S.PairwiseScorer(FixedModel([0.25, 0.5, 1.0])).prob(PROMPTS, YS, YPS)
    np.testing.assert_array_equal(got, [0.25, 0.5, 1.0])
    assert got.dtype == np.float64
    with pytest.raises(NLHFError, match="pairwise_model: returned 2 probabilities"):
        S.PairwiseScorer(FixedModel([0.1, 0.2])).prob(PROMPTS, YS, YPS)
    with pytest.raises(NLHFError, match=r"outside \[0, 1\]"):
        S.PairwiseScorer(FixedModel([0.1, 0.2, 1.2])).prob(PROMPTS, YS, YPS)
    with pytest.raises(InputError, match="pairwise_model preference has none"):
        S.PairwiseScorer(FixedModel([])).reward(PROMPTS, YS)


class _Plugin:
    @nlhf.hookimpl
    def nlhf_register_oracles(self, register: Any) -> None:
        def longer(scale: float = 1.0) -> Any:
            def f(x: list[str], y: list[str], yp: list[str]) -> list[float]:
                return [scale * float(len(a) > len(b)) for a, b in zip(y, yp, strict=True)]

            f.reward = lambda x, y: [float(len(a)) for a in y]
            return f

        register("longer", longer)
        register("half", lambda: lambda x, y, yp: [0.5] * len(y))
        register("bad", lambda: lambda x, y, yp: [2.0] * len(y))


def test_oracle_scorer() -> None:
    plugins = build_plugins(extra=[_Plugin()])
    oracle = S.OracleScorer(OraclePreference(function="longer", options={"scale": 0.5}), plugins)
    np.testing.assert_array_equal(oracle.prob(PROMPTS, YS, YPS), [0.0, 0.5, 0.5])
    assert oracle.has_reward()
    np.testing.assert_array_equal(oracle.reward(PROMPTS, YS), [1.0, 2.0, 3.0])
    half = S.OracleScorer(OraclePreference(function="half"), plugins)
    assert not half.has_reward()
    with pytest.raises(InputError, match="no `reward`"):
        half.reward(PROMPTS, YS)
    with pytest.raises(NLHFError, match=r"oracle 'bad': returned values outside \[0, 1\]"):
        S.OracleScorer(OraclePreference(function="bad"), plugins).prob(PROMPTS, YS, YPS)
    with pytest.raises(UnknownNameError, match="did you mean 'half'"):
        S.OracleScorer(OraclePreference(function="hlaf"), plugins)
    with pytest.raises(InputError, match=r"preference\.options: oracle 'half'"):
        S.OracleScorer(OraclePreference(function="half", options={"nope": 1}), plugins)


def test_build_scorer_dispatch() -> None:
    built: list[Any] = []
    loaders = {"llm_judge": lambda spec: built.append(spec) or "judge"}
    judge = LLMJudgePreference(model="m")
    assert S.build_scorer(judge, loaders, backend="demo") == "judge" and built == [judge]
    plugins = build_plugins(extra=[_Plugin()])
    oracle = S.build_scorer(
        OraclePreference(function="half"), loaders, backend="x", plugins=plugins
    )
    assert isinstance(oracle, S.OracleScorer)
    with pytest.raises(InputError, match="needs a `preference` section"):
        S.build_scorer(None, loaders, backend="demo")
    with pytest.raises(InputError, match="numpy backend"):
        S.build_scorer(TabularPreference(game="rps"), loaders, backend="demo")
    with pytest.raises(
        InputError,
        match=r"'mine' is not supported by the demo backend "
        r"\(supported: oracle, remote, openai_judge, llm_judge\)",
    ):
        S.build_scorer(PluginPreference(name="mine"), loaders, backend="demo")
