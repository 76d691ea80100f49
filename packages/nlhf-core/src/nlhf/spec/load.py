"""Load a YAML run spec with ``--set`` overrides and report every problem at once,
each located as ``SPEC:LINE:COL: field.path: message`` (torchtune's ``tune validate``
style). Overrides that cause an error are located as ``--set a.b=c: field.path: ...``.

Only the standard library, PyYAML and pydantic are used: loading a spec never
imports torch or jax (plugin preference models are checked through the registry's
lazy entries).
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from nlhf.errors import SpecError
from nlhf.registry import did_you_mean
from nlhf.spec.models import BUILTIN_PREFERENCES, RunSpec

Loc = tuple[str | int, ...]

__all__ = [
    "LocatedData",
    "apply_overrides",
    "format_problems",
    "load_spec",
    "load_spec_text",
    "oracle_problems",
    "parse_yaml",
]


# ------------------------------------------------------------------------------ YAML
MAX_YAML_DEPTH = 100
"""Deepest nesting of mappings/lists a spec may have (real specs nest 4 levels)."""
MAX_YAML_NODES = 100_000
"""Most values (scalars, mappings, lists) a spec may expand to, counting every use of an
alias ``*name`` as a copy of its anchor: bounds "billion laughs" files (a few lines of
nested aliases that expand to 10⁹ values). Real specs have a few hundred; a tabular
matrix of 300 × 300 entries fits."""


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as ``1e-5`` as numbers, and refuses
    nesting deeper than :data:`MAX_YAML_DEPTH` while composing (PyYAML's composer recurses
    once per level, so 5000 nested ``[`` would otherwise raise RecursionError)."""

    def __init__(self, stream: str, source: str = "<spec>") -> None:
        super().__init__(stream)
        self.source = source
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise SpecError([_located(self.source, mark, _too_deep())])
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_SpecLoader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789"))


@dataclass(frozen=True)
class Pos:
    """1-based line and column of a key (``key``) and of its value (``value``)."""

    value: tuple[int, int]
    key: tuple[int, int] | None = None


@dataclass
class LocatedData:
    """Parsed YAML plus the position of every mapping key / list item, by path."""

    data: Any
    positions: dict[Loc, Pos] = field(default_factory=dict)
    source: str = "<spec>"


def _mark(mark: yaml.Mark) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


def _located(source: str, mark: yaml.Mark | None, message: str) -> str:
    if mark is None:
        return f"{source}: {message}"
    line, col = _mark(mark)
    return f"{source}:{line}:{col}: {message}"


def _too_deep() -> str:
    return (
        f"YAML nested deeper than {MAX_YAML_DEPTH} levels (or an alias that contains itself); "
        "a run spec nests a few levels: check the brackets"
    )


@dataclass
class _Budget:
    """Values built so far by :func:`_build` (bounded by :data:`MAX_YAML_NODES`)."""

    nodes: int = 0


def parse_yaml(text: str, source: str = "<spec>") -> LocatedData:
    """Parse ``text`` keeping positions; YAML errors become a located :class:`SpecError`.
    Nesting and alias expansion are bounded (:data:`MAX_YAML_DEPTH`, :data:`MAX_YAML_NODES`)."""
    loader = _SpecLoader(text, source)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError(
                [
                    f"{source}: the spec is empty; start from an example in specs/ "
                    "(e.g. `spec_version: 1`, `task: nash`, `preference: ...`, `algorithm: ...`)"
                ]
            )
        located = LocatedData(data=None, source=source)
        located.data = _build(loader, node, (), located.positions, source, 0, _Budget())
        located.positions[()] = Pos(value=_mark(node.start_mark))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        if exc.context and exc.problem_mark is not None:
            problem = f"{problem} ({exc.context})"
        raise SpecError([_located(source, mark, f"YAML syntax error: {problem}")]) from None
    except yaml.YAMLError as exc:  # pragma: no cover - PyYAML marks almost everything
        raise SpecError([f"{source}: YAML error: {exc}"]) from None
    finally:
        loader.dispose()
    if not isinstance(located.data, dict):
        kind = type(located.data).__name__
        raise SpecError(
            [
                _located(
                    source,
                    node.start_mark,
                    f"the spec must be a mapping of sections "
                    f"(spec_version, task, preference, ...), got a {kind}",
                )
            ]
        )
    return located


