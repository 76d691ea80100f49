"""Plugin manager: loads entry points of group ``nlhf``, isolates broken plugins,
honours the ``NLHF_PLUGINS`` allow-list and fills the registries.

- A plugin that fails to import is recorded in :attr:`Plugins.failures`
  (name, error) and skipped; it never bricks the CLI.
- ``NLHF_PLUGINS=numpy,torch`` loads only those entry-point names;
  ``NLHF_PLUGINS=`` (empty) loads none.
- Duplicate names across plugins raise :class:`nlhf.errors.PluginError`.
"""

from __future__ import annotations

import importlib.metadata as md
import os
from dataclasses import dataclass, field
from functools import cache
from types import ModuleType
from typing import Any

import pluggy

from nlhf import hookspecs
from nlhf.errors import PluginError
from nlhf.registry import Entry, Registry

ENTRY_POINT_GROUP = "nlhf"
ALLOW_ENV = "NLHF_PLUGINS"

_HOOKS = {
    "backends": "nlhf_register_backends",
    "preference_models": "nlhf_register_preference_models",
    "data_formats": "nlhf_register_data_formats",
    "oracles": "nlhf_register_oracles",
}


@dataclass
class PluginFailure:
    name: str
    package: str
    error: str


@dataclass
class Plugins:
    """The loaded plugin manager and the registries it filled."""

    manager: pluggy.PluginManager
    backends: Registry[Any] = field(default_factory=lambda: Registry("backend"))
    preference_models: Registry[Any] = field(default_factory=lambda: Registry("preference model"))
    data_formats: Registry[Any] = field(default_factory=lambda: Registry("data format"))
    oracles: Registry[Any] = field(default_factory=lambda: Registry("oracle"))
    failures: list[PluginFailure] = field(default_factory=list)
    packages: dict[str, tuple[str, str]] = field(default_factory=dict)  # plugin -> (dist, version)

    def registry(self, kind: str) -> Registry[Any]:
        return getattr(self, kind)


def _allow_list() -> set[str] | None:
    raw = os.environ.get(ALLOW_ENV)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def build_plugins(extra: list[ModuleType | object] | None = None) -> Plugins:
    """Load every allowed entry point (plus ``extra`` plugin objects, for tests) and
    fill the registries."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(manager=pm)
    allow = _allow_list()
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if allow is not None and ep.name not in allow:
            continue
        dist = ep.dist.name if ep.dist is not None else "unknown"
        version = ep.dist.version if ep.dist is not None else "unknown"
        if pm.has_plugin(ep.name):
            raise PluginError(
                f"two installed packages define the nlhf plugin {ep.name!r} "
                f"({plugins.packages[ep.name][0]} and {dist}); uninstall one"
            )
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin is reported, never fatal
            plugins.failures.append(PluginFailure(ep.name, dist, f"{type(exc).__name__}: {exc}"))
            continue
        plugins.packages[ep.name] = (dist, version)
    for obj in extra or []:
        name = getattr(obj, "__name__", None) or type(obj).__name__
        pm.register(obj, name=name)
        plugins.packages.setdefault(name, (name, "local"))
    for kind, hook_name in _HOOKS.items():
        registry = plugins.registry(kind)
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            package, version = plugins.packages.get(impl.plugin_name, (impl.plugin_name, "?"))

            def register(
                name: str,
                factory: Any,
                *,
                requires: tuple[str, ...] = (),
                description: str = "",
                _registry: Registry[Any] = registry,
                _package: str = package,
                _version: str = version,
                **options: Any,
            ) -> None:
                _registry.add(
                    Entry(
                        name=name,
                        factory=factory,
                        package=_package,
                        version=_version,
                        requires=tuple(requires),
                        description=description,
                        options=options,
                    )
                )

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:
                plugins.failures.append(
                    PluginFailure(impl.plugin_name, package, f"{type(exc).__name__}: {exc}")
                )
    return plugins


@cache
def get_plugins() -> Plugins:
    """The process-wide plugin set (built once; call :func:`reset` in tests)."""
    return build_plugins()


def reset() -> None:
    get_plugins.cache_clear()


def get_backend(name: str) -> Any:
    """Instantiate backend ``name`` (imports its framework only now)."""
    return get_plugins().backends.create(name)
