"""``nlhf export SOURCE DEST``: a merged transformers directory of a Nash policy, ready
to publish (docs/publishing.md).

``SOURCE`` is a ``task: nash`` run directory (its newest complete checkpoint, the final
model when the run finished) or one ``checkpoints/step-N/`` directory. ``DEST`` receives
the policy's full weights (a LoRA adapter folded into the base model), its tokenizer with
the chat template and a model card (:mod:`nlhf.modelcard`), written in a temporary
directory and renamed into place (:func:`nlhf.runio.atomic_directory`). Core finds and
checks the source; the weights are written by a backend that implements
:class:`ModelExporter` (the torch backend, with transformers and peft; the checkpoints of
every backend are transformers safetensors or peft adapters, so it exports jax runs too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Protocol, runtime_checkable

import typer

from nlhf.errors import InputError, NLHFError, RunDirError
from nlhf.modelcard import CARD_FILE, last_metrics, read_front_matter, write_model_card
from nlhf.runio import (
    CHECKPOINT_RE,
    MANIFEST,
    atomic_directory,
    checkpoint_problem,
    latest_checkpoint,
)
from nlhf.spec.models import RunSpec
from nlhf.training.state import STATE_FILE

DEFAULT_BACKEND = "torch"


@runtime_checkable
class ModelExporter(Protocol):
    """Optional extra of a backend (:class:`nlhf.algorithms.protocols.Backend`): write the
    merged policy of checkpoint ``model_dir`` into the empty directory ``dest``."""

    def export_model(self, model_dir: Path, dest: Path, spec: RunSpec) -> None:
        """Weights as transformers safetensors (``config.json``, ``model.safetensors``; a
        peft adapter merged into ``spec.policy.model``) and the tokenizer files (with the
        chat template); raise a located :class:`~nlhf.errors.NLHFError` otherwise."""
        ...


@dataclass(frozen=True)
class ExportSource:
    """A checkpoint to export: its directory, step, the spec that wrote it, the backend
    that trained it and the run directory (for its metrics), when there is one."""

    checkpoint: Path
    step: int
    spec: RunSpec
    backend: str | None
    run_dir: Path | None


def _not_a_source(path: Path, why: str) -> InputError:
    return InputError(
        f"SOURCE: {path} {why}; pass a `task: nash` run directory (spec.resolved.yaml and "
        "checkpoints/step-N/) or one of its checkpoints/step-N/ directories"
    )


def find_source(path: Path) -> ExportSource:
    """The checkpoint ``path`` names (a run directory: its newest complete checkpoint),
    checked complete against its manifest; clear errors for anything else."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise _not_a_source(path, "is not a directory" if path.exists() else "does not exist")
    if (path / STATE_FILE).is_file():
        checkpoint, run_dir = path, None
        if path.parent.name == "checkpoints" and (path.parent.parent / "metrics.jsonl").is_file():
            run_dir = path.parent.parent
    elif (path / "checkpoints").is_dir() or (path / "spec.resolved.yaml").is_file():
        found = latest_checkpoint(path)
        if found is None:
            raise _not_a_source(path, "is a run directory without a complete checkpoint")
        checkpoint, run_dir = found[1], path
    else:
        raise _not_a_source(path, f"holds neither {STATE_FILE} nor checkpoints/")
    problem = checkpoint_problem(checkpoint, digests=True)
    if problem is not None:
        raise InputError(f"SOURCE: checkpoint {checkpoint} is incomplete: {problem}")
    state_file = checkpoint / STATE_FILE
    if not state_file.is_file():
        raise _not_a_source(checkpoint, f"has no {STATE_FILE} (not a Nash checkpoint)")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        spec = RunSpec.model_validate(state["spec"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"SOURCE: {state_file}: unreadable trainer state or spec ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0]})"
        ) from None
    if spec.task != "nash" or spec.policy is None or spec.is_tabular:
        raise InputError(
            f"SOURCE: {checkpoint} belongs to a `task: {spec.task}` run; `nlhf export` "
            "writes the policy of a `task: nash` language-model run"
        )
    match = CHECKPOINT_RE.match(checkpoint.name)
    step = int(state.get("step", match.group(1) if match else 0))
    return ExportSource(checkpoint, step, spec, state.get("backend"), run_dir)


def _was_exported(dest: Path) -> bool:
    """Whether ``dest`` was written by ``nlhf export`` (a manifest and an nlhf card)."""
    tags = read_front_matter(dest / CARD_FILE).get("tags") or []
    return (dest / MANIFEST).is_file() and "nlhf" in tags


def check_destination(dest: Path, source: Path, *, overwrite: bool) -> None:
    """Refuse a ``DEST`` that is a file, lies inside the source, or is a non-empty
    directory (``overwrite`` allows one an earlier ``nlhf export`` wrote, nothing else)."""
    dest, source = Path(dest).expanduser(), Path(source).expanduser()
    if dest.exists() and not dest.is_dir():
        raise InputError(f"DEST: {dest} is a file; choose a directory")
    resolved, src = dest.resolve(), source.resolve()
    if resolved == src or src in resolved.parents or resolved in src.parents:
        raise InputError(f"DEST: {dest} overlaps the source {source}; choose another directory")
    if not dest.is_dir() or not any(dest.iterdir()):
        return
    if not overwrite:
        raise RunDirError(
            f"DEST: {dest} is not empty; choose another directory, or replace an earlier "
            "export with --overwrite"
        )
    if not _was_exported(dest):
        raise RunDirError(
            f"DEST: {dest} is not empty and was not written by `nlhf export` (no {MANIFEST} "
            f"and nlhf-tagged {CARD_FILE}); --overwrite replaces only an earlier export: "
            "choose another directory"
        )


def exporter_of(backend: str) -> ModelExporter:
    """The registered backend ``backend``, which must implement :class:`ModelExporter`."""
    from nlhf.plugins import get_backend

    engine = get_backend(backend)
    if not isinstance(engine, ModelExporter):
        raise NLHFError(
            f"--backend: backend {backend!r} cannot export models (no export_model); the "
            f"checkpoints of every backend are transformers safetensors or peft adapters: "
            f"export with --backend {DEFAULT_BACKEND} (pip install 'nlhf-torch[peft]')"
        )
    return engine


def export_model(
    source: Path, dest: Path, *, overwrite: bool = False, backend: str = DEFAULT_BACKEND
) -> ExportSource:
    """Write the merged policy of ``source`` (:func:`find_source`) with its tokenizer and
    model card into ``dest`` (:func:`check_destination`); returns what was exported."""
    found = find_source(source)
    check_destination(dest, found.checkpoint, overwrite=overwrite)
    exporter = exporter_of(backend)
    dest = Path(dest).expanduser()
    with atomic_directory(dest) as tmp:
        exporter.export_model(found.checkpoint, tmp, found.spec)
        if not (tmp / "config.json").is_file():
            raise NLHFError(f"backend {backend!r}: export_model wrote no config.json")
        metrics = last_metrics(found.run_dir, found.step) if found.run_dir else None
        write_model_card(
            tmp, found.spec, step=found.step, metrics=metrics, backend=found.backend, merged=True
        )
        (tmp / "nlhf_export.json").write_text(
            json.dumps({"source": str(found.checkpoint.resolve()), "step": found.step}, indent=1)
            + "\n",
            encoding="utf-8",
        )
    return found


def register(app: typer.Typer) -> None:
    """Add ``export`` to the CLI."""
    from nlhf.cli import _err, _out, report_errors

    @app.command("export")
    @report_errors
    def export(
        source: Annotated[
            Path,
            typer.Argument(
                help="A task: nash run directory (its newest checkpoint) or one "
                "checkpoints/step-N/ directory."
            ),
        ],
        dest: Annotated[Path, typer.Argument(help="The new model directory.")],
        overwrite: Annotated[
            bool,
            typer.Option("--overwrite", help="Replace DEST when an earlier export wrote it."),
        ] = False,
        backend: Annotated[
            str,
            typer.Option("--backend", "-b", help="The backend that merges and writes weights."),
        ] = DEFAULT_BACKEND,
    ) -> None:
        """Write a merged transformers model (LoRA folded in) + tokenizer + model card."""
        found = export_model(source, dest, overwrite=overwrite, backend=backend)
        _err().print(f"nlhf: exported {found.checkpoint} (step {found.step})", markup=False)
        _out().print(f"exported: {dest} ({CARD_FILE}, config.json, weights, tokenizer)")


__all__ = [
    "ExportSource",
    "ModelExporter",
    "check_destination",
    "export_model",
    "exporter_of",
    "find_source",
    "register",
]
