"""Checks of a valid spec against this installation and machine, run by ``nlhf validate``
and ``nlhf run`` before any model loads: an ``oracle`` preference names a registered oracle
with options it takes, the output directory can be written, and the sizes fit in memory.

These depend on what is installed and on the machine, not on the spec alone, so they are
not part of the schema
(:mod:`nlhf.spec.models`); problems are located like the loader's
(``SPEC:LINE:COL: field.path: message``, exit 2).

**Memory estimate** (a lower bound: a run that needs more than this certainly fails; what
it leaves out comes on top). With B prompts per micro-batch (``batch_size / grad_accum``),
T = ``data.max_prompt_length + generation.max_new_tokens`` tokens per sequence, and, from
the model's ``config.json`` when ``policy.model`` is a local directory, V = ``vocab_size``,
L = ``num_hidden_layers``, h = ``hidden_size``, I = ``intermediate_size`` (0 if absent),
H_kv = ``num_key_value_heads`` × head size (``head_dim``, else ``hidden_size /
num_attention_heads``), N = the parameters in its ``*.safetensors`` headers (else weight
bytes / bytes of its ``dtype``); s = bytes of ``policy.dtype``:

- token ids of the two responses y, y' (int64): 2·B·T·8 bytes;
- the logits of the loss's forward (float32): B·T·V·4 bytes, or B·c·V·4 when
  ``training.logprob_chunk`` gives chunks of c completion positions
  (:meth:`~nlhf.spec.models.TrainingSpec.logprob_chunk_size`);
- the KV cache of one sampled batch: 2·L·B·T·H_kv·s bytes (K and V);
- ``task: nash``: the policy's parameters N·s, and, when every parameter trains (no
  ``policy.lora``) on one process (``distributed.engine: none``: DeepSpeed and a jax mesh
  shard or offload them), their gradients N·s and Adam's two moments 2·N·s (none for
  ``sgd``). ``precision: bf16-mixed`` needs ``policy.dtype: float32``, so these stay
  4 bytes each (float32 master weights, gradients and moments);
- ``task: nash``, the activations the loss's backward keeps, in bytes a = 2 under
  ``precision: bf16-mixed`` (bfloat16 compute), else s. Each decoder block keeps at least
  the inputs of its weight-gradient matmuls (q/k/v, o, gate/up: h each; down: I), so
  L·B·T·(3h + I)·a; with ``training.gradient_checkpointing`` only each block's input is
  kept and one block is recomputed at a time: B·T·(L·h + 3h + I)·a;
- otherwise the model's weight files, which are loaded at least once.

Preference scorers (``preference.batch_size`` × ``max_length``), ``task: preference_model``
(``training.batch_size`` × ``data.max_length``, both presentation orders) and ``task:
offline`` (the same sizes: the chosen and rejected rows of each pair) count the
token-id, full-logits, KV-cache and weight-file terms; ``task: offline`` scores the pairs of
policy and reference in chunks under ``training.logprob_chunk``, so its logits term is
B·c·V·4 there (c for T = ``data.max_length``). A tabular game of n responses needs 4·n²·8 bytes: P, A = P − ½, and the Newton
matrices J and A·D of :func:`nlhf.tabular.solvers.regularized_nash`.

Available memory is ``MemAvailable`` of ``/proc/meminfo``, capped by the cgroup v2 limit
(``memory.max − memory.current``) when there is one; ``psutil`` where ``/proc`` is missing;
no memory check when neither is readable.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlhf.errors import SpecError
from nlhf.spec.models import (
    BradleyTerryPreference,
    LLMJudgePreference,
    OraclePreference,
    PairwiseModelPreference,
    RunSpec,
    TabularPreference,
)

Loc = tuple[str | int, ...]

MIN_FREE_BYTES = 64 * 2**20
"""Free space an output directory's filesystem must have: metrics, plots and the resolved
spec (checkpoints need more; they are written atomically, so a full disk never leaves a
half checkpoint, but the run stops)."""
TABULAR_MATRICES = 4
"""n×n float64 matrices a tabular solve holds at once (see the module docstring)."""
DTYPE_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".msgpack")

__all__ = [
    "MemoryEstimate",
    "available_memory",
    "check_output_dir",
    "check_preflight",
    "estimate_memory",
    "preflight_problems",
]


# ------------------------------------------------------------------------- output dir
def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_output_dir(path: str | Path) -> str | None:
    """Why no run can write its outputs to directory ``path``, or None.

    ``path`` (created by the run if missing) must not be a file nor lie under one, its
    nearest existing directory must be writable, and that filesystem must have at least
    :data:`MIN_FREE_BYTES` free."""
    path = Path(path)
    probe = path
    while not probe.exists() and not probe.is_symlink():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        if probe == path:
            return f"{path} is a file, not a directory; remove it or choose another output.dir"
        return f"{path} lies under {probe}, which is not a directory; choose another output.dir"
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is" if probe == path else f"lies under {probe}, which is"
        return (
            f"{path} {what} not writable (a read-only filesystem or no permission); "
            "choose another output.dir"
        )
    try:
        free = shutil.disk_usage(probe).free
    except OSError as exc:
        return f"{path}: cannot read the free space of {probe} ({exc})"
    if free < MIN_FREE_BYTES:
        return (
            f"no space left on the filesystem of {probe}: {_size(free)} free, a run needs at "
            f"least {_size(MIN_FREE_BYTES)}; free some space or choose another output.dir"
        )
    return None


# ----------------------------------------------------------------------------- memory
def available_memory() -> int | None:
    """Bytes this process can still allocate (see the module docstring), or None."""
    available: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        available = None
    if available is None:
        try:
            import psutil
        except ImportError:
            return None
        return int(psutil.virtual_memory().available)
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            available = min(available, max(int(limit) - int(used), 0))
    except (OSError, ValueError):
        pass
    return available


@dataclass(frozen=True)
class ModelShape:
    """What the memory estimate reads from a model directory (None: unknown)."""

    vocab: int | None = None
    layers: int | None = None
    kv_width: int | None = None
    hidden: int | None = None
    intermediate: int = 0
    parameters: int | None = None
    weight_bytes: int = 0


def safetensors_parameters(path: Path) -> int | None:
    """Elements of every tensor in a ``.safetensors`` file, from its header alone (the
    format: 8 bytes, little-endian u64 n, then an n-byte JSON header of ``{name: {dtype,
    shape, data_offsets}}``); None if the file is not one."""
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= min(path.stat().st_size - 8, 2**27):
                return None
            header = json.loads(f.read(size))
        return sum(
            math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__"
        )
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def model_shape(model: str | None) -> ModelShape:
    """The vocabulary, depth and KV width from ``model/config.json`` (a local directory;
    text sub-configs of multimodal models are read too) and the size of its weight files."""
    if not model:
        return ModelShape()
    directory = Path(model)
    try:
        if not directory.is_dir():
            return ModelShape()
        weights = sum(
            f.stat().st_size
            for f in directory.iterdir()
            if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)
        )
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ModelShape()
    if not isinstance(config, dict):
        return ModelShape(weight_bytes=weights)
    text = config.get("text_config")
    merged: dict[str, Any] = {**config, **(text if isinstance(text, dict) else {})}

    def number(*keys: str) -> int | None:
        for key in keys:
            value = merged.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    hidden, heads = number("hidden_size", "n_embd", "d_model"), number("num_attention_heads")
    head_dim = number("head_dim") or (hidden // heads if hidden and heads else None)
    kv_heads = number("num_key_value_heads") or heads
    counts = [safetensors_parameters(f) for f in sorted(directory.glob("*.safetensors"))]
    if counts and None not in counts:
        parameters: int | None = sum(c for c in counts if c is not None)
    else:
        dtype = merged.get("dtype") or merged.get("torch_dtype") or "float32"
        size = DTYPE_BYTES.get(dtype) if isinstance(dtype, str) else None
        parameters = weights // size if weights and size else None
    return ModelShape(
        vocab=number("vocab_size"),
        layers=number("num_hidden_layers", "n_layer", "num_layers"),
        kv_width=kv_heads * head_dim if kv_heads and head_dim else None,
        hidden=hidden,
        intermediate=number("intermediate_size", "n_inner", "ffn_dim") or 0,
        parameters=parameters,
        weight_bytes=weights,
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """A lower bound of the memory a run needs: ``terms`` (name -> bytes) and the field
    to change (``field``, with ``hint`` saying how)."""

    field: Loc
    terms: dict[str, int] = field(default_factory=dict)
    inputs: str = ""
    """The sizes the terms were computed from, e.g. ``B=8, T=320``."""
    hint: str = ""

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    def describe(self) -> str:
        return " + ".join(f"{name} {_size(b)}" for name, b in self.terms.items() if b)


def _sequence_terms(
    rows: int,
    length: int,
    shape: ModelShape,
    dtype: str,
    *,
    sequences: int,
    logits: bool,
    chunk: int | None = None,
) -> dict[str, int]:
    terms = {f"token ids ({sequences}·B·T·8)": sequences * rows * length * 8}
    if logits and shape.vocab and chunk is not None:
        terms[f"logits (B·c·V·4, c={chunk}, V={shape.vocab})"] = rows * chunk * shape.vocab * 4
    elif logits and shape.vocab:
        terms[f"logits (B·T·V·4, V={shape.vocab})"] = rows * length * shape.vocab * 4
    if logits and shape.layers and shape.kv_width:
        terms["KV cache (2·L·B·T·H_kv·s)"] = (
            2 * shape.layers * rows * length * shape.kv_width * DTYPE_BYTES.get(dtype, 4)
        )
    if shape.weight_bytes:
        terms["weights"] = shape.weight_bytes
    return terms


def _policy_training_terms(
    spec: RunSpec, rows: int, length: int, shape: ModelShape
) -> dict[str, int]:
    """``task: nash``: the trained policy's parameters, gradients, Adam moments and kept
    activations (module docstring); the weight files' size when N is unknown."""
    assert spec.policy is not None
    tr = spec.training
    s = DTYPE_BYTES.get(spec.policy.dtype, 4)
    terms: dict[str, int] = {}
    n = shape.parameters
    if n is None:
        if shape.weight_bytes:
            terms["weights"] = shape.weight_bytes
    else:
        terms["parameters (N·s)"] = n * s
        if spec.policy.lora is None and spec.distributed.engine == "none":
            terms["gradients (N·s)"] = n * s
            if tr.optimizer.name in ("adam", "adamw"):
                terms["Adam moments (2·N·s)"] = 2 * n * s
    if shape.layers and shape.hidden:
        a = 2 if tr.precision == "bf16-mixed" else s
        h, layers, inter = shape.hidden, shape.layers, shape.intermediate
        if tr.gradient_checkpointing:
            terms["activations, checkpointed (B·T·(L·h + 3h + I)·a)"] = (
                rows * length * (layers * h + 3 * h + inter) * a
            )
        else:
            terms["activations (L·B·T·(3h + I)·a)"] = layers * rows * length * (3 * h + inter) * a
    return terms


