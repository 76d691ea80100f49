"""The one dotted-key flattening and number format of the CLI and the HTML report."""

from __future__ import annotations

import math

from nlhf.formatting import flatten, format_value


def test_flatten_nested_mappings_to_dotted_keys_in_order() -> None:
    data = {"a": 1, "b": {"c": [1, 2], "d": {"e": None}}, "f": {}, "g": "x"}
    assert flatten(data) == {"a": 1, "b.c": [1, 2], "b.d.e": None, "g": "x"}
    assert list(flatten(data)) == ["a", "b.c", "b.d.e", "g"]
    assert flatten({"x": {"y": 2}}, prefix="run.") == {"run.x.y": 2}


def test_format_value_six_significant_digits() -> None:
    assert format_value(1 / 3) == "0.333333"
    assert format_value(123456789.0) == "1.23457e+08"
    assert format_value(1.5e-7) == "1.5e-07"
    assert format_value(2.0) == "2"
    assert format_value(math.nan) == "nan"
    assert format_value(-math.inf) == "-inf"
    assert format_value(7) == "7" and format_value(True) == "True" and format_value(None) == "None"
