"""pluggy hook specifications of nlhf (entry-point group ``nlhf``).

Each hook hands a plugin a ``register`` callback, as in simonw/llm::

    import nlhf

    @nlhf.hookimpl
    def nlhf_register_backends(register):
        register("mybackend", lambda: MyBackend(), requires=("mylib",))

The built-in backends (numpy, torch, jax) are registered the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from nlhf.spec import RunSpec

PROJECT = "nlhf"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class RegisterCallback(Protocol):
    """``register(name, factory, *, requires=(), description="", **options)``."""

    def __call__(
        self,
        name: str,
        factory: Any,
        *,
        requires: tuple[str, ...] = (),
        description: str = "",
        **options: Any,
    ) -> None: ...


@hookspec
def nlhf_register_backends(register: RegisterCallback) -> None:
    """Register backends: ``factory()`` returns an object implementing
    :class:`nlhf.algorithms.protocols.Backend`. Option ``capabilities`` (a
    :class:`nlhf.spec.capabilities.Capabilities`) says what it runs; ``nlhf validate`` and
    ``nlhf run`` check specs against it without calling ``factory`` (docs/plugins.md)."""


@hookspec
def nlhf_register_preference_models(register: RegisterCallback) -> None:
    """Register preference models usable as ``preference: {name: ...}`` in a spec.
    Option ``params_model`` (a pydantic model class) validates the spec section;
    ``backends`` (tuple of backend names) says who can run it."""


@hookspec
def nlhf_register_data_formats(register: RegisterCallback) -> None:
    """Register data formats: ``factory(rows, columns)`` maps raw rows to nlhf's
    canonical ``prompt``/``chosen``/``rejected`` records."""


@hookspec
def nlhf_register_oracles(register: RegisterCallback) -> None:
    """Register preference oracles ``factory(**options) -> f(prompt, y, y_prime) -> P(y≻y')``
    (used by ``preference: {name: oracle, function: NAME}``; tests and the quickstart).
    Option ``reward=False`` says ``f`` has no scalar ``f.reward(prompts, ys)``, so
    ``nlhf validate`` refuses ``algorithm: rlhf_pg`` with it."""


@hookspec
def nlhf_register_commands(cli: Any) -> None:
    """Add sub-commands to the ``nlhf`` typer application ``cli``."""


@hookspec
def nlhf_prepare_spec(spec: RunSpec) -> None:
    """Build files ``spec`` needs before it runs (every plugin's implementation is called).

    Called once per ``nlhf run``, in the process the command started: after the spec is
    loaded and checked and before the backend trains or a distributed launch starts its
    processes (which therefore find the files in place). Library code never calls it:
    ``train_nash(spec, ...)`` and ``Backend.train`` expect their inputs to exist. An
    implementation returns quickly for specs it does not recognise; e.g. the quickstart
    plugin builds its tiny SFT policy when ``policy.model`` is a missing
    ``quickstart-assets/policy`` directory. Errors are :class:`nlhf.errors.NLHFError`."""
