"""Held-out preference-model metrics (:mod:`nlhf.preference.metrics`) against values
computed by hand from their definitions."""

from __future__ import annotations

import math

import pytest
from nlhf.data.pairs import Pair
from nlhf.preference.metrics import calibration_error, evaluate_pairs, pair_metrics
from nlhf.testing.tolerances import assert_close


def test_calibration_error_hand_example() -> None:
    # bins: 0.05 -> |0.05-0|, 0.15 -> |0.15-1|, {0.95, 0.95} -> |0.95-0.5|
    ece = calibration_error([0.05, 0.15, 0.95, 0.95], [0, 1, 1, 0])
    assert_close(ece, 0.25 * 0.05 + 0.25 * 0.85 + 0.5 * 0.45, "float64", "ece")
    assert_close(calibration_error([0.3, 0.3, 0.3], [0.3, 0.3, 0.3]), 0.0, "float64", "ece")


def test_calibration_error_bin_edges() -> None:
    # 0.1 opens bin [0.1, 0.2): one bin |0.125 − 0.5| (two bins would give 0.525)
    assert_close(calibration_error([0.1, 0.15], [1, 0]), 0.375, "float64", "left edge")
    # p = 1 belongs to the last bin [0.9, 1]: |0.975 − 0.5|
    assert_close(calibration_error([0.95, 1.0], [0, 1]), 0.475, "float64", "p = 1")
    # one bin: |mean p − mean t|
    got = calibration_error([0.2, 0.9, 0.4], [1, 1, 0], bins=1)
    assert_close(got, abs(1.5 / 3 - 2 / 3), "float64", "one bin")
    assert calibration_error([], []) == 0.0


@pytest.mark.parametrize(
    ("probs", "targets", "bins", "message"),
    [
        ([0.2, 0.3], [1], 10, "2 probabilities but 1 targets"),
        ([0.2, 1.5], [1, 0], 10, r"in \[0, 1\]"),
        ([0.2, float("nan")], [1, 0], 10, r"in \[0, 1\]"),
        ([0.2], [1], 0, "bins must be"),
    ],
)
def test_calibration_error_bad_input(probs, targets, bins, message) -> None:
    with pytest.raises(ValueError, match=message):
        calibration_error(probs, targets, bins)


class FixedModel:
    """Preset P(y ≻ y') per (y, y'); records each call's arguments."""

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table = table
        self.calls: list[tuple[list[str], list[str], int | None]] = []

    def prob(self, prompts, ys, y_primes, batch_size=None) -> list[float]:
        self.calls.append((list(ys), list(y_primes), batch_size))
        return [self.table[(a, b)] for a, b in zip(ys, y_primes, strict=True)]


def test_evaluate_pairs_hand_example() -> None:
    table = {("a", "b"): 0.8, ("b", "a"): 0.2, ("c", "d"): 0.4, ("d", "c"): 0.6 + 1e-3}
    model = FixedModel(table)
    m = evaluate_pairs(model, [Pair("x", "a", "b"), Pair("x", "c", "d", 0.75)], batch_size=3)
    # the two orders are scored in separate calls
    assert model.calls == [(["a", "c"], ["b", "d"], 3), (["b", "d"], ["a", "c"], 3)]
    assert m["accuracy"] == 0.5  # 0.8 right; 0.4 vs label 0.75 wrong
    expected = -(math.log(0.8) + 0.75 * math.log(0.4) + 0.25 * math.log(0.6)) / 2
    assert_close(m["log_loss"], expected, "float64", "log_loss")
    assert_close(m["antisymmetry_max_error"], 1e-3, "float64", "antisymmetry")
    # ECE over (0.8,1) (0.4,0.75) (0.2,0) (0.601,0.25): one point per bin
    assert_close(m["ece"], (0.2 + 0.35 + 0.2 + 0.351) / 4, "float64", "ece")
    assert_close(m["mean_prob_chosen"], 0.6, "float64", "mean_prob_chosen")
    assert m["pairs"] == 2


def test_pair_metrics_ties_and_clipping() -> None:
    # every label ½: no decided pair, accuracy 0; P = 1 is clipped to 1 − 1e-12 in the log
    m = pair_metrics([1.0, 0.5], [0.0, 0.5], [0.5, 0.5])
    assert m["accuracy"] == 0.0
    hi = 1 - 1e-12
    expected = -(0.5 * math.log(hi) + 0.5 * math.log(1 - hi) + math.log(0.5)) / 2
    assert_close(m["log_loss"], expected, "float64", "clipped log_loss")
    assert m["antisymmetry_max_error"] == 0.0
    assert pair_metrics([], [], []) == {}
    assert evaluate_pairs(FixedModel({}), []) == {}
    with pytest.raises(ValueError, match="2 forward and 1 backward"):
        pair_metrics([0.1, 0.2], [0.9], [1, 1])