def _build(
    loader: _SpecLoader,
    node: yaml.Node,
    path: Loc,
    positions: dict[Loc, Pos],
    source: str,
    depth: int,
    budget: _Budget,
) -> Any:
    if depth > MAX_YAML_DEPTH:
        raise SpecError([_located(source, node.start_mark, _too_deep())])
    budget.nodes += 1
    if budget.nodes > MAX_YAML_NODES:
        raise SpecError(
            [
                _located(
                    source,
                    node.start_mark,
                    f"YAML expands to more than {MAX_YAML_NODES} values (each alias `*name` "
                    "repeats its anchor's content); a run spec has a few hundred: remove "
                    "the nested aliases",
                )
            ]
        )
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # YAML merge keys (<<)
        result: dict[Any, Any] = {}
        first_seen: dict[Any, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError([_located(source, key_node.start_mark, "keys must be scalars")])
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise SpecError([_located(source, key_node.start_mark, "keys must be scalars")])
            if key in first_seen:
                line, _ = _mark(first_seen[key])
                raise SpecError(
                    [
                        _located(
                            source,
                            key_node.start_mark,
                            f"duplicate key {key!r} (first given on line {line}); keep one",
                        )
                    ]
                )
            first_seen[key] = key_node.start_mark
            child = (*path, key)
            positions[child] = Pos(
                value=_mark(value_node.start_mark), key=_mark(key_node.start_mark)
            )
            result[key] = _build(loader, value_node, child, positions, source, depth + 1, budget)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            child = (*path, index)
            positions[child] = Pos(value=_mark(item.start_mark))
            items.append(_build(loader, item, child, positions, source, depth + 1, budget))
        return items
    return loader.construct_object(node, deep=True)


def _parse_value(text: str, source: str) -> Any:
    """One YAML value (a ``--set`` right-hand side), bounded like a spec file."""
    loader = _SpecLoader(text, source)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        return _build(loader, node, (), {}, source, 0, _Budget())
    finally:
        loader.dispose()


# ------------------------------------------------------------------------- overrides
@dataclass(frozen=True)
class Override:
    text: str
    path: Loc


def _split_key(key: str) -> Loc:
    return tuple(int(part) if part.isdigit() else part for part in key.split("."))


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> list[Override]:
    """Apply ``a.b=value`` overrides in place (value parsed as YAML; intermediate mappings
    created; ``a.0.b`` indexes a list). Returns the applied overrides with their paths."""
    applied: list[Override] = []
    issues: list[str] = []
    for text in overrides:
        where = f"--set {text}"
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            issues.append(
                f"{where}: expected KEY=VALUE with a dotted key, e.g. --set training.lr=1e-5"
            )
            continue
        try:
            value = _parse_value(raw, where) if raw.strip() else None
        except yaml.YAMLError as exc:
            issues.append(f"{where}: the value is not valid YAML ({exc}); quote strings if needed")
            continue
        except SpecError as exc:
            issues.extend(exc.issues)
            continue
        path = _split_key(key)
        problem = _set_path(data, path, value)
        if problem:
            issues.append(f"{where}: {problem}")
            continue
        applied.append(Override(text=text, path=path))
    if issues:
        raise SpecError(issues)
    return applied


def _set_path(data: Any, path: Loc, value: Any) -> str | None:
    node = data
    for depth, part in enumerate(path[:-1]):
        here = ".".join(map(str, path[: depth + 1]))
        if isinstance(node, list):
            if not isinstance(part, int) or not 0 <= part < len(node):
                return f"{here}: index out of range for a list of {len(node)} items"
            node = node[part]
            continue
        if not isinstance(node, dict):
            return f"{here}: cannot set a key inside a {type(node).__name__}"
        key = str(part)
        if key not in node or node[key] is None:
            node[key] = {}
        node = node[key]
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or not 0 <= last <= len(node):
            return f"{'.'.join(map(str, path))}: index out of range for a list of {len(node)} items"
        if last == len(node):
            node.append(value)
        else:
            node[last] = value
        return None
    if not isinstance(node, dict):
        parent = ".".join(map(str, path[:-1]))
        return f"{parent}: cannot set a key inside a {type(node).__name__}"
    node[str(last)] = value
    return None


# ----------------------------------------------------------- pydantic loc -> field path
@dataclass
class _Resolved:
    path: Loc  # displayed field path (union tags / member labels dropped)
    parent_model: type[BaseModel] | None = None  # model holding the last path element
    union_at: Loc | None = None  # path of a non-discriminated union whose member label was dropped
    label: str | None = None
    annotation: Any = None  # the type reached at the end of the loc


def _strip(ann: Any) -> tuple[Any, str | None]:
    """Strip ``Annotated`` (keeping a pydantic ``Tag``) and ``None`` from unions."""
    tag = None
    while typing.get_origin(ann) is typing.Annotated:
        for meta in ann.__metadata__:
            if type(meta).__name__ == "Tag":
                tag = meta.tag
        ann = ann.__origin__
    return ann, tag


def _union_members(ann: Any) -> list[Any] | None:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(ann) if m is not type(None)]
        if len(members) == 1:
            return None
        return members
    return None


