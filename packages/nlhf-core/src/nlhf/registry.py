"""Name -> lazy factory registries for backends, preference models and data formats.

Plugins fill these through the register callbacks handed to them by the hooks in
:mod:`nlhf.hookspecs`; nothing is imported until :meth:`Registry.create` is called,
so ``nlhf backends`` and ``nlhf validate`` never import torch or jax.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from nlhf.errors import PluginError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered name. ``factory`` is called lazily; ``requires`` names the
    import names of frameworks the factory needs (e.g. ``("torch",)``)."""

    name: str
    factory: Callable[..., T]
    package: str = "unknown"
    version: str = "unknown"
    requires: tuple[str, ...] = ()
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def available(self) -> bool:
        """True when every framework in ``requires`` is importable (checked without importing it)."""
        return all(importlib.util.find_spec(mod) is not None for mod in self.requires)

    def missing(self) -> list[str]:
        return [mod for mod in self.requires if importlib.util.find_spec(mod) is None]

    @property
    def capabilities(self) -> Any:
        """A backend's option ``capabilities=``: what it runs, as data
        (:class:`nlhf.spec.capabilities.Capabilities`; None when it declares none)."""
        return self.options.get("capabilities")


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry(Generic[T]):
    """A mapping of unique names to :class:`Entry` objects of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def add(self, entry: Entry[T]) -> None:
        if not entry.name or not isinstance(entry.name, str):
            raise PluginError(f"{entry.package}: a {self.kind} needs a non-empty string name")
        if entry.name in self._entries:
            first = self._entries[entry.name]
            raise PluginError(
                f"duplicate {self.kind} name {entry.name!r}: registered by {first.package} "
                f"and by {entry.package}; {entry.package}'s is skipped (uninstall one of them "
                f"or set NLHF_PLUGINS to choose)"
            )
        self._entries[entry.name] = entry

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            known = sorted(self._entries)
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, known)}; "
                f"registered: {', '.join(known) or 'none'}"
            ) from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        """Instantiate ``name``; a missing framework gives an install hint, not an ImportError."""
        entry = self.get(name)
        missing = entry.missing()
        if missing:
            raise UnknownNameError(
                f"{self.kind} {name!r} (from {entry.package}) needs {', '.join(missing)}, "
                f"which is not installed; install it with: pip install {entry.package}"
            )
        return entry.factory(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[name] for name in sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