def _largest_ratio(candidates: Sequence[tuple[Loc, int, int]]) -> Loc:
    """The field whose value is furthest above its default (``(field, value, default)``)."""
    return max(candidates, key=lambda c: c[1] / c[2])[0]


def estimate_memory(spec: RunSpec) -> list[MemoryEstimate]:
    """Lower bounds of the memory ``spec`` needs, one per part that allocates by the
    spec's sizes (module docstring); empty when nothing is known."""
    estimates: list[MemoryEstimate] = []
    pref = spec.preference
    if isinstance(pref, TabularPreference):
        n = pref.num_responses()
        where: Loc = ("preference", "size") if pref.game == "random" else ("preference",)
        if pref.matrix is not None:
            where = ("preference", "matrix")
        estimates.append(
            MemoryEstimate(
                where,
                {f"{TABULAR_MATRICES} n×n float64 matrices": TABULAR_MATRICES * n * n * 8},
                f"n={n}",
                "use fewer responses",
            )
        )
        return estimates
    tr = spec.training
    rows = max(1, -(-tr.batch_size // tr.grad_accum))
    data = spec.data
    prompt_len = data.max_prompt_length if data is not None else 256
    if spec.task == "nash" and spec.policy is not None:
        new = tr.generation.max_new_tokens
        shape = model_shape(spec.policy.model)
        chunk = None
        if shape.vocab and spec.distributed.engine != "deepspeed":  # DeepSpeed: full logits
            chunk = tr.logprob_chunk_size(rows, new, shape.vocab)
        length = prompt_len + new
        terms = _sequence_terms(
            rows, length, shape, spec.policy.dtype, sequences=2, logits=True, chunk=chunk
        )
        terms.pop("weights", None)  # the parameters count the policy's weights
        blame = _largest_ratio(
            [
                (("training", "batch_size"), rows, 8),
                (("training", "generation", "max_new_tokens"), new, 64),
                (("data", "max_prompt_length"), prompt_len, 256),
            ]
        )
        estimates.append(
            MemoryEstimate(
                blame,
                terms | _policy_training_terms(spec, rows, length, shape),
                f"B={rows}, T={prompt_len}+{new}",
                "lower training.batch_size (or raise training.grad_accum), "
                "training.generation.max_new_tokens or data.max_prompt_length (or set "
                "training.gradient_checkpointing, precision: bf16-mixed or logprob_chunk, "
                "which shrink the activations and logits)",
            )
        )
    pairs_task = spec.task in ("preference_model", "offline")  # both score 2 rows per pair
    if pairs_task and spec.policy is not None and data is not None:
        lm_head = spec.preference_training is None or spec.preference_training.head == "lm"
        shape = model_shape(spec.policy.model)
        chunk = None  # task: offline scores the pairs in chunks under training.logprob_chunk
        if spec.task == "offline" and shape.vocab:
            chunk = tr.logprob_chunk_size(rows, data.max_length, shape.vocab)
        blame = _largest_ratio(
            [(("training", "batch_size"), rows, 8), (("data", "max_length"), data.max_length, 512)]
        )
        estimates.append(
            MemoryEstimate(
                blame,
                _sequence_terms(
                    rows,
                    data.max_length,
                    shape,
                    spec.policy.dtype,
                    sequences=2,
                    logits=lm_head,
                    chunk=chunk,
                ),
                f"B={rows}, T={data.max_length}",
                "lower training.batch_size (or raise training.grad_accum) or data.max_length",
            )
        )
    if isinstance(pref, LLMJudgePreference | PairwiseModelPreference | BradleyTerryPreference):
        model = pref.model if isinstance(pref, LLMJudgePreference) else pref.path
        blame = _largest_ratio(
            [
                (("preference", "batch_size"), pref.batch_size, 16),
                (("preference", "max_length"), pref.max_length, 1024),
            ]
        )
        estimates.append(
            MemoryEstimate(
                blame,
                _sequence_terms(
                    pref.batch_size,
                    pref.max_length,
                    model_shape(model),
                    pref.dtype,
                    sequences=2,
                    logits=isinstance(pref, LLMJudgePreference),
                ),
                f"B={pref.batch_size}, T={pref.max_length}",
                "lower preference.batch_size or preference.max_length",
            )
        )
    return estimates


def memory_problems(spec: RunSpec, available: int | None = None) -> list[tuple[Loc, str]]:
    """``(field, message)`` for every estimate above ``available`` (default: this machine's
    :func:`available_memory`)."""
    available = available_memory() if available is None else available
    if available is None:
        return []
    problems: list[tuple[Loc, str]] = []
    for estimate in estimate_memory(spec):
        if estimate.total > available:
            problems.append(
                (
                    estimate.field,
                    f"needs at least {_size(estimate.total)} of memory ({estimate.describe()}; "
                    f"{estimate.inputs}), but {_size(available)} is available; {estimate.hint}",
                )
            )
    return problems


# ------------------------------------------------------------------------------ entry
def preflight_problems(
    spec: RunSpec, available: int | None = None, *, outputs: bool = True
) -> list[tuple[Loc, str]]:
    """Every problem of ``spec`` on this installation and machine: an oracle that no
    installed plugin registers (or options it does not take), an encoder model where a
    causal LM is needed or a packaged model whose package is not installed
    (:func:`nlhf.packaged.model_problems`), the output directory
    (unless ``outputs`` is false: ``nlhf solve`` writes none), and memory."""
    problems: list[tuple[Loc, str]] = []
    if isinstance(spec.preference, OraclePreference):
        from nlhf.spec.load import oracle_problems

        problems += oracle_problems(spec.preference.function, spec.preference.options)
    from nlhf.packaged import model_problems

    problems += model_problems(spec)  # an encoder as a causal LM; a packaged model missing
    from nlhf.tracking import tracking_problems

    problems += tracking_problems(spec)  # output.report_to: each library installed
    from nlhf.preference.remote import secret_problems

    problems += secret_problems(spec)  # a token / API key variable that is not set
    output = check_output_dir(spec.output.dir) if outputs else None
    if output is not None:
        problems.append((("output", "dir"), output))
    problems += memory_problems(spec, available)
    return problems


def check_preflight(
    spec: RunSpec,
    source: str | Path,
    overrides: Sequence[str] = (),
    *,
    output: str | Path | None = None,
    outputs: bool = True,
) -> None:
    """The CLI's pre-flight check of ``spec`` (loaded from ``source`` with ``overrides``;
    ``output`` is a ``--output`` that replaced ``output.dir``): one located
    :class:`~nlhf.errors.SpecError` with every problem, before any model loads
    (``outputs=False``: the output directory is not checked)."""
    problems = preflight_problems(spec, outputs=outputs)
    if not problems:
        return
    from nlhf.spec.load import apply_overrides, format_problems, parse_yaml

    lines: list[str] = []
    in_spec = []
    for path, message in problems:
        if output is not None and path == ("output", "dir"):
            lines.append(f"--output {output}: {message}")
        else:
            in_spec.append((path, message))
    text = Path(source).read_text(encoding="utf-8")
    located = parse_yaml(text, str(source))
    applied = apply_overrides(located.data, overrides)
    raise SpecError(format_problems(in_spec, located, applied) + lines)
