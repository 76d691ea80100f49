"""The shared front-end checks of ``generate_pairs`` (both backends call them first)."""

from __future__ import annotations

import pytest
from nlhf.algorithms.generation import check_generation_args

GOOD = dict(opponent="mixture", beta=0.5, temperature=1.0, max_new_tokens=4,
            opponent_model=None, ids_shape=(2, 3), mask_shape=(2, 3))  # fmt: skip


def test_good_arguments_pass() -> None:
    check_generation_args(**GOOD)
    check_generation_args(**{**GOOD, "opponent": "model", "opponent_model": object()})
    check_generation_args(**{**GOOD, "beta": 0.0})
    check_generation_args(**{**GOOD, "beta": 1.0})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"opponent": "ema"}, "opponent must be"),
        ({"beta": 1.5}, r"beta must lie in \[0, 1\]; got 1.5"),
        ({"beta": -0.1}, "beta must lie"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"opponent": "model"}, "needs opponent_model"),
        ({"ids_shape": (2, 3, 1), "mask_shape": (2, 3, 1)}, r"must both be \(B, P\)"),
        ({"mask_shape": (2, 4)}, r"got \(2, 3\) and \(2, 4\)"),
    ],
)
def test_bad_arguments_name_the_argument(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_generation_args(**{**GOOD, **change})
