"""``trainer_state.json``: the part of a Nash checkpoint that core writes and reads.

One schema for every backend (a backend adds only its own blobs beside it: optimizer,
RNG streams, EMA weights, engine shards):

- ``step``: optimiser steps done; ``position``: prompts consumed (step × batch_size; the
  prompt order is a pure function of (seed, position), :func:`nlhf.data.prompts.batch_indices`);
- ``elapsed``: training seconds so far; ``generated_tokens``: tokens sampled so far;
- ``algorithm``, ``backend``, ``distributed`` (the stepper's layout, or None);
- ``spec``: the resolved spec, whose resume-relevant fields (:func:`nlhf.runio.resume_fields`)
  ``--resume`` compares with the spec it is given (docs/resume.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nlhf.errors import InputError
from nlhf.runio import atomic_write_text, resume_checkpoint
from nlhf.spec.models import RunSpec

STATE_FILE = "trainer_state.json"
SCHEMA_VERSION = 1


@dataclass
class TrainerState:
    step: int
    position: int
    elapsed: float
    generated_tokens: int
    algorithm: str
    backend: str
    distributed: dict[str, Any] | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    def write(self, directory: Path) -> Path:
        path = Path(directory) / STATE_FILE
        atomic_write_text(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, checkpoint: Path) -> TrainerState:
        """The state of checkpoint directory ``checkpoint``; a clear error when it is
        missing or unreadable (the checkpoint was not written by an nlhf Nash run)."""
        path = Path(checkpoint) / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(
                f"--resume: checkpoint {checkpoint} has no {STATE_FILE}; it was not written "
                "by an nlhf Nash run of this version (start a new run from its weights with "
                "policy.model instead)"
            ) from None
        except (OSError, ValueError) as exc:
            raise InputError(
                f"--resume: {path} is unreadable ({exc}); delete the checkpoint to resume "
                "from an earlier one"
            ) from None
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        try:
            return cls(**known)
        except TypeError as exc:
            raise InputError(f"--resume: {path} misses fields ({exc})") from None


def resume_point(spec: RunSpec, output: Path) -> tuple[int, Path]:
    """The checkpoint a ``--resume`` of ``spec`` continues, as (step, path): the latest
    complete one under ``output``, after :func:`nlhf.runio.resume_checkpoint` checked that
    the spec differs from the checkpoint's only in fields that may change on resume and
    that the checkpoint is not past ``training.steps``; a clear error when there is none."""
    found = resume_checkpoint(spec, output)
    if found is None:
        raise InputError(
            f"--resume: no checkpoint under {Path(output) / 'checkpoints'}; start afresh with "
            "--overwrite (and set output.checkpoint_every to save checkpoints)"
        )
    return found
