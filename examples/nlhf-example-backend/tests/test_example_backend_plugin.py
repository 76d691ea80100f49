"""The example backend is found the way a third party's would be: through its entry point."""

from __future__ import annotations

import ast
import importlib.metadata as md
import inspect

import nlhf_example_backend
import numpy as np
from nlhf.plugins import build_plugins
from nlhf.testing.tolerances import assert_close


def test_registered_through_the_entry_point() -> None:
    eps = {ep.name: ep for ep in md.entry_points(group="nlhf")}
    assert eps["example"].value == "nlhf_example_backend"
    entry = build_plugins().backends.get("example")
    assert entry.package == "nlhf-example-backend"
    assert entry.version == nlhf_example_backend.__version__


def test_a_second_implementation_in_float32() -> None:
    tree = ast.parse(inspect.getsource(nlhf_example_backend))
    imported = {
        alias.name if isinstance(node, ast.Import) else f"{node.module}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not any("reference" in name or "testing" in name for name in imported), imported
    k = nlhf_example_backend.ExampleKernels()
    out = k.mixture_logprobs(k.asarray(np.zeros((2, 3))), k.asarray(np.ones((2, 3))), 0.5, 1.0)
    assert out.dtype == np.float32
    assert_close(np.exp(out), np.full((2, 3), 1 / 3), what="uniform mixture")  # closed form
