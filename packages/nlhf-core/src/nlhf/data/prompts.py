"""Prompts for ``task: nash`` runs: one string per example from a ``data:`` section.

Formats (``data.format``):

- ``prompt``: a ``prompt`` column (TRL's prompt-only format).
- ``preference``: TRL's ``prompt``/``chosen``/``rejected``; only ``prompt`` is used.
- ``hh_rlhf``: Anthropic HH-RLHF full dialogues in ``chosen``/``rejected``; the prompt is
  their shared dialogue prefix, cut just after its last ``"\\n\\nAssistant:"``.
- ``auto``: ``prompt`` when that column exists, else ``hh_rlhf`` when ``chosen`` and
  ``rejected`` exist.
- any other name: a plugin format registered through ``nlhf_register_data_formats``,
  whose ``factory(rows, columns)`` yields records with a ``prompt`` key.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nlhf.data.source import load_rows, require_columns
from nlhf.errors import InputError

if TYPE_CHECKING:
    from nlhf.spec.models import DataSpec

ASSISTANT_TAG = "\n\nAssistant:"
BUILTIN_FORMATS = ("auto", "prompt", "preference", "hh_rlhf")


def hh_rlhf_prompt(chosen: str, rejected: str, *, where: str = "") -> str:
    """The shared dialogue prefix of ``chosen`` and ``rejected``, ending with the last
    ``"\\n\\nAssistant:"`` it contains (HH-RLHF stores whole dialogues, not prompts)."""
    n = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        n += 1
    common = chosen[:n]
    cut = common.rfind(ASSISTANT_TAG)
    if cut < 0:
        raise InputError(
            f"data{where}: `chosen` and `rejected` share no prefix ending in "
            f"{ASSISTANT_TAG!r}; is this HH-RLHF data? Use data.format: preference for "
            f"prompt/chosen/rejected columns"
        )
    return common[: cut + len(ASSISTANT_TAG)]


def _as_text(value: Any, row: int, path: str) -> str:
    if isinstance(value, str):
        return value
    raise InputError(
        f"data: row {row} of {path} has a {type(value).__name__} prompt; nash runs need "
        f"plain-text prompts (conversational message lists are not supported yet)"
    )


def _detect(columns: list[str], path: str) -> str:
    if "prompt" in columns:
        return "prompt"
    if "chosen" in columns and "rejected" in columns:
        return "hh_rlhf"
    raise InputError(
        f"data: cannot detect the format of {path}: no 'prompt' column (nor 'chosen' and "
        f"'rejected'); columns found: {', '.join(columns)}. Map yours with data.columns, "
        f"e.g. columns: {{prompt: <your column>}}"
    )


def load_prompts(data_spec: DataSpec) -> list[str]:
    """Return the prompts of ``data_spec`` (a :class:`nlhf.spec.DataSpec`), in file order.

    Errors (:class:`InputError`): empty dataset, missing ``prompt`` column (naming the
    columns found), non-string prompts, HH-RLHF pairs without a shared prefix.
    """
    local = Path(data_spec.path).expanduser()
    if local.is_file() and local.stat().st_size == 0:
        raise InputError(f"data.path: {data_spec.path} is empty (no rows); add prompts to it")
    ds = load_rows(data_spec)
    fmt = data_spec.format
    if fmt == "auto":
        fmt = _detect(list(ds.column_names), data_spec.path)
    if fmt in ("prompt", "preference"):
        require_columns(ds, ["prompt"], spec=data_spec)
        prompts = [_as_text(p, i, data_spec.path) for i, p in enumerate(ds["prompt"])]
    elif fmt == "hh_rlhf":
        require_columns(ds, ["chosen", "rejected"], spec=data_spec)
        prompts = [
            hh_rlhf_prompt(
                _as_text(c, i, data_spec.path),
                _as_text(r, i, data_spec.path),
                where=f" row {i} of {data_spec.path}",
            )
            for i, (c, r) in enumerate(zip(ds["chosen"], ds["rejected"], strict=True))
        ]
    else:
        from nlhf.plugins import get_plugins

        factory = get_plugins().data_formats.create(fmt)
        records = list(factory(ds, dict(data_spec.columns)))
        prompts = []
        for i, record in enumerate(records):
            if "prompt" not in record:
                raise InputError(
                    f"data.format: plugin format {fmt!r} returned a record without 'prompt' "
                    f"(keys: {', '.join(record)})"
                )
            prompts.append(_as_text(record["prompt"], i, data_spec.path))
    if not prompts:
        raise InputError(f"data.path: {data_spec.path} has no prompts")
    return prompts


@functools.lru_cache(maxsize=8)
def prompt_order(n: int, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """The order of the n prompts in ``epoch``: a permutation seeded by (seed, epoch), so
    every backend and a resumed run visit prompts in the same order (cached, read-only:
    a batch asks for it once per prompt)."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    order.flags.writeable = False
    return order


def batch_indices(position: int, size: int, n: int, seed: int, shuffle: bool) -> list[int]:
    """Prompt indices at global positions ``position .. position+size−1`` (crossing epochs)."""
    return [
        int(prompt_order(n, p // n, seed, shuffle)[p % n]) for p in range(position, position + size)
    ]
