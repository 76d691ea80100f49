"""Pairwise preference data for ``task: preference_model`` (docs/spec.md, DataSpec).

:func:`load_pairs` turns a ``data:`` section into :class:`Pair` records
``(prompt, chosen, rejected, label)`` with ``label = P(chosen ≻ rejected)`` (1 unless a
soft ``label`` column is given), split into train / held-out, plus a report of what was
dropped or truncated. Formats (``data.format``):

- ``preference`` — TRL's ``prompt`` / ``chosen`` / ``rejected`` columns;
- ``hh_rlhf`` — Anthropic hh-rlhf full dialogues in ``chosen`` / ``rejected``: the
  shared prefix up to and including its last ``"\\n\\nAssistant:"`` becomes the prompt
  (:func:`split_hh_dialogue`), so ``prompt + chosen == original chosen dialogue``;
- ``auto`` — ``preference`` when a ``prompt`` column exists, else ``hh_rlhf``.

``data.columns`` maps nlhf's names (``prompt``, ``chosen``, ``rejected``, ``label``) to
the dataset's. Lengths are counted with an optional tokenizer (anything with
``encode(text, add_special_tokens=False)`` and ``decode(ids)``), else in characters.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from nlhf.errors import InputError

if TYPE_CHECKING:
    from nlhf.spec.models import DataSpec

ASSISTANT_TAG = "\n\nAssistant:"
PAIR_FORMATS = ("auto", "preference", "hh_rlhf")
Truncation = Literal["left", "right", "drop", "error"]
"""``DataSpec.truncation``: what :class:`PairBudget` does with an over-long pair."""


class TextCodec(Protocol):
    """The part of a tokenizer used for length budgets."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class Pair:
    """One comparison: ``label`` = P(``chosen`` ≻ ``rejected`` | ``prompt``)."""

    prompt: str
    chosen: str
    rejected: str
    label: float = 1.0


@dataclass
class PairData:
    """Train and held-out pairs plus ``report``: counts of rows read, identical pairs
    dropped, prompts/responses truncated, over-long pairs dropped, and the format used."""

    train: list[Pair]
    eval: list[Pair]
    report: dict[str, Any] = field(default_factory=dict)


