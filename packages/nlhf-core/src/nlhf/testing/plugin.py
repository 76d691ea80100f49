"""pytest plugin of the conformance kit (entry point ``pytest11: nlhf-conformance``).

Marks every :class:`nlhf.testing.BackendConformance` case with ``conformance`` and
applies declared gaps as ``xfail(strict=True, reason=...)``: from ``xfails.yaml``
(backend -> case -> reason, for the backends shipped with nlhf) merged with the test
class's own ``xfails`` mapping (for third-party packages). A case key is the test name
(``test_kl_grad``) or one parametrization (``test_kl_grad[k3]``). Kept import-light: it
is loaded by every pytest session.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

import pytest

XFAIL_FILE = "xfails.yaml"


@cache
def load_xfails() -> dict[str, dict[str, str]]:
    """``xfails.yaml`` as {backend: {case: reason}}; every reason must be a non-empty string."""
    import yaml

    text = resources.files("nlhf.testing").joinpath(XFAIL_FILE).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    out: dict[str, dict[str, str]] = {}
    for backend, entries in data.items():
        entries = entries or {}
        for case, reason in entries.items():
            if not isinstance(reason, str) or not reason.strip():
                raise ValueError(
                    f"{XFAIL_FILE}: {backend}.{case} needs a reason (a non-empty string)"
                )
        out[str(backend)] = {str(k): str(v) for k, v in entries.items()}
    return out


def xfails_for(cls: Any) -> dict[str, str]:
    """The declared gaps of a conformance class: the file's entries for its backend,
    updated with the class's ``xfails`` mapping."""
    merged = dict(load_xfails().get(getattr(cls, "backend", ""), {}))
    own: Mapping[str, str] = getattr(cls, "xfails", {}) or {}
    merged.update(own)
    return merged


def xfail_reason(cls: Any, name: str, originalname: str) -> str | None:
    """Reason for case ``name`` (e.g. ``test_kl_grad[k3]``) of ``cls``, or None."""
    table = xfails_for(cls)
    return table.get(name) or table.get(originalname)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "conformance: a case of the nlhf backend conformance kit (nlhf.testing)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        cls = getattr(item, "cls", None)
        if cls is None or not getattr(cls, "__nlhf_conformance__", False):
            continue
        item.add_marker(pytest.mark.conformance)
        name = item.name
        original = getattr(item, "originalname", name)
        reason = xfail_reason(cls, name, original)
        if reason:
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"{cls.backend}: {reason}"))
