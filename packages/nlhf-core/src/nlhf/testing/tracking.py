"""Read back what :mod:`nlhf.tracking` wrote, with each library's own reader: TensorBoard's
``EventAccumulator``, MLflow's ``MlflowClient`` on the file store, and W&B's record protos
(``wandb.proto.wandb_internal_pb2.Record``) from an offline run's ``.wandb`` file.

The ``.wandb`` file is W&B's transaction log: a 7-byte header (``:W&B``, magic 0xBEE1,
version 0) and then the LevelDB log format (32 KiB blocks; each chunk a 7-byte header of
CRC-32C, length and type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4; a block's tail shorter
than a header is padding), each record one serialized ``Record``
(wandb/sdk/internal/datastore.py in wandb < 0.20 is the reference reader; wandb 0.31
ships no Python reader, so the framing is read here and the records by W&B's protos).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WANDB_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_BLOCK = 32768
_CHUNK = struct.Struct("<IHB")


@dataclass
class WandbOfflineRun:
    """The records of one offline W&B run: ``history`` (one dict per ``run.log`` with its
    ``_step``), ``config`` and ``summary`` (the last value of each key), ``exit_code``."""

    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    kinds: dict[str, int] = field(default_factory=dict)


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_wandb_offline(run_dir: Path) -> WandbOfflineRun:
    """Parse the one ``offline-run-*/run-*.wandb`` below ``run_dir`` (a ``wandb/`` folder
    or a run directory holding one)."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).rglob("offline-run-*/run-*.wandb"))
    if len(files) != 1:
        raise AssertionError(f"expected one offline W&B run under {run_dir}, found {files}")
    data = files[0].read_bytes()
    if not data.startswith(WANDB_HEADER):
        raise AssertionError(f"{files[0]}: not a W&B transaction log (header {data[:7]!r})")
    out = WandbOfflineRun()
    pos, pending = len(WANDB_HEADER), b""
    while pos + _CHUNK.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:
            pos += left
            continue
        _, length, kind = _CHUNK.unpack_from(data, pos)
        pos += _CHUNK.size
        if kind == 0 and length == 0:  # zero padding at the end of a block
            continue
        pending += data[pos : pos + length]
        pos += length
        if kind not in (1, 4):  # FIRST / MIDDLE: the record continues
            continue
        record = pb.Record()
        record.ParseFromString(pending)
        pending = b""
        which = record.WhichOneof("record_type")
        out.kinds[which] = out.kinds.get(which, 0) + 1
        if which == "history":
            out.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif which == "config":
            out.config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif which == "summary":
            out.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif which == "exit":
            out.exit_code = record.exit.exit_code
    return out


def read_tensorboard(directory: Path) -> Any:
    """A loaded ``EventAccumulator`` of the event files in ``directory`` (every event kept:
    ``size_guidance`` 0 = all)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(directory),
        size_guidance={"scalars": 0, "images": 0, "tensors": 0},
    )
    acc.Reload()
    return acc


def mlflow_runs(store: Path) -> tuple[Any, list[Any]]:
    """``(MlflowClient, runs)`` of every experiment in the file store ``store``."""
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=Path(store).resolve().as_uri())
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, list(client.search_runs(experiments))