def _nullable_inner(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(ann) if m is not type(None)]
        if len(members) == 1:
            return members[0]
    return ann


def _member_tags(member: Any) -> set[str]:
    inner, tag = _strip(member)
    if tag is not None:
        return {tag}
    tags: set[str] = set()
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        for info in inner.model_fields.values():
            ann = _strip(info.annotation)[0]
            if typing.get_origin(ann) is typing.Literal and len(typing.get_args(ann)) == 1:
                value = typing.get_args(ann)[0]
                if isinstance(value, str):
                    tags.add(value)
    return tags


def _resolve(loc: Loc, root: type[BaseModel]) -> _Resolved:
    ann: Any = root
    out = _Resolved(path=())
    path: list[str | int] = []
    for element in loc:
        ann = _strip(_nullable_inner(_strip(ann)[0]))[0]
        members = _union_members(ann)
        if members is not None:
            chosen = None
            for member in members:
                if isinstance(element, str) and element in _member_tags(member):
                    chosen = member
                    break
            if chosen is None:  # a smart-union member label such as 'float' or 'list[str]'
                out.union_at = tuple(path)
                out.label = str(element)
                for member in members:
                    inner = _strip(member)[0]
                    name = getattr(inner, "__name__", None)
                    if name and isinstance(element, str) and re.search(rf"\b{name}\b", element):
                        chosen = inner
                        break
            ann = chosen if chosen is not None else Any
            continue
        path.append(element)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.parent_model = ann
            info = ann.model_fields.get(str(element))
            ann = info.annotation if info is not None else Any
            continue
        out.parent_model = None
        origin, args = typing.get_origin(ann), typing.get_args(ann)
        if origin in (list, Sequence) and args:
            ann = args[0]
        elif origin is tuple and args:
            index = element if isinstance(element, int) else 0
            ann = args[-1] if args[-1] is Ellipsis or index >= len(args) else args[index]
            if ann is Ellipsis:
                ann = args[0]
        elif origin is dict and len(args) == 2:
            ann = args[1]
        else:
            ann = Any
    out.path = tuple(path)
    out.annotation = _strip(ann)[0]
    return out


