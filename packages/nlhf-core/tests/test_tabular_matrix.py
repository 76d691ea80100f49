"""Preference-matrix and reference validation: every error names the offending entry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nlhf.errors import InputError
from nlhf.tabular.matrix import validate_matrix, validate_reference


@pytest.mark.parametrize(
    ("matrix", "fragments"),
    [
        ([[0.5, 0.9], [0.3, 0.5]], ["preference.matrix[0][1] + matrix[1][0] = 1.2", "must be 1"]),
        ([[0.5, 0.7, 0.2], [0.3, 0.5, 0.4], [0.8, 0.5, 0.5]], ["matrix[1][2] + matrix[2][1]"]),
        ([[0.4, 0.5], [0.5, 0.5]], ["preference.matrix[0][0] = 0.4", "must be 0.5"]),
        ([[0.5, 1.5], [-0.5, 0.5]], ["preference.matrix[0][1] = 1.5", "[0, 1]"]),
        ([[0.5, math.nan], [0.5, 0.5]], ["preference.matrix[0][1] = nan", "finite"]),
        ([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]], ["square", "(2, 3)"]),
        ([[0.5]], ["at least 2 responses"]),
        ([[0.5, 0.5], [0.5]], ["square"]),
        ([["a", 0.5], [0.5, 0.5]], ["list of lists of numbers"]),
    ],
)
def test_tabular_matrix_errors_name_the_entry(matrix, fragments) -> None:
    with pytest.raises(InputError) as err:
        validate_matrix(matrix)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_tabular_matrix_accepts_tolerance_and_returns_float64() -> None:
    P = validate_matrix([[0.5, 0.7 + 5e-10], [0.3, 0.5]])
    assert P.dtype == np.float64 and P.shape == (2, 2)
    with pytest.raises(InputError, match=r"matrix\[0\]\[1\] \+ matrix\[1\]\[0\]"):
        validate_matrix([[0.5, 0.7 + 2e-9], [0.3, 0.5]])


def test_tabular_reference_validation() -> None:
    np.testing.assert_allclose(validate_reference(None, 4), [0.25] * 4)
    with pytest.raises(InputError, match=r"reference.probs: has 2 entries .* 3 responses"):
        validate_reference([0.5, 0.5], 3)
    with pytest.raises(InputError, match=r"reference.probs\[1\] = 0.0, must be > 0"):
        validate_reference([1.0, 0.0], 2)
    with pytest.raises(InputError, match="must sum to 1"):
        validate_reference([0.5, 0.6], 2)
