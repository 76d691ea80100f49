"""Run outputs are never half-written: atomic checkpoint directories, listing, pruning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nlhf.runio import (
    atomic_directory,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
)


def _write(directory: Path, text: str) -> None:
    (directory / "model.safetensors").write_text(text)


def test_failed_write_leaves_the_old_checkpoint_and_no_temp_dir(tmp_path: Path) -> None:
    final = checkpoint_dir(tmp_path, 3)
    with atomic_directory(final) as tmp:
        _write(tmp, "old")
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        _write(tmp, "half")
        raise RuntimeError("killed mid-save")
    assert (final / "model.safetensors").read_text() == "old"
    assert sorted(p.name for p in final.parent.iterdir()) == ["step-3"]


def test_successful_write_replaces_and_is_listed(tmp_path: Path) -> None:
    for step in (10, 2, 7):
        with atomic_directory(checkpoint_dir(tmp_path, step)) as tmp:
            _write(tmp, str(step))
    with atomic_directory(checkpoint_dir(tmp_path, 7)) as tmp:
        _write(tmp, "seven")
    (tmp_path / "checkpoints" / ".step-11.tmp-abc").mkdir()  # a crashed save: not listed
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 7, 10]
    assert (checkpoint_dir(tmp_path, 7) / "model.safetensors").read_text() == "seven"
    assert latest_checkpoint(tmp_path) == (10, checkpoint_dir(tmp_path, 10))
    prune_checkpoints(tmp_path, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [7, 10]


def test_checkpoint_directory_gets_the_umask_mode_not_mkdtemp_0700(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "out") as tmp:
            _write(tmp, "x")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