# ----------------------------------------------------------------------- formatting
_KIND = {
    "float_type": "a number",
    "float_parsing": "a number",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "none_required": "null",
}
_MISMATCH = set(_KIND) | {"literal_error", "is_instance_of"}


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _message(err: dict[str, Any], resolved: _Resolved, data: Any) -> str:
    kind = err["type"]
    msg = str(err["msg"])
    if kind == "extra_forbidden":
        name = str(resolved.path[-1]) if resolved.path else "?"
        hint = ""
        if resolved.parent_model is not None:
            fields = list(resolved.parent_model.model_fields)
            hint = did_you_mean(name, fields) or f"; valid keys: {', '.join(fields)}"
        return f"unknown key{hint}"
    if kind == "missing":
        return "required field is missing"
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping of fields; got {_short(err.get('input'))}"
    value = err.get("input")
    if kind in ("int_type", "float_type") and isinstance(value, bool):
        return f"{msg}; got {str(value).lower()} (a boolean, not a number)"
    if kind == "int_type" and isinstance(value, float):
        return f"{msg}; got {value!r} (write a whole number without a decimal point or exponent)"
    if kind != "value_error" and "input" in err and not isinstance(value, dict | list):
        msg = f"{msg}; got {_short(value)}"
    return msg


def _tag_message(err: dict[str, Any], resolved: _Resolved) -> tuple[str, str]:
    """(field name, message) of a bad/missing discriminator tag."""
    ctx = err.get("ctx") or {}
    field_name = str(ctx.get("discriminator", "'name'")).strip("'")
    section = str(err["loc"][-1]) if err["loc"] else "section"
    noun = {"name": section, "engine": "engine"}.get(field_name, field_name)
    expected = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",") if t]
    if not expected:
        ann = _strip(_nullable_inner(_strip(resolved.annotation)[0]))[0]
        for member in _union_members(ann) or []:
            expected.extend(sorted(_member_tags(member)))
    if err["type"] == "union_tag_invalid":
        tag = str(ctx.get("tag", "?"))
        return field_name, (
            f"unknown {noun} {tag!r}{did_you_mean(tag, expected)}; "
            f"choose one of: {', '.join(expected)}"
        )
    return field_name, f"missing `{field_name}`; choose one of: {', '.join(expected)}"


@dataclass
class _Issue:
    path: Loc
    message: str
    key_position: bool = False  # locate at the key (unknown keys, sections) not the value


def _split_model_error(
    text: str, target: type[BaseModel], resolved: _Resolved, prefix: Loc
) -> list[_Issue]:
    """Split a model validator's message into one issue per ``field.path: ...`` part (the
    first path component must be a field of ``target``); other parts stay attached."""
    issues: list[_Issue] = []
    base = (*prefix, *resolved.path)
    for part in text.split("; "):
        head, sep, rest = part.partition(": ")
        named = sep and re.fullmatch(r"[A-Za-z_]\w*(?:\.\w+)*", head)
        if named and head.split(".")[0] in target.model_fields:
            issues.append(_Issue((*base, *_split_key(head)), rest, key_position=True))
        elif issues:
            issues[-1].message += f"; {part}"
        else:
            issues.append(_Issue(base, part, key_position=True))
    return issues


