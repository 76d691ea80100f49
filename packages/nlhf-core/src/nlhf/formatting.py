"""How results are shown to people (the CLI's tables, the HTML report): nested summaries
as dotted keys, numbers to six significant digits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings → one level of dotted keys, in order: ``{"final": {"loss": 1}}`` →
    ``{"final.loss": 1}``; an empty nested mapping contributes no key."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def format_value(value: Any) -> str:
    """A float to six significant digits (``f"{x:.6g}"``: 0.333333, 1.5e-07, nan, inf);
    anything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
