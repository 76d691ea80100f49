"""What a backend can run, declared as data, and the one check of a spec against it.

A backend registers its :class:`Capabilities` with its plugin entry::

    register("mybackend", factory, capabilities=Capabilities(tasks=("nash",), ...))

so ``nlhf validate``, ``nlhf backends`` and ``nlhf run`` read them without importing the
backend's framework. :func:`check_capabilities` applies the same rules to every backend:
membership (task, algorithm, preference, engine, dtype, LoRA, ``top_k``) and the cross-field
rules below, parametrised by the same data. ``nlhf validate SPEC --backend NAME``,
``nlhf run`` and ``nlhf run --nproc N`` call it before any model loads and print located
problems (:func:`check_spec_file`); :func:`require` gives Python callers of a backend the
same problems as one :class:`~nlhf.errors.SpecError`. Writing capabilities for a
third-party backend: docs/plugins.md.

Cross-field rules (Munos et al., arXiv:2312.00886, §7 for the algorithms):

- ``rlhf_pg`` maximises a scalar reward r(x, y): its preference must have one
  (``bradley_terry_reward``; an ``oracle`` whose registration does not say ``reward=False``);
  ``llm_judge`` and ``pairwise_model`` only give P(y ≻ y′).
- ``policy.lora`` makes μ the policy with its adapter disabled, so ``reference.model`` is
  refused unless the backend declares ``lora_with_reference_model``.
- ``batch_size / grad_accum`` prompts form a micro-batch; it must be whole and, on a
  ``distributed: {engine: jax}`` mesh, divisible by the product of the mesh axes the
  backend splits batches over (``batch_axes``).
- under ``distributed: {engine: deepspeed}`` each rank samples its share of every
  micro-batch, so ``training.generation.batch_size`` must be the micro-batch (or unset).
- ``--nproc N > 1`` needs a task in ``launch_tasks`` and an engine in ``launch_engines``;
  tabular runs are single-process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nlhf.algorithms.params import LLM_ALGORITHMS, TABULAR_ALGORITHMS
from nlhf.errors import InputError, NLHFError, PluginError, SpecError, UnknownNameError
from nlhf.registry import Entry
from nlhf.spec.models import BUILTIN_PREFERENCES, Dtype, JaxMeshSpec, RunSpec

if TYPE_CHECKING:
    from nlhf.plugins import Plugins

Loc = tuple[str | int, ...]
Task = Literal["nash", "preference_model", "evaluate", "offline"]
ENGINES = ("none", "deepspeed", "jax")
LLM_PREFERENCES = tuple(name for name in BUILTIN_PREFERENCES if name != "tabular")
NO_SCALAR_REWARD = ("llm_judge", "pairwise_model")
"""Preference kinds that give P(y ≻ y′) but no scalar reward r(x, y)."""

__all__ = [
    "Capabilities",
    "Problem",
    "capabilities_of",
    "check_capabilities",
    "check_spec_file",
    "declared_capabilities",
    "require",
]


class Capabilities(BaseModel):
    """What a backend's ``train`` runs. Each field lists what is supported; the defaults
    support nothing, so a backend declares exactly what it accepts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: tuple[Task, ...] = ()
    """``task`` values of LLM specs (a policy model): ``nash``, ``preference_model``,
    ``evaluate``, ``offline``."""
    tabular_tasks: tuple[Task, ...] = ()
    """``task`` values of tabular specs (``preference: {name: tabular}``)."""
    algorithms: tuple[str, ...] = ()
    """``algorithm.name`` of LLM ``task: nash`` runs (among ``LLM_ALGORITHMS``)."""
    tabular_algorithms: tuple[str, ...] = ()
    """``algorithm.name`` of tabular runs (among ``TABULAR_ALGORITHMS``)."""
    preferences: tuple[str, ...] = ()
    """``preference.name`` of LLM ``nash`` / ``evaluate`` runs (built-in kinds or plugin
    preference-model names)."""
    plugin_preferences: bool = False
    """Builds every plugin preference model whose registration lists this backend in
    ``backends=`` (or lists no backends)."""
    engines: dict[Task, tuple[str, ...]] = Field(default_factory=dict)
    """``distributed.engine`` values per LLM task; a task not listed runs ``none`` only."""
    lora: tuple[Task, ...] = ()
    """Training tasks (``nash``, ``preference_model``) that train a ``policy.lora`` adapter
    (evaluation reads saved checkpoints and ignores ``policy.lora``)."""
    lora_with_reference_model: bool = False
    """``policy.lora`` together with ``reference.model`` in ``task: nash``."""
    dtypes: tuple[Dtype, ...] = ()
    """``dtype`` of the policy, reference and preference models."""
    top_k: bool = False
    """``training.generation.top_k > 0`` (sampling from the k likeliest tokens)."""
    batch_axes: tuple[str, ...] = ()
    """Axes of ``distributed.mesh`` (engine ``jax``) a micro-batch is split over."""
    launch_tasks: tuple[Task, ...] = ()
    """Tasks that ``nlhf run --nproc N`` (N > 1) launches on N processes (the backend
    object then has ``launch_command``, :class:`nlhf.algorithms.protocols.DistributedLaunch`)."""
    launch_engines: tuple[str, ...] = ()
    """``distributed.engine`` values such a launch needs."""
    encoder_backbones: bool = False
    """``task: preference_model`` on an encoder ``policy.model`` (BERT family, e.g. the
    packaged all-MiniLM-L6-v2; :func:`nlhf.packaged.model_kind`)."""
    mean_pooling: bool = False
    """``preference_training.pooling: mean`` (the masked mean of the last hidden states)."""
    frozen_layers: bool = False
    """``preference_training.frozen_layers > 0`` (the lowest blocks stay fixed)."""
    model_types: tuple[str, ...] | None = None
    """``config.json`` ``model_type`` values the backend's own model code loads (the jax
    decoders); None: whatever its framework loads (transformers' Auto classes)."""

    @model_validator(mode="after")
    def _known_names(self) -> Capabilities:
        problems: list[str] = []
        checks: list[tuple[str, Sequence[str], Sequence[str]]] = [
            ("algorithms", self.algorithms, LLM_ALGORITHMS),
            ("tabular_algorithms", self.tabular_algorithms, TABULAR_ALGORITHMS),
            ("launch_engines", self.launch_engines, ENGINES),
        ]
        checks += [(f"engines.{task}", names, ENGINES) for task, names in self.engines.items()]
        for field_name, names, known in checks:
            unknown = [n for n in names if n not in known]
            if unknown:
                problems.append(
                    f"{field_name}: unknown {', '.join(map(repr, unknown))} "
                    f"(known: {', '.join(known)})"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def engines_for(self, task: str) -> tuple[str, ...]:
        return self.engines.get(task, ("none",))  # type: ignore[call-overload]

    def describe(self) -> list[tuple[str, str]]:
        """``(capability, what is supported)`` rows, as ``nlhf backends`` prints them."""
        rows: list[tuple[str, str]] = [("tasks", _names(self.tasks))]
        if self.tasks:
            rows.append(("algorithms", _names(self.algorithms)))
            prefs = _names(self.preferences)
            rows.append(("preferences", prefs + (" + plugin models" * self.plugin_preferences)))
            by_engines: dict[tuple[str, ...], list[str]] = {}
            for task in self.tasks:
                by_engines.setdefault(self.engines_for(task), []).append(task)
            rows.append(
                (
                    "distributed",
                    "; ".join(f"{_names(e)} ({', '.join(t)})" for e, t in by_engines.items()),
                )
            )
            launch = "no"
            if self.launch_tasks:
                launch = f"{_names(self.launch_engines)} ({', '.join(self.launch_tasks)})"
            rows.append(("--nproc N", launch))
            lora = _names(self.lora)
            if self.lora and self.lora_with_reference_model:
                lora += " (with reference.model)"
            rows.append(("lora", lora))
            rows.append(("dtypes", _names(self.dtypes)))
            rows.append(("top_k", "yes" if self.top_k else "no (full vocabulary)"))
            if self.batch_axes:
                rows.append(("mesh batch axes", _names(self.batch_axes)))
        tabular = "no"
        if self.tabular_tasks:
            tabular = f"{', '.join(self.tabular_tasks)}: {_names(self.tabular_algorithms)}"
        rows.append(("tabular", tabular))
        return rows


def _names(values: Sequence[str]) -> str:
    return ", ".join(values) if values else "none"


@dataclass(frozen=True)
class Problem:
    """A spec setting a backend cannot run, and how to fix it. ``path`` is the spec field
    (``()``: the whole spec); ``option`` names a command-line option instead (``--nproc 2``)."""

    path: Loc
    message: str
    option: str | None = None

    def __str__(self) -> str:
        if self.option is not None:
            return f"{self.option}: {self.message}"
        return f"{'.'.join(map(str, self.path))}: {self.message}" if self.path else self.message


# ------------------------------------------------------------------------------ rules
class _Context:
    """What the rules see besides the spec: the backend, its capabilities, ``--nproc``,
    and (lazily, for hints and registry look-ups) the other backends and the plugins."""

    def __init__(
        self,
        spec: RunSpec,
        backend: str,
        caps: Capabilities,
        nproc: int,
        plugins: Plugins | None,
        others: Callable[[], Mapping[str, Capabilities]],
    ) -> None:
        self.spec, self.backend, self.caps, self.nproc = spec, backend, caps, nproc
        self.plugins = plugins
        self._others = others

    @cached_property
    def others(self) -> Mapping[str, Capabilities]:
        task, tabular = self.spec.task, self.spec.is_tabular
        try:
            return {
                n: c
                for n, c in self._others().items()
                if n != self.backend and task in (c.tabular_tasks if tabular else c.tasks)
            }
        except NLHFError:  # hints are a courtesy; a broken plugin set must not hide the problem
            return {}

    def elsewhere(self, supports: Callable[[str, Capabilities], bool]) -> str:
        """``; use --backend a or b``: the other backends that run the spec's task and where
        ``supports(name, capabilities)`` holds."""
        names = sorted(n for n, c in self.others.items() if supports(n, c))
        return f"; use --backend {' or '.join(names)}" if names else ""

    def unsupported(self, value: str, field_name: str) -> str:
        """``'x' is not supported by backend 'b' (supported: ...)`` for a value missing from
        the capability list ``field_name``, with the other backends that list it."""
        supported: Sequence[str] = getattr(self.caps, field_name)
        return (
            f"{value!r} is not supported by backend {self.backend!r} (supported: "
            f"{_names(supported)})" + self.elsewhere(lambda b, c: value in getattr(c, field_name))
        )


def _task(spec: RunSpec, ctx: _Context) -> Iterator[Problem]:
    caps, task = ctx.caps, spec.task
    tabular = spec.is_tabular
    if task in (caps.tabular_tasks if tabular else caps.tasks):
        return
    kind = "a tabular preference" if tabular else "an LLM policy"
    hint = ctx.elsewhere(lambda b, c: True)
    if tabular and task == "evaluate":
        hint = "; tabular win-rates are exact: `nlhf eval SPEC --backend numpy`"
    yield Problem(
        ("task",),
        f"{task!r} with {kind} is not supported by backend {ctx.backend!r} (LLM tasks: "
        f"{_names(caps.tasks)}; tabular tasks: {_names(caps.tabular_tasks)}){hint}",
    )


def _tabular(spec: RunSpec, ctx: _Context) -> Iterator[Problem]:
    name = spec.algorithm.name if spec.algorithm is not None else None
    if name is not None and name not in ctx.caps.tabular_algorithms:
        yield Problem(
            ("algorithm", "name"),
            ctx.unsupported(name, "tabular_algorithms"),
        )
    if spec.distributed.engine != "none":
        yield Problem(
            ("distributed", "engine"),
            f"{spec.distributed.engine!r}: tabular runs are single-process; remove the "
            "distributed section",
        )


def _preference(spec: RunSpec, ctx: _Context) -> Iterator[Problem]:
    pref = spec.preference
    if spec.task not in ("nash", "evaluate") or pref is None:
        return  # an evaluation may take its preference from a run directory later
    name, caps = pref.name, ctx.caps
    if name in LLM_PREFERENCES:
        if name not in caps.preferences:
            yield Problem(
                ("preference", "name"),
                ctx.unsupported(name, "preferences"),
            )
    elif not _builds_plugin(ctx.backend, caps, name, ctx.plugins):
        shown = [*caps.preferences, *(["plugin models"] if caps.plugin_preferences else [])]
        yield Problem(
            ("preference", "name"),
            f"plugin preference model {name!r} is not built by backend {ctx.backend!r} "
            f"(supported: {_names(shown)})"
            + ctx.elsewhere(lambda b, c: _builds_plugin(b, c, name, ctx.plugins)),
        )


def _builds_plugin(backend: str, caps: Capabilities, name: str, plugins: Plugins | None) -> bool:
    """Whether ``backend`` builds plugin preference model ``name`` (listed by name, or
    ``plugin_preferences`` and the model's ``backends=`` option allows it)."""
    if name in caps.preferences:
        return True
    if not caps.plugin_preferences:
        return False
    if plugins is None or name not in plugins.preference_models:
        return True
    listed = plugins.preference_models.get(name).options.get("backends")
    return listed is None or backend in tuple(listed)


def _algorithm(spec: RunSpec, ctx: _Context) -> Iterator[Problem]:
    if spec.task != "nash" or spec.algorithm is None:
        return
    name = spec.algorithm.name
    if name not in ctx.caps.algorithms:
        yield Problem(
            ("algorithm", "name"),
            ctx.unsupported(name, "algorithms"),
        )
    if name != "rlhf_pg" or spec.preference is None:
        return
    pref = spec.preference.name
    lacks = f"preference {pref!r} gives P(y ≻ y′) only" if pref in NO_SCALAR_REWARD else None
    # an oracle without one says so in its registration: register(..., reward=False)
    if pref == "oracle" and ctx.plugins is not None:
        function = getattr(spec.preference, "function", "")
        registry = ctx.plugins.oracles
        if function in registry and registry.get(function).options.get("reward") is False:
            lacks = f"oracle {function!r} has none (registered with reward=False)"
    if lacks is not None:
        yield Problem(
            ("algorithm", "name"),
            f"rlhf_pg needs a scalar reward r(x, y), and {lacks}; use a bradley_terry_reward "
            "preference (or an oracle with `reward`), or a preference-based algorithm such as "
            "nash_md_pg",
        )


def _engine(spec: RunSpec, ctx: _Context) -> Iterator[Problem]:
    engine, task = spec.distributed.engine, spec.task
    allowed = ctx.caps.engines_for(task)
    if engine in allowed:
        return
    other_tasks = any(engine in ctx.caps.engines_for(t) for t in ctx.caps.tasks)
    where = f" for task {task!r}" if other_tasks else ""
    yield Problem(
        ("distributed", "engine"),
        f"{engine!r} is not supported by backend {ctx.backend!r}{where} "
        f"(supported: {_names(allowed)})"
        + ctx.elsewhere(lambda b, c: engine in c.engines_for(task)),
    )


def _dtypes(spec: RunSpec, ctx: _Context) -> Iterator[Problem]:
    fields: list[tuple[Loc, str | None]] = [(("reference", "dtype"), spec.reference.dtype)]
    if spec.policy is not None:
        fields.append((("policy", "dtype"), spec.policy.dtype))
    if spec.task in ("nash", "evaluate") and spec.preference is not None:
        fields.append((("preference", "dtype"), getattr(spec.preference, "dtype", None)))
    for path, dtype in fields:
        if dtype is not None and dtype not in ctx.caps.dtypes:
            yield Problem(path, ctx.unsupported(dtype, "dtypes"))


def _sampling(spec: RunSpec, ctx: _Context) -> Iterator[Problem]:
    top_k = spec.training.generation.top_k
    if spec.task in ("nash", "evaluate") and top_k and not ctx.caps.top_k:
        yield Problem(
            ("training", "generation", "top_k"),
            f"{top_k} is not supported by backend {ctx.backend!r}: it samples from the full "
            f"vocabulary (exact Nash-MD-PG gradients need it); set top_k: 0"
            + ctx.elsewhere(lambda b, c: c.top_k),
        )


def _lora(spec: RunSpec, ctx: _Context) -> Iterator[Problem]:
    task = spec.task
    if spec.policy is None or spec.policy.lora is None or task == "evaluate":
        return
    if task not in ctx.caps.lora:
        yield Problem(
            ("policy", "lora"),
            f"LoRA is not supported by backend {ctx.backend!r} for task {task!r} (LoRA "
            f"tasks: {_names(ctx.caps.lora)}); remove policy.lora to train every parameter"
            + ctx.elsewhere(lambda b, c: task in c.lora),
        )
    elif (
        task in ("nash", "offline")
        and spec.reference.model
        and not ctx.caps.lora_with_reference_model
    ):
        yield Problem(
            ("reference", "model"),
            "with policy.lora the reference is the policy with its adapter disabled; "
            "remove reference.model",
        )


def _batches(spec: RunSpec, ctx: _Context) -> Iterator[Problem]:
    if spec.task != "nash":
        return
    try:
        micro = spec.training.micro_batch_size()
    except InputError as exc:  # TrainingSpec words it: "training.grad_accum: ..."
        head, _, message = str(exc).partition(": ")
        yield Problem(tuple(head.split(".")), message)
        return
    dist = spec.distributed
    generation = spec.training.generation_batch_size()
    if dist.engine == "deepspeed" and generation != micro:
        yield Problem(
            ("training", "generation", "batch_size"),
            f"under DeepSpeed each rank samples its share of every micro-batch, so "
            f"generation calls are micro-batches ({micro} prompts); remove "
            f"generation.batch_size or set it to {micro}",
        )
    if not isinstance(dist, JaxMeshSpec) or "jax" not in ctx.caps.engines_for("nash"):
        return
    ways = math.prod(dist.mesh.get(axis, 1) for axis in ctx.caps.batch_axes)
    if micro % ways:
        yield Problem(
            ("training", "batch_size"),
            f"micro-batches of {micro} prompts (batch_size / grad_accum) cannot be split over "
            f"the {ways} data-parallel devices of distributed.mesh {dist.mesh} (axes "
            f"{', '.join(ctx.caps.batch_axes)}); use a multiple of {ways}",
        )


def _launch(spec: RunSpec, ctx: _Context) -> Iterator[Problem]:
    n, caps, task = ctx.nproc, ctx.caps, spec.task
    if n <= 1:
        return
    option = f"--nproc {n}"
    if not caps.launch_tasks:
        hint = "" if spec.is_tabular else ctx.elsewhere(lambda b, c: task in c.launch_tasks)
        yield Problem(
            (),
            f"backend {ctx.backend!r} has no distributed launch; run with --nproc 1{hint}",
            option,
        )
        return
    if spec.is_tabular:
        yield Problem((), "tabular runs are single-process; run with --nproc 1", option)
        return
    if task not in caps.launch_tasks:
        yield Problem(
            ("task",),
            f"{task!r} has no distributed launch on backend {ctx.backend!r} ({option} runs: "
            f"{_names(caps.launch_tasks)}); use --nproc 1",
        )
    engine = spec.distributed.engine
    if engine not in caps.launch_engines and engine in caps.engines_for(task):
        first = caps.launch_engines[0] if caps.launch_engines else "?"
        yield Problem(
            ("distributed", "engine"),
            f"{engine!r} runs one process; {option} on backend {ctx.backend!r} needs "
            f"{' or '.join(caps.launch_engines) or 'none'}: add `distributed: {{engine: "
            f"{first}}}` to the spec (or --set distributed.engine={first}), or run with "
            "--nproc 1",
        )


def _backbone(spec: RunSpec, ctx: _Context) -> Iterator[Problem]:
    """A preference model's backbone and read-out: encoders and mean pooling are declared."""
    if spec.task != "preference_model" or spec.policy is None:
        return
    from nlhf.packaged import model_kind

    path = spec.policy.model
    if not ctx.caps.encoder_backbones and model_kind(path) == "encoder":
        yield Problem(
            ("policy", "model"),
            f"{path} is an encoder (bidirectional, e.g. BERT); backend {ctx.backend!r} trains "
            "preference models on decoder (causal LM) backbones only; use a decoder such as "
            "runs/models/smollm2-135m-instruct" + ctx.elsewhere(lambda b, c: c.encoder_backbones),
        )
    pt = spec.preference_training
    if pt is not None and pt.pooling == "mean" and not ctx.caps.mean_pooling:
        yield Problem(
            ("preference_training", "pooling"),
            f"'mean' is not supported by backend {ctx.backend!r} (its classification heads "
            "read the model's own pooled output); use `pooling: model`"
            + ctx.elsewhere(lambda b, c: c.mean_pooling),
        )
    if pt is not None and pt.frozen_layers and not ctx.caps.frozen_layers:
        yield Problem(
            ("preference_training", "frozen_layers"),
            f"{pt.frozen_layers} is not supported by backend {ctx.backend!r} (it trains every "
            "parameter); set frozen_layers: 0" + ctx.elsewhere(lambda b, c: c.frozen_layers),
        )


def _architectures(spec: RunSpec, ctx: _Context) -> Iterator[Problem]:
    """The model directories' ``model_type`` against ``model_types`` (known only for
    packaged models and local directories; an encoder as a preference-model backbone is
    :func:`_backbone`'s)."""
    supported = ctx.caps.model_types
    if supported is None:
        return
    from nlhf.packaged import model_kind, model_type

    paths: list[tuple[Loc, str | None]] = [
        (("policy", "model"), spec.policy.model if spec.policy else None),
        (("reference", "model"), spec.reference.model),
        (("preference", "model"), getattr(spec.preference, "model", None)),
    ]
    for loc, path in paths:
        kind = model_type(path) if isinstance(path, str) else None
        if kind is None or kind in supported:
            continue
        if spec.task == "preference_model" and loc[0] == "policy" and model_kind(path) == "encoder":
            continue

        def loads(name: str, caps: Capabilities, kind: str = kind) -> bool:
            return caps.model_types is None or kind in caps.model_types

        yield Problem(
            loc,
            f"{path} is a {kind!r} model; backend {ctx.backend!r} loads the model types "
            f"{_names(supported)}" + ctx.elsewhere(loads),
        )


_LLM_RULES = (
    _preference,
    _algorithm,
    _engine,
    _dtypes,
    _sampling,
    _lora,
    _batches,
    _backbone,
    _architectures,
)


def check_capabilities(
    spec: RunSpec,
    caps: Capabilities,
    backend: str,
    *,
    nproc: int = 1,
    plugins: Plugins | None = None,
    others: Mapping[str, Capabilities] | Callable[[], Mapping[str, Capabilities]] | None = None,
) -> list[Problem]:
    """Every reason ``backend`` (declaring ``caps``) cannot run ``spec`` on ``nproc``
    processes. ``plugins`` enables registry look-ups (oracle names and their
    ``reward=`` option, plugin preference models' ``backends=``); ``others`` (the other
    backends' capabilities, or a function returning them) adds ``use --backend X`` hints."""
    if others is None:
        others = {}
    table = others
    ctx = _Context(spec, backend, caps, nproc, plugins, table if callable(table) else lambda: table)
    problems = list(_task(spec, ctx))
    if problems:  # the other rules describe a task this backend does not run
        return problems
    rules = (_tabular,) if spec.is_tabular else _LLM_RULES
    for rule in (*rules, _launch):
        problems.extend(rule(spec, ctx))
    return problems


# --------------------------------------------------------------------- registry access
def _declared(entry: Entry[object]) -> Capabilities | None:
    raw = entry.capabilities
    if raw is None or isinstance(raw, Capabilities):
        return raw
    where = f"backend {entry.name!r} ({entry.package})"
    if not isinstance(raw, Mapping):
        raise PluginError(
            f"{where}: capabilities= must be an nlhf.spec.capabilities.Capabilities, "
            f"got {type(raw).__name__}"
        )
    try:
        return Capabilities.model_validate(dict(raw))
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'capabilities'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise PluginError(f"{where}: invalid capabilities: {details}") from None


def _plugins(plugins: Plugins | None) -> Plugins:
    if plugins is not None:
        return plugins
    from nlhf.plugins import get_plugins

    return get_plugins()


def capabilities_of(backend: str, plugins: Plugins | None = None) -> Capabilities | None:
    """The capabilities backend ``backend`` registered (None if it declares none); imports
    no framework. :class:`~nlhf.errors.UnknownNameError` for an unregistered name."""
    return _declared(_plugins(plugins).backends.get(backend))


def declared_capabilities(plugins: Plugins | None = None) -> dict[str, Capabilities]:
    """``{backend: capabilities}`` of every registered backend that declares valid ones."""
    found: dict[str, Capabilities] = {}
    for entry in _plugins(plugins).backends:
        try:
            caps = _declared(entry)
        except PluginError:
            continue
        if caps is not None:
            found[entry.name] = caps
    return found


def require(
    spec: RunSpec,
    backend: str,
    capabilities: Capabilities | None = None,
    *,
    nproc: int = 1,
    plugins: Plugins | None = None,
) -> None:
    """Raise one :class:`~nlhf.errors.SpecError` listing every problem of ``spec`` on
    ``backend`` (``field.path: message`` lines) — the check ``Backend.train`` and the
    trainers run for Python callers. ``capabilities`` defaults to the registered ones (of
    ``plugins``, else of the process-wide plugin set); ``plugins`` (a
    :class:`nlhf.plugins.Plugins`) also enables the registry rules, as in the CLI."""
    caps = capabilities
    if caps is None:
        try:
            caps = capabilities_of(backend, plugins)
        except UnknownNameError:
            if plugins is None:
                raise
            caps = capabilities_of(backend)  # a test's plugin set without the backends
    if caps is None:
        return
    problems = _check_against_all(spec, caps, backend, nproc, plugins)
    if problems:
        raise SpecError([str(p) for p in problems])


def _check_against_all(
    spec: RunSpec, caps: Capabilities, backend: str, nproc: int, plugins: Plugins | None
) -> list[Problem]:
    """:func:`check_capabilities`, with the other registered backends to suggest."""
    return check_capabilities(
        spec,
        caps,
        backend,
        nproc=nproc,
        plugins=plugins,
        others=lambda: declared_capabilities(plugins),
    )


def check_spec_file(
    spec: RunSpec,
    backend: str,
    source: str | Path,
    overrides: Sequence[str] = (),
    *,
    nproc: int = 1,
    plugins: Plugins | None = None,
) -> Capabilities | None:
    """The CLI's check: ``spec`` (loaded from ``source`` with ``overrides``) against the
    registered capabilities of ``backend``; every problem located like the loader's
    (``SPEC:LINE:COL: field.path: message``) in one :class:`~nlhf.errors.SpecError`.
    Returns the capabilities (None if the backend declares none)."""
    plugins = _plugins(plugins)
    caps = capabilities_of(backend, plugins)
    if caps is None:
        return None
    problems = _check_against_all(spec, caps, backend, nproc, plugins)
    if not problems:
        return caps
    from nlhf.spec.load import apply_overrides, format_problems, parse_yaml

    text = Path(source).read_text(encoding="utf-8")
    located = parse_yaml(text, str(source))
    applied = apply_overrides(located.data, overrides)
    in_spec = [(p.path, p.message) for p in problems if p.option is None]
    lines = format_problems(in_spec, located, applied)
    lines += [str(p) for p in problems if p.option is not None]
    raise SpecError(lines)
