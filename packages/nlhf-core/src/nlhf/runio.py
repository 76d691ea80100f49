"""Run outputs shared by every backend (DESIGN §3): ``spec.resolved.yaml``,
``metrics.jsonl`` (one JSON object per logged step), ``summary.json`` and
atomically written checkpoint directories (temp dir + rename, never half-written)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

CHECKPOINT_RE = re.compile(r"^step-(\d+)$")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy / torch / jax scalars and arrays
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same directory + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def write_resolved_spec(output: Path, spec: Any) -> Path:
    """``spec.resolved.yaml``: the validated spec with every default filled in."""
    data = spec.model_dump(mode="json") if hasattr(spec, "model_dump") else spec
    path = Path(output) / "spec.resolved.yaml"
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


def write_summary(output: Path, summary: dict[str, Any]) -> Path:
    path = Path(output) / "summary.json"
    write_json(path, summary)
    return path


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` and flushes each record, so a
    crashed run keeps every logged step. On resume, records past ``truncate_after`` are
    dropped first (they belong to steps that will be redone)."""

    def __init__(self, output: Path, *, truncate_after: int | None = None) -> None:
        self.path = Path(output) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after is not None and self.path.exists():
            kept = [
                line
                for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= truncate_after
            ]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        elif truncate_after is None:
            self.path.write_text("", encoding="utf-8")
        self._handle = self.path.open("a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(_jsonable(record)) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(output: Path) -> list[dict[str, Any]]:
    path = Path(output) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temp directory beside ``final``; on success rename it to ``final``
    (replacing an older one). On error the temp directory is removed and ``final``
    is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a checkpoint gets the usual mode
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def checkpoint_dir(output: Path, step: int) -> Path:
    return Path(output) / "checkpoints" / f"step-{step}"


def list_checkpoints(output: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``output/checkpoints`` as (step, path), oldest first."""
    root = Path(output) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(output: Path) -> tuple[int, Path] | None:
    found = list_checkpoints(output)
    return found[-1] if found else None


def prune_checkpoints(output: Path, keep_last: int | None) -> None:
    if keep_last is None:
        return
    for _, path in list_checkpoints(output)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