def _issues_from(
    exc: ValidationError, model: type[BaseModel], data: Any, prefix: Loc = ()
) -> list[_Issue]:
    issues: list[_Issue] = []
    unions: dict[Loc, list[tuple[dict[str, Any], _Resolved]]] = {}
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            resolved = _resolve(loc, model)
            field_name, message = _tag_message(err, resolved)
            issues.append(_Issue((*prefix, *resolved.path, field_name), message))
            continue
        resolved = _resolve(loc, model)
        target = resolved.annotation
        if (
            err["type"] == "value_error"
            and resolved.union_at is None
            and isinstance(target, type)
            and issubclass(target, BaseModel)
        ):  # a model validator: "field.path: message; other.field: message"
            issues.extend(
                _split_model_error(_message(err, resolved, data), target, resolved, prefix)
            )
            continue
        if resolved.union_at is not None:
            unions.setdefault(resolved.union_at, []).append((err, resolved))
            continue
        key_pos = err["type"] in ("extra_forbidden", "missing") or err["type"] == "value_error"
        issues.append(_Issue((*prefix, *resolved.path), _message(err, resolved, data), key_pos))
    for union_path, errs in unions.items():
        specific = [(e, r) for e, r in errs if e["type"] not in _MISMATCH or r.path != union_path]
        if specific:
            for err, resolved in specific:
                key_pos = err["type"] in ("extra_forbidden", "missing")
                issues.append(
                    _Issue((*prefix, *resolved.path), _message(err, resolved, data), key_pos)
                )
            continue
        kinds: list[str] = []
        for err, resolved in errs:
            if err["type"] == "literal_error":
                kind = str(err["msg"]).removeprefix("Input should be ")
            elif err["type"] in ("model_type", "model_attributes_type"):
                names = re.findall(r"\b[A-Z]\w*", str(resolved.label))
                kind = f"a {names[-1]} mapping" if names else "a mapping"
            else:
                kind = _KIND.get(err["type"], str(err["msg"]))
            if kind not in kinds:
                kinds.append(kind)
        got = _short(errs[0][0].get("input"))
        issues.append(_Issue((*prefix, *union_path), f"expected {' or '.join(kinds)}; got {got}"))
    return issues


def _get(data: Any, path: Loc) -> Any:
    node = data
    for part in path:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if not (in_dict or in_list):
            return None
        node = node[part]
    return node


def _format(issue: _Issue, located: LocatedData, overrides: list[Override]) -> str:
    shown = ".".join(map(str, issue.path)) or "(spec)"
    text = f"{shown}: {issue.message}" if issue.path else issue.message
    # the latest override that set this path or one of its parents (or children) caused it
    for override in reversed(overrides):
        n = len(override.path)
        if issue.path[:n] == override.path or (
            override.path[: len(issue.path)] == issue.path and issue.path not in located.positions
        ):
            return f"--set {override.text}: {text}"
    for cut in range(len(issue.path), -1, -1):
        pos = located.positions.get(issue.path[:cut])
        if pos is None:
            continue
        value = _get(located.data, issue.path[:cut])
        use_key = pos.key is not None and (
            issue.key_position or cut < len(issue.path) or isinstance(value, dict | list)
        )
        line, col = pos.key if use_key and pos.key else pos.value
        return f"{located.source}:{line}:{col}: {text}"
    return f"{located.source}: {text}"


# -------------------------------------------------------------------- plugin checks
def _plugin_preference_issues(data: dict[str, Any]) -> list[_Issue]:
    pref = data.get("preference")
    if not isinstance(pref, dict) or not isinstance(pref.get("name"), str):
        return []
    name = pref["name"]
    if name in BUILTIN_PREFERENCES:
        return []
    from nlhf.plugins import get_plugins

    registry = get_plugins().preference_models
    if name not in registry:
        known = [*BUILTIN_PREFERENCES, *registry.names()]
        return [
            _Issue(
                ("preference", "name"),
                f"unknown preference {name!r}{did_you_mean(name, known)}; built-in: "
                f"{', '.join(BUILTIN_PREFERENCES)}; from plugins: "
                f"{', '.join(registry.names()) or 'none installed'}",
            )
        ]
    params_model = registry.get(name).options.get("params_model")
    if not (isinstance(params_model, type) and issubclass(params_model, BaseModel)):
        return []
    fields = dict(pref)
    if "name" not in params_model.model_fields:
        fields.pop("name")
    try:
        params_model.model_validate(fields)
    except ValidationError as exc:
        return _issues_from(exc, params_model, fields, prefix=("preference",))
    return []


def oracle_problems(function: str, options: dict[str, Any]) -> list[tuple[Loc, str]]:
    """``(field path, message)`` problems of ``preference: {name: oracle, function,
    options}`` against the installed plugins (the CLI's pre-flight check,
    :mod:`nlhf.spec.preflight`): ``function`` must be a registered oracle, and ``options``
    must fit it: its ``params_model`` when it registered one (a pydantic model), else the
    keyword parameters of its factory (unless it takes ``**options``)."""
    return [(issue.path, issue.message) for issue in _oracle_issues(function, options)]


