"""Plugin manager: loads entry points of group ``nlhf``, isolates broken plugins,
honours the ``NLHF_PLUGINS`` allow-list and fills the registries (pytest-style isolation:
no plugin can stop the others or the CLI).

- A plugin that fails to import — any exception, ``sys.exit``, any other
  :class:`BaseException` except :class:`KeyboardInterrupt` — or whose import takes longer
  than ``NLHF_PLUGIN_TIMEOUT`` seconds (default :data:`DEFAULT_IMPORT_TIMEOUT`) is recorded
  in :attr:`Plugins.failures` (name, error) and skipped; so is a hook implementation that
  fails the same way.
- **Import timeout**: each entry point is imported in a daemon thread joined with the
  timeout (portable, and it also bounds imports blocked in C code, unlike ``SIGALRM``,
  which only works on the POSIX main thread and only interrupts Python bytecode). A plugin
  that times out is abandoned: its thread may finish later, but its module is never
  registered, and the interpreter does not wait for it at exit.
- Names are unique: a second registration of a backend (preference model, data format,
  oracle) name, or a second entry point of the same name, is skipped and reported; the
  built-in distributions (:data:`BUILTIN_DISTRIBUTIONS`) load first, so a third-party
  plugin never shadows a built-in name.
- ``NLHF_PLUGINS=numpy,torch`` loads only those entry-point names;
  ``NLHF_PLUGINS=`` (empty) loads none.
- Loading is lazy: nothing is imported until :func:`get_plugins` is first called (``nlhf
  schema`` and ``nlhf validate`` of built-in sections never call it for their own needs).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import threading
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
TIMEOUT_ENV = "NLHF_PLUGIN_TIMEOUT"
DEFAULT_IMPORT_TIMEOUT = 10.0
"""Seconds an entry point's import may take (the built-in ones import nothing heavy)."""
BUILTIN_DISTRIBUTIONS = ("nlhf-core", "nlhf-torch", "nlhf-jax")
"""Distributions whose entry points load first (their names win over any duplicate)."""

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


def import_timeout() -> float:
    """``NLHF_PLUGIN_TIMEOUT`` in seconds (> 0), else :data:`DEFAULT_IMPORT_TIMEOUT`."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV, ""))
    except ValueError:
        return DEFAULT_IMPORT_TIMEOUT
    return value if value > 0 else DEFAULT_IMPORT_TIMEOUT


class _ImportTimeout(Exception):
    pass


def _load(ep: md.EntryPoint, timeout: float) -> Any:
    """``ep.load()`` in a daemon thread, joined for at most ``timeout`` seconds; the
    plugin's own exception (any :class:`BaseException`) is re-raised here."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["module"] = ep.load()
        except BaseException as exc:  # reported by the caller, KeyboardInterrupt included
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"nlhf-plugin-{ep.name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise _ImportTimeout(
            f"import did not finish within {timeout:g} s (a plugin that hangs at import?); "
            f"skipped (set {TIMEOUT_ENV} to wait longer)"
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["module"]


def describe_error(exc: BaseException) -> str:
    """How a plugin failed, for :attr:`Plugins.failures` (``Type: message``)."""
    if isinstance(exc, _ImportTimeout):
        return str(exc)
    if isinstance(exc, SystemExit):
        return f"SystemExit: the plugin called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {exc}"


def _order(ep: md.EntryPoint) -> tuple[bool, str]:
    dist = ep.dist.name if ep.dist is not None else ""
    return dist not in BUILTIN_DISTRIBUTIONS, ep.name


def build_plugins(extra: list[ModuleType | object] | None = None) -> Plugins:
    """Load every allowed entry point (plus ``extra`` plugin objects, for tests) and
    fill the registries; every broken plugin is reported in :attr:`Plugins.failures`."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(manager=pm)
    allow = _allow_list()
    timeout = import_timeout()
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=_order):
        if allow is not None and ep.name not in allow:
            continue
        dist = ep.dist.name if ep.dist is not None else "unknown"
        version = ep.dist.version if ep.dist is not None else "unknown"
        if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
            first = plugins.packages.get(ep.name, ("another package", ""))[0]
            plugins.failures.append(
                PluginFailure(
                    ep.name,
                    dist,
                    f"PluginError: two installed packages define the nlhf plugin {ep.name!r} "
                    f"({first} and {dist}); {dist}'s is skipped: uninstall one",
                )
            )
            continue
        try:
            module = _load(ep, timeout)
            pm.register(module, name=ep.name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken plugin is reported, never fatal
            plugins.failures.append(PluginFailure(ep.name, dist, describe_error(exc)))
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
                _plugin: str = impl.plugin_name,
                _package: str = package,
                _version: str = version,
                **options: Any,
            ) -> None:
                try:
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
                except PluginError as exc:  # duplicate or empty name: skip this one entry
                    plugins.failures.append(PluginFailure(_plugin, _package, f"PluginError: {exc}"))

            try:
                impl.function(register=register)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                plugins.failures.append(
                    PluginFailure(impl.plugin_name, package, describe_error(exc))
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
