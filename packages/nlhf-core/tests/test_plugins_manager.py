"""Plugin manager: entry points, broken plugins, duplicates, NLHF_PLUGINS, did-you-mean."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import subprocess
import sys
import types
from typing import Any

import nlhf
import pytest
from nlhf import plugins as plugins_mod
from nlhf.errors import UnknownNameError


def _module(name: str, backends: tuple[str, ...] = (), fail: str | None = None) -> types.ModuleType:
    module = types.ModuleType(name)

    @nlhf.hookimpl
    def nlhf_register_backends(register: Any) -> None:
        if fail:
            raise RuntimeError(fail)
        for backend in backends:
            register(
                backend, lambda b=backend: f"instance of {b}", description=f"{backend} by {name}"
            )

    module.nlhf_register_backends = nlhf_register_backends  # type: ignore[attr-defined]
    return module


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Install fake entry points of group ``nlhf``: ``{ep_name: module_name}``."""
    monkeypatch.delenv("NLHF_PLUGINS", raising=False)

    def install(
        mapping: dict[str, str] | list[tuple[str, str]], modules: list[types.ModuleType]
    ) -> None:
        for module in modules:
            monkeypatch.setitem(sys.modules, module.__name__, module)
        pairs = mapping.items() if isinstance(mapping, dict) else mapping
        eps = [md.EntryPoint(name=n, value=v, group="nlhf") for n, v in pairs]

        def fake(**kwargs: Any) -> list[md.EntryPoint]:
            assert kwargs == {"group": "nlhf"}
            return eps

        monkeypatch.setattr(plugins_mod.md, "entry_points", fake)

    return install


def test_plugins_entry_points_fill_the_registry(entry_points) -> None:  # type: ignore[no-untyped-def]
    entry_points({"alpha": "fake_alpha"}, [_module("fake_alpha", ("a1", "a2"))])
    built = plugins_mod.build_plugins()
    assert built.backends.names() == ["a1", "a2"]
    assert built.backends.create("a2") == "instance of a2"
    assert built.backends.get("a1").description == "a1 by fake_alpha"
    assert built.failures == []


def test_plugins_broken_import_is_reported_and_skipped(entry_points) -> None:  # type: ignore[no-untyped-def]
    entry_points(
        {"good": "fake_good", "broken": "fake_missing_module_xyz"}, [_module("fake_good", ("g",))]
    )
    built = plugins_mod.build_plugins()
    assert built.backends.names() == ["g"]
    [failure] = built.failures
    assert failure.name == "broken"
    assert "ModuleNotFoundError" in failure.error and "fake_missing_module_xyz" in failure.error


def test_plugins_failing_hook_is_reported_and_skipped(entry_points) -> None:  # type: ignore[no-untyped-def]
    entry_points(
        {"good": "fake_good2", "bad": "fake_bad2"},
        [_module("fake_good2", ("g",)), _module("fake_bad2", fail="cannot register")],
    )
    built = plugins_mod.build_plugins()
    assert built.backends.names() == ["g"]
    assert [(f.name, f.error) for f in built.failures] == [("bad", "RuntimeError: cannot register")]


def test_plugins_duplicate_backend_names_skip_the_later_one(entry_points) -> None:  # type: ignore[no-untyped-def]
    entry_points(
        {"one": "fake_one", "two": "fake_two"},
        [_module("fake_one", ("same", "one_only")), _module("fake_two", ("same", "two_only"))],
    )
    built = plugins_mod.build_plugins()
    assert built.backends.names() == ["one_only", "same", "two_only"]
    assert built.backends.get("same").description == "same by fake_one"
    [failure] = built.failures
    assert failure.name == "two"
    assert "duplicate backend name 'same'" in failure.error
    assert "is skipped" in failure.error


def test_plugins_duplicate_entry_point_names_skip_the_later_one(entry_points) -> None:  # type: ignore[no-untyped-def]
    entry_points(
        [("dup", "fake_dup_a"), ("dup", "fake_dup_b")],
        [_module("fake_dup_a", ("x",)), _module("fake_dup_b", ("y",))],
    )
    built = plugins_mod.build_plugins()
    assert built.backends.names() == ["x"]
    [failure] = built.failures
    assert failure.name == "dup"
    assert "two installed packages define the nlhf plugin 'dup'" in failure.error


def test_plugins_allow_list(entry_points, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    entry_points(
        {"alpha": "fake_allow_a", "beta": "fake_allow_b"},
        [_module("fake_allow_a", ("a",)), _module("fake_allow_b", ("b",))],
    )
    monkeypatch.setenv("NLHF_PLUGINS", " beta , ")
    assert plugins_mod.build_plugins().backends.names() == ["b"]
    monkeypatch.setenv("NLHF_PLUGINS", "")
    assert plugins_mod.build_plugins().backends.names() == []
    monkeypatch.delenv("NLHF_PLUGINS")
    assert plugins_mod.build_plugins().backends.names() == ["a", "b"]


def test_plugins_unknown_backend_did_you_mean(entry_points) -> None:  # type: ignore[no-untyped-def]
    entry_points({"alpha": "fake_dym"}, [_module("fake_dym", ("torch", "numpy"))])
    built = plugins_mod.build_plugins()
    with pytest.raises(UnknownNameError) as info:
        built.backends.create("trch")
    assert str(info.value) == (
        "unknown backend 'trch' (did you mean 'torch'?); registered: numpy, torch"
    )


def test_plugins_extra_objects_register_like_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLHF_PLUGINS", "")
    built = plugins_mod.build_plugins(extra=[_module("fake_extra", ("e",))])
    assert built.backends.names() == ["e"]
    assert built.backends.get("e").package == "fake_extra"


def test_plugins_installed_builtins_register_lazily() -> None:
    """The installed torch/jax plugins register without importing their framework."""
    code = (
        "import sys; from nlhf.plugins import build_plugins; b = build_plugins(); "
        "print(','.join(b.backends.names())); "
        "assert 'torch' not in sys.modules and 'jax' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    names = proc.stdout.strip().split(",")
    installed = {name for name in ("torch", "jax") if importlib.util.find_spec(f"nlhf_{name}")}
    if not installed:
        pytest.skip("neither nlhf-torch nor nlhf-jax is installed: no framework plugin to load")
    assert installed <= set(names)