def split_hh_dialogue(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two hh-rlhf dialogues into ``(prompt, chosen_response, rejected_response)``.

    The prompt is the longest common prefix of both dialogues cut just after its last
    ``"\\n\\nAssistant:"``; hence ``prompt + chosen_response == chosen`` and
    ``prompt + rejected_response == rejected`` (Anthropic hh-rlhf format,
    Bai et al. 2022, arXiv 2204.05862). Raises ``ValueError`` if there is no shared
    ``"\\n\\nAssistant:"`` turn.
    """
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(ASSISTANT_TAG, 0, n)
    if cut < 0:
        raise ValueError("the two dialogues share no '\\n\\nAssistant:' turn")
    end = cut + len(ASSISTANT_TAG)
    return chosen[:end], chosen[end:], rejected[end:]


def _detect_format(columns: Sequence[str], requested: str, path: str) -> str:
    if requested not in PAIR_FORMATS:
        raise InputError(
            f"data.format: {requested!r} is not a pairwise format; use one of "
            f"{', '.join(PAIR_FORMATS)} for `task: preference_model`"
        )
    if requested != "auto":
        return requested
    if "chosen" in columns and "rejected" in columns:
        return "preference" if "prompt" in columns else "hh_rlhf"
    raise InputError(
        f"data: cannot tell the pairwise format of {path}: columns found: "
        f"{', '.join(columns)}. Expected prompt/chosen/rejected (TRL) or chosen/rejected "
        "(hh-rlhf dialogues); map yours with data.columns, e.g. "
        "columns: {chosen: <col>, rejected: <col>}"
    )


def _check_text(value: Any, column: str, row: int, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(
            f"data: column {column!r} row {row} of {path} holds a {type(value).__name__}, "
            "not text (conversational lists of messages are not supported: render them "
            "to plain strings first)"
        )
    return value


def _check_label(value: Any, row: int, path: str) -> float:
    try:
        label = float(value)
    except (TypeError, ValueError):
        label = math.nan
    if not 0.0 <= label <= 1.0:  # also catches NaN
        raise InputError(
            f"data: column 'label' row {row} of {path} is {value!r}; a label is "
            "P(chosen ≻ rejected), a number in [0, 1]"
        )
    return label


class PairBudget:
    """The length budget of ``task: preference_model``'s pairs, one home for how a text is
    cut for a preference model: the prompt keeps its **last** ``max_prompt_length`` units
    and prompt + responses (``joint``: both, else the longer) fit ``max_length`` units, by
    ``policy`` (``DataSpec.truncation``). :meth:`fit` cuts a training or held-out pair,
    :meth:`cut` a comparison a trained preference model scores online (the same cut,
    never dropped) and :meth:`reward_text` the ``prompt + response`` a Bradley–Terry
    reward scores online (the same cut, that response alone)."""

    def __init__(
        self,
        max_length: int,
        max_prompt_length: int,
        *,
        policy: Truncation = "left",
        codec: TextCodec | None = None,
        joint: bool = True,
    ) -> None:
        self.policy = policy
        self.max_length = max_length
        self.max_prompt = max_prompt_length
        self.codec = codec
        self.joint = joint

    @classmethod
    def of(cls, spec: DataSpec, codec: TextCodec | None, reserve: int, joint: bool) -> PairBudget:
        """The budget of a ``data`` section, less the ``reserve`` units the model adds."""
        if spec.max_length - reserve <= 0:
            raise InputError(
                f"data.max_length: {spec.max_length} leaves no room after the {reserve} "
                "tokens the model's template needs; raise data.max_length"
            )
        return cls(
            spec.max_length - reserve,
            spec.max_prompt_length,
            policy=spec.truncation,
            codec=codec,
            joint=joint,
        )

    def ids(self, text: str) -> list[Any]:
        if self.codec is None:
            return list(text)
        return list(self.codec.encode(text, add_special_tokens=False))

    def text(self, ids: list[Any]) -> str:
        return "".join(ids) if self.codec is None else self.codec.decode(ids)

    def size(self, p: int, a: int, b: int) -> int:
        return p + a + b if self.joint else p + max(a, b)

    def over(self, p: int, a: int, b: int) -> bool:
        """Whether a prompt of ``p`` units and responses of ``a`` and ``b`` must be cut."""
        return p > self.max_prompt or self.size(p, a, b) > self.max_length

    def kept(self, p: int, a: int, b: int) -> tuple[int, int, int]:
        """Units kept of an over-long pair under ``left`` / ``right``: the prompt's last
        ``keep_p`` (first cut to ``max_prompt_length``; then, ``left``, further until the
        responses fit; ``right``, leaving at least one unit per response) and each
        response's first ``keep_a`` / ``keep_b`` (cut from the right only if still too
        long; jointly, the room is shared)."""
        keep_p = min(p, self.max_prompt)
        if self.policy == "left":  # then cut more prompt, responses only if still needed
            keep_p = min(keep_p, max(0, self.max_length - self.size(0, a, b)))
        else:  # leave at least one unit per response
            keep_p = min(keep_p, max(0, self.max_length - self.size(0, 1, 1)))
        room = self.max_length - keep_p
        keep_a, keep_b = a, b
        if self.size(0, keep_a, keep_b) > room:  # cut responses from the right
            if self.joint:
                share = room // 2
                keep_a = min(a, max(share, room - b))
                keep_b = min(b, room - keep_a)
            else:
                keep_a, keep_b = min(a, room), min(b, room)
        return keep_p, keep_a, keep_b

    def _cut_texts(
        self, p: list[Any], a: list[Any], b: list[Any], keep: tuple[int, int, int]
    ) -> tuple[str, str, str]:
        keep_p, keep_a, keep_b = keep
        prompt = self.text(p[len(p) - keep_p :]) if keep_p else ""
        return prompt, self.text(a[:keep_a]), self.text(b[:keep_b])

    def fit(self, pair: Pair, counts: dict[str, int], row: int, path: str) -> Pair | None:
        p, a, b = self.ids(pair.prompt), self.ids(pair.chosen), self.ids(pair.rejected)
        if not self.over(len(p), len(a), len(b)):
            return pair
        if self.policy == "error":
            raise InputError(
                f"data: row {row} of {path} is too long ({len(p)} prompt + {len(a)}/{len(b)} "
                f"response units; data.max_length {self.max_length} after the template, "
                f"data.max_prompt_length {self.max_prompt}). Set data.truncation to left, "
                "right or drop, or raise the limits"
            )
        if self.policy == "drop":
            counts["dropped_too_long"] += 1
            return None
        keep_p, keep_a, keep_b = self.kept(len(p), len(a), len(b))
        if keep_a == 0 or keep_b == 0:
            counts["dropped_too_long"] += 1
            return None
        if keep_p < len(p):
            counts["truncated_prompts"] += 1
        if keep_a < len(a) or keep_b < len(b):
            counts["truncated_responses"] += 1
        return Pair(*self._cut_texts(p, a, b, (keep_p, keep_a, keep_b)), pair.label)

    def cut(self, prompt: str, a: str, b: str) -> tuple[str, str, str]:
        """``(prompt, a, b)`` cut as :meth:`fit` cuts an over-long pair under ``left`` /
        ``right`` (:meth:`kept`; other policies cut as ``right``), for a comparison scored
        online: unchanged when it fits, never dropped (a response left no room is
        empty)."""
        p, x, y = self.ids(prompt), self.ids(a), self.ids(b)
        if not self.over(len(p), len(x), len(y)):
            return prompt, a, b
        return self._cut_texts(p, x, y, self.kept(len(p), len(x), len(y)))

    def reward_text(self, prompt: str, response: str) -> str:
        """``prompt + response`` cut as :meth:`cut` cuts a pair whose two responses are
        ``response`` (a reward reads one response at a time): unchanged when it fits, else
        the prompt's last ``keep_p`` units + the response's first ``keep_a``. An empty
        response keeps the cut prompt (where :meth:`fit` drops the pair)."""
        x, y, _ = self.cut(prompt, response, response)
        return x + y


def _rows_to_pairs(
    ds: Any, fmt: str, spec: Any, budget: PairBudget, counts: dict[str, int]
) -> list[Pair]:
    path = spec.path
    needed = ["prompt", "chosen", "rejected"] if fmt == "preference" else ["chosen", "rejected"]
    from nlhf.data.source import require_columns

    require_columns(ds, needed, spec=spec)
    has_label = "label" in ds.column_names
    pairs: list[Pair] = []
    empty: list[int] = []
    for row, record in enumerate(ds):
        chosen = _check_text(record["chosen"], "chosen", row, path)
        rejected = _check_text(record["rejected"], "rejected", row, path)
        if fmt == "hh_rlhf":
            if not chosen.strip() or not rejected.strip():
                empty.append(row)
                continue
            try:
                prompt, chosen, rejected = split_hh_dialogue(chosen, rejected)
            except ValueError as exc:
                raise InputError(
                    f"data: row {row} of {path} is not an hh-rlhf dialogue pair ({exc}); "
                    "use data.format: preference with a prompt column instead"
                ) from None
        else:
            prompt = _check_text(record["prompt"], "prompt", row, path)
        if not chosen.strip() or not rejected.strip():
            empty.append(row)
            continue
        label = _check_label(record["label"], row, path) if has_label else 1.0
        if chosen == rejected:
            counts["dropped_identical"] += 1
            continue
        pair = budget.fit(Pair(prompt, chosen, rejected, label), counts, row, path)
        if pair is not None:
            pairs.append(pair)
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise InputError(
            f"data: {len(empty)} row(s) of {path} have an empty chosen or rejected response "
            f"(rows {shown}); remove them from the data"
        )
    return pairs


def load_pairs(
    spec: Any,
    *,
    seed: int = 0,
    tokenizer: TextCodec | None = None,
    reserve: int = 0,
    joint: bool = True,
) -> PairData:
    """Load, validate, truncate and split the pairwise data of ``spec`` (a ``DataSpec``).

    ``reserve``: length units the model adds around the texts (a judge template);
    ``joint``: the budget covers prompt + both responses (a pairwise judge reads both)
    rather than prompt + the longer response (a reward model reads one at a time).
    Held-out pairs come from ``data.eval_split`` (hub datasets) or a seeded
    ``data.eval_fraction`` of the rows (shuffled when ``data.shuffle``).
    """
    from nlhf.data.source import load_rows

    counts = {
        "dropped_identical": 0,
        "dropped_too_long": 0,
        "truncated_prompts": 0,
        "truncated_responses": 0,
    }
    budget = PairBudget.of(spec, tokenizer, reserve, joint)
    ds = load_rows(spec)
    fmt = _detect_format(ds.column_names, spec.format, spec.path)
    train = _rows_to_pairs(ds, fmt, spec, budget, counts)
    rows = len(ds)
    held: list[Pair] = []
    if spec.eval_split is not None:
        if Path(spec.path).expanduser().exists():
            raise InputError(
                f"data.eval_split: local file {spec.path} has no named splits; use "
                "data.eval_fraction to hold out part of it"
            )
        eval_ds = load_rows(spec, split=spec.eval_split)
        held = _rows_to_pairs(eval_ds, fmt, spec, budget, counts)
        rows += len(eval_ds)
    if spec.shuffle:
        random.Random(seed).shuffle(train)
    if spec.eval_split is None and spec.eval_fraction > 0:
        n_eval = max(1, round(spec.eval_fraction * len(train)))
        if n_eval >= len(train):
            raise InputError(
                f"data.eval_fraction: {spec.eval_fraction} of {len(train)} usable pairs "
                "leaves none to train on; lower it or add data"
            )
        train, held = train[:-n_eval], train[-n_eval:]
    if not train:
        raise InputError(
            f"data: no usable pairs in {spec.path} ({counts['dropped_identical']} identical, "
            f"{counts['dropped_too_long']} too long); check the data and data.max_length"
        )
    report = {"format": fmt, "rows": rows, "train_pairs": len(train), "eval_pairs": len(held)}
    report.update(counts)
    report["length_unit"] = "characters" if tokenizer is None else "tokens"
    return PairData(train, held, report)


def pair_batch_indices(n: int, batch: int, step: int, seed: int, shuffle: bool) -> list[int]:
    """Indices of the training pairs of optimiser step ``step`` (0-based), the same on
    every backend: epoch e = step // ⌈n/batch⌉ visits the pairs in a permutation seeded by
    (seed, e) (:func:`nlhf.data.prompts.prompt_order`, the prompts' order too) and step
    k of that epoch takes its k-th slice of ``batch`` (the last one may be shorter). A
    resumed run therefore sees exactly the batches of the uninterrupted run."""
    from nlhf.data.prompts import prompt_order  # imports numpy: only when needed

    if n <= 0 or batch <= 0:
        raise ValueError(f"pair_batch_indices: need n > 0 and batch > 0 (got {n}, {batch})")
    epoch, k = divmod(step, math.ceil(n / batch))
    order = prompt_order(n, epoch, seed, shuffle)
    return [int(i) for i in order[k * batch : (k + 1) * batch]]