def _oracle_issues(function: str, options: dict[str, Any]) -> list[_Issue]:
    from nlhf.plugins import get_plugins

    registry = get_plugins().oracles
    if function not in registry:
        return [
            _Issue(
                ("preference", "function"),
                f"unknown oracle {function!r}{did_you_mean(function, registry.names())}; "
                f"registered by plugins: {', '.join(registry.names()) or 'none installed'}",
            )
        ]
    entry = registry.get(function)
    params_model = entry.options.get("params_model")
    if isinstance(params_model, type) and issubclass(params_model, BaseModel):
        try:
            params_model.model_validate(options)
        except ValidationError as exc:
            return _issues_from(exc, params_model, options, prefix=("preference", "options"))
        return []
    try:
        parameters = inspect.signature(entry.factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return []
    names = [p.name for p in parameters if p.kind is not inspect.Parameter.POSITIONAL_ONLY]
    return [
        _Issue(
            ("preference", "options", key),
            f"unknown option of oracle {function!r}{did_you_mean(str(key), names)}; "
            f"it takes: {', '.join(names) or 'no options'}",
            key_position=True,
        )
        for key in options
        if key not in names
    ]


# ---------------------------------------------------------------------------- entry
def _order(line: str, overrides: list[Override]) -> tuple[int, int, int]:
    """File positions first (by line, column), then ``--set`` issues in command-line order."""
    for index, override in enumerate(overrides):
        if line.startswith(f"--set {override.text}: "):
            return 1, index, 0
    match = re.match(r"^.*?:(\d+):(\d+): ", line)
    if match:
        return 0, int(match.group(1)), int(match.group(2))
    return 2, 0, 0


def format_problems(
    problems: Sequence[tuple[Loc, str]], located: LocatedData, overrides: Sequence[Override]
) -> list[str]:
    """``(field path, message)`` problems found after loading (e.g. by
    :mod:`nlhf.spec.capabilities`), located and ordered like the loader's own:
    ``SPEC:LINE:COL: field.path: message`` or ``--set a.b=c: field.path: message``."""
    applied = list(overrides)
    lines = (_format(_Issue(tuple(path), message), located, applied) for path, message in problems)
    formatted: list[str] = []
    for line in sorted(lines, key=lambda t: _order(t, applied)):
        if line not in formatted:
            formatted.append(line)
    return formatted


def load_spec_text(text: str, source: str = "<spec>", overrides: Sequence[str] = ()) -> RunSpec:
    """Validate spec ``text`` (named ``source`` in messages) with ``overrides`` applied."""
    located = parse_yaml(text, source)
    applied = apply_overrides(located.data, overrides)
    issues: list[_Issue] = []
    spec: RunSpec | None = None
    try:
        spec = RunSpec.model_validate(located.data)
    except ValidationError as exc:
        issues.extend(_issues_from(exc, RunSpec, located.data))
    issues.extend(_plugin_preference_issues(located.data))
    if issues or spec is None:
        formatted: list[str] = []
        for line in sorted(
            (_format(i, located, applied) for i in issues), key=lambda t: _order(t, applied)
        ):
            if line not in formatted:
                formatted.append(line)
        raise SpecError(formatted)
    return spec


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> RunSpec:
    """Load and validate the YAML run spec at ``path``; every problem is reported at once
    in a :class:`nlhf.errors.SpecError` as ``SPEC:LINE:COL: field.path: message``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            [f"{path}: no such spec file; check the path (see specs/ for examples)"]
        ) from None
    except IsADirectoryError:
        raise SpecError([f"{path}: is a directory, not a YAML spec file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"{path}: cannot read the spec: {exc}"]) from None
    return load_spec_text(text, str(path), overrides)
