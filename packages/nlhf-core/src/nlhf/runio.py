"""The run directory, shared by every task and backend (docs/resume.md).

A run writes ``spec.resolved.yaml``, ``metrics.jsonl`` (one JSON object per logged step),
``summary.json`` and checkpoint directories ``checkpoints/step-N/``. This module owns:

- **ownership**: :func:`claim_output_dir` (called once by ``nlhf run``) refuses a
  directory that holds another run's outputs unless the run resumes it or overwrites it,
  and holds a lock on it for the run;
- **durable writes**: every file is written through a temporary name, fsynced and renamed
  (:func:`atomic_write_text`); a checkpoint directory is filled in a temporary directory,
  closed by a manifest of its files (``.complete.json``), fsynced and renamed
  (:func:`atomic_directory`); every output gets the mode the umask gives;
- **resume checks**: the resume-relevant part of the spec (:func:`resume_fields`) is
  recorded in each checkpoint (:func:`write_checkpoint_meta`) and compared before a resume
  touches anything (:func:`check_resume`, :func:`resume_checkpoint`); a truncated or
  corrupt newest checkpoint is skipped with a warning (:func:`latest_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from nlhf import tracking
from nlhf.errors import InputError, RunDirError

if TYPE_CHECKING:
    from nlhf.spec.models import RunSpec

CHECKPOINT_RE = re.compile(r"^step-(\d+)$")
MANIFEST = ".complete.json"
"""Last file written into a checkpoint directory: ``{"files": {path: {size, sha256}}}``."""
CHECKPOINT_META = "resume.json"
"""In each checkpoint: its step and the resume record of the spec that wrote it."""
RUN_OUTPUTS = (
    "spec.resolved.yaml",
    "metrics.jsonl",
    "summary.json",
    "checkpoints",
    "model",
    "baseline",
    "reference_logprobs.json",
    "winrate.csv",
    "winrate.json",
    "responses",
    "comparisons",
    "plots",
    "report.html",
    "tensorboard",
    "wandb",
    "mlruns",
)
"""What nlhf writes into a run directory; ``--overwrite`` removes these and nothing else."""
MUTABLE_ON_RESUME = (
    "training.steps",
    "training.log_every",
    "training.eval_every",
    "algorithm.steps",
    "algorithm.log_every",
    "output.dir",
    "output.checkpoint_every",
    "output.keep_last",
    "output.plots",
    "output.report_to",
)
"""Spec fields a resume may change: the run length (a checkpoint past it is refused) and
the logging, evaluation and checkpoint cadence. Every other field is compared."""

_TEMP_DIR_RE = re.compile(r"^\.(?P<name>.+)\.tmp-[A-Za-z0-9_]+$")
_OLD_DIR_RE = re.compile(r"^\.(?P<name>.+)\.old$")
_TEMP_FILE_RE = re.compile(r"^\..+\.tmp$")
_ABSENT = object()


# ------------------------------------------------------------------------- file modes
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0o666 & ~umask)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode ``mkdir`` gives a new directory under the current umask (0o777 & ~umask)."""
    return 0o777 & ~_umask()


def _fsync(path: Path) -> None:
    """fsync a file or a directory (directories: where the platform allows)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) * path.is_dir()
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. a directory on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every directory, deepest first."""
    for parent, _, files in os.walk(root, topdown=False):
        for name in files:
            path = Path(parent) / name
            if not path.is_symlink():
                _fsync(path)
        _fsync(Path(parent))


# ------------------------------------------------------------------------ small files
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
    """Write ``text`` to ``path`` through a temp file in the same directory: fsync,
    ``os.replace``, fsync of the directory. The file gets the umask's mode (``mkstemp``
    alone would make it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)


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
    tracking.report_summary(Path(output), summary)  # output.report_to, when open
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
        tracking.report_metrics(self.path.parent, record)  # output.report_to, when open

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
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


# ------------------------------------------------------------ checkpoint directories
def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(directory: Path) -> Path:
    """``directory/.complete.json``: size and sha256 of every file under ``directory``
    (paths relative to it, ``/``-separated); written last, it marks the directory
    complete."""
    directory = Path(directory)
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != MANIFEST:
            rel = path.relative_to(directory).as_posix()
            files[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    manifest = directory / MANIFEST
    manifest.write_text(json.dumps({"format": 1, "files": files}, indent=1) + "\n")
    return manifest


_verified: dict[tuple[str, int, int], str | None] = {}


def checkpoint_problem(path: Path, *, digests: bool = False) -> str | None:
    """Why the checkpoint directory ``path`` is not complete (None when it is): a file of
    its manifest missing or of another size, or (``digests``) of another sha256.

    A directory without a manifest was written by an nlhf that wrote none; it was renamed
    into place only once complete, so it is trusted (docs/resume.md)."""
    path = Path(path)
    manifest = path / MANIFEST
    try:
        stat = manifest.stat()
    except FileNotFoundError:
        return None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if digests and key in _verified:
        return _verified[key]
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        expected = {str(rel): (int(e["size"]), str(e["sha256"])) for rel, e in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"its manifest {MANIFEST} is unreadable ({type(exc).__name__}: {exc})"
    problem = None
    for rel, (want_size, want_sha) in expected.items():
        file = path / rel
        if not file.is_file():
            problem = f"{rel} is missing"
        elif (size := file.stat().st_size) != want_size:
            problem = f"{rel} has {size} bytes, {want_size} were written (truncated?)"
        elif digests and _sha256(file) != want_sha:
            problem = f"{rel} differs from what was written (sha256 mismatch: corrupt)"
        if problem:
            break
    if digests:
        _verified[key] = problem
    return problem


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temp directory beside ``final``; on success close it with a manifest
    (:func:`write_manifest`), fsync every file and directory in it and rename it to
    ``final`` (replacing an older one). On error the temp directory is removed and
    ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    tmp.chmod(dir_mode())  # mkdtemp makes 0700; a checkpoint gets the usual mode
    try:
        yield tmp
        write_manifest(tmp)
        _fsync_tree(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def checkpoint_dir(output: Path, step: int) -> Path:
    return Path(output) / "checkpoints" / f"step-{step}"


def _step_dirs(output: Path) -> list[tuple[int, Path]]:
    root = Path(output) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def list_checkpoints(output: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``output/checkpoints`` as (step, path), oldest first: every
    file of the manifest present with its size (:func:`checkpoint_problem`)."""
    return [(s, p) for s, p in _step_dirs(output) if checkpoint_problem(p) is None]


_warned: set[str] = set()


def _warn(message: str) -> None:
    """``warning: …`` on stderr, once per message per process."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


def latest_checkpoint(output: Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint as (step, path), its files' sizes and sha256 checked
    against its manifest; a newer incomplete or corrupt one is skipped with a warning."""
    skipped: list[str] = []
    for step, path in reversed(_step_dirs(output)):
        problem = checkpoint_problem(path, digests=True)
        if problem is None:
            for message in skipped:
                _warn(f"{message}; using {path.name}")
            return step, path
        skipped.append(f"checkpoint {path} is incomplete: {problem}")
    for message in skipped:
        _warn(f"{message}; no complete checkpoint is left")
    return None


def prune_checkpoints(output: Path, keep_last: int | None) -> None:
    if keep_last is None:
        return
    for _, path in list_checkpoints(output)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


# -------------------------------------------------------------------- resume records
def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return _ABSENT
        data = data[part]
    return data


def resume_fields(spec: RunSpec | Mapping[str, Any]) -> dict[str, Any]:
    """The resume-relevant part of a resolved spec (a :class:`RunSpec` or its JSON dump,
    e.g. a loaded ``spec.resolved.yaml``): every field but :data:`MUTABLE_ON_RESUME`.

    ``task: evaluate`` keeps only ``task``: its caches (``responses/``, ``comparisons/``)
    are keyed by their content, so any other change is safe to resume."""
    data = spec.model_dump(mode="json") if hasattr(spec, "model_dump") else dict(spec)
    data = json.loads(json.dumps(_jsonable(data)))  # a deep, JSON-typed copy
    if data.get("task") == "evaluate":
        return {"task": "evaluate"}
    for dotted in MUTABLE_ON_RESUME:
        *parents, leaf = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return data


def resume_hash(fields: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of ``fields`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def resume_record(spec: RunSpec) -> dict[str, Any]:
    """``{"hash": resume_hash(fields), "fields": resume_fields(spec)}``: what a
    checkpoint records of its spec (:func:`write_checkpoint_meta`)."""
    fields = resume_fields(spec)
    return {"hash": resume_hash(fields), "fields": fields}


def write_checkpoint_meta(directory: Path, spec: RunSpec, step: int) -> Path:
    """``directory/resume.json``: the step and :func:`resume_record` of ``spec``. Every
    checkpoint writer calls it inside :func:`atomic_directory`, so that
    :func:`resume_checkpoint` can compare a resumed spec with the checkpoint's."""
    from nlhf import __version__

    path = Path(directory) / CHECKPOINT_META
    data = {"step": int(step), "nlhf": __version__, "resume": resume_record(spec)}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"--resume: {file} is unreadable ({exc})") from None


def read_checkpoint_record(path: Path) -> dict[str, Any] | None:
    """The resume record of checkpoint ``path`` (``{"fields": …}``, with ``"hash"`` when
    recorded), from its ``resume.json`` (:func:`write_checkpoint_meta`) or the ``spec`` of
    its ``trainer_state.json`` (the Nash loop's); None when it has neither."""
    path = Path(path)
    if (path / CHECKPOINT_META).is_file():
        data = _read_json(path / CHECKPOINT_META)
        record = data.get("resume") if isinstance(data, Mapping) else None
        if isinstance(record, Mapping) and isinstance(record.get("fields"), Mapping):
            return dict(record)
    if (path / "trainer_state.json").is_file():
        data = _read_json(path / "trainer_state.json")
        fields = data.get("spec") if isinstance(data, Mapping) else None
        if isinstance(fields, Mapping) and fields:
            return {"fields": resume_fields(fields)}
    return None


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value, ensure_ascii=False)


def check_resume(
    spec: RunSpec, recorded: Mapping[str, Any], step: int | None, *, where: str = "the run"
) -> None:
    """Refuse to resume ``where`` (a checkpoint at ``step``, recorded with
    ``recorded = resume_record(old spec)``) with ``spec`` when a field outside
    :data:`MUTABLE_ON_RESUME` differs (each named, old → new), or when ``step`` is past
    ``training.steps``. Fields the record lacks (added by a newer nlhf) are not compared.
    Raises :class:`~nlhf.errors.RunDirError`."""
    new = resume_fields(spec)
    old = recorded.get("fields", {})
    if old.get("task", spec.task) != spec.task:
        raise RunDirError(
            f"output.dir: {where} belongs to a `task: {old['task']}` run and this spec is "
            f"`task: {spec.task}`; write it to another output directory"
        )
    problems: dict[str, str] = {}
    if recorded.get("hash") != resume_hash(new):
        for dotted, before in sorted(_flatten(old).items()):
            after = _lookup(new, dotted)
            if after is _ABSENT:  # report at the deepest path the new spec has, e.g. `policy`
                parts = dotted.split(".")
                for cut in range(len(parts) - 1, 0, -1):
                    head = ".".join(parts[:cut])
                    if (value := _lookup(new, head)) is not _ABSENT:
                        dotted, before, after = head, _lookup(old, head), value
                        break
            if before != after:
                problems[dotted] = f"  {dotted}: {_show(before)} → {_show(after)}"
    if problems:
        raise RunDirError(
            f"--resume: the spec differs from {where} in "
            f"{len(problems)} field{'s' * (len(problems) != 1)} that cannot change on resume:\n"
            + "\n".join(problems.values())
            + f"\nonly {', '.join(MUTABLE_ON_RESUME)} may change (docs/resume.md); put the "
            "field back, or start a new run with --overwrite or another --output"
        )
    total = spec.training.steps
    if step is not None and spec.task != "evaluate" and not spec.is_tabular and step > total:
        raise RunDirError(
            f"--resume: {where} is at step {step}, past training.steps = {total}; set "
            f"training.steps >= {step} to continue it (--set training.steps={step} keeps it "
            "as it is), or start a new run with --overwrite or another --output"
        )


def _recorded_spec(output: Path) -> dict[str, Any] | None:
    path = Path(output) / "spec.resolved.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RunDirError(f"--resume: {path} is unreadable ({exc})") from None
    return data if isinstance(data, dict) else None


def resume_checkpoint(spec: RunSpec, output: Path) -> tuple[int, Path] | None:
    """The checkpoint a resume of ``spec`` in ``output`` continues, as (step, path), or None
    when there is none (:func:`latest_checkpoint`); checked first (:func:`check_resume`)
    against the checkpoint's record (:func:`read_checkpoint_record`), or, for a checkpoint
    without one (or no checkpoint), against the run's ``spec.resolved.yaml``. Reads only:
    call it before anything is written."""
    output = Path(output)
    found = latest_checkpoint(output)
    record = read_checkpoint_record(found[1]) if found is not None else None
    if record is None:  # an older checkpoint, or none: the run's spec.resolved.yaml
        data = _recorded_spec(output)
        record = {"fields": resume_fields(data) if data is not None else {}}
    step, where = (found[0], f"checkpoint {found[1]}") if found else (None, f"the run in {output}")
    check_resume(spec, record, step, where=where)
    return found


# -------------------------------------------------------------- output directory claim
def existing_outputs(output: Path) -> list[str]:
    """The run outputs (:data:`RUN_OUTPUTS`) in ``output``, checkpoints one by one
    (``checkpoints/step-N``); a ``checkpoints/`` with none is not listed."""
    output = Path(output)
    if not output.is_dir():
        return []
    found = []
    for name in RUN_OUTPUTS:
        path = output / name
        if name == "checkpoints":
            found += [f"checkpoints/{p.name}" for _, p in _step_dirs(output)]
        elif path.exists() or path.is_symlink():
            found.append(f"{name}/" if path.is_dir() else name)
    return found


_TEMP_PARENTS = ("", "checkpoints", "baseline", "baseline/checkpoints", "responses", "comparisons")
"""Where nlhf writes through temporary names (relative to the run directory)."""


def remove_temporaries(output: Path) -> list[Path]:
    """Remove what a killed run left in ``output``: ``.NAME.tmp-*`` directories (a
    checkpoint being written), ``.NAME.*.tmp`` files (a file being written) and
    ``.NAME.old`` directories (a checkpoint being replaced; moved back to ``NAME`` when the
    kill came between the two renames). Looks only where nlhf writes. Returns the removed
    paths."""
    removed = []
    for sub in _TEMP_PARENTS:
        parent = Path(output) / sub
        if not parent.is_dir():
            continue
        for child in sorted(parent.iterdir()):
            if child.is_dir() and _TEMP_DIR_RE.match(child.name):
                shutil.rmtree(child)
            elif child.is_dir() and (old := _OLD_DIR_RE.match(child.name)):
                final = parent / old.group("name")
                if not final.exists():  # killed between the two renames: put it back
                    os.replace(child, final)
                    continue
                shutil.rmtree(child)
            elif child.is_file() and _TEMP_FILE_RE.match(child.name):
                child.unlink()
            else:
                continue
            removed.append(child)
    return removed


def remove_outputs(output: Path) -> list[str]:
    """Delete every run output (:data:`RUN_OUTPUTS`) in ``output``; returns their names.
    Other files are left alone."""
    output = Path(output)
    removed = []
    for name in RUN_OUTPUTS:
        path = output / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            removed.append(name)
        elif path.exists() or path.is_symlink():
            path.unlink()
            removed.append(name)
    return removed


def _summarise(names: list[str], limit: int = 8) -> str:
    checkpoints = [n for n in names if n.startswith("checkpoints/")]
    others = [n for n in names if not n.startswith("checkpoints/")]
    if len(checkpoints) > 3:
        checkpoints = [checkpoints[0], "…", checkpoints[-1] + f" ({len(checkpoints)} in all)"]
    shown = others + checkpoints
    return ", ".join(shown[:limit] + (["…"] if len(shown) > limit else []))


@contextmanager
def _locked(output: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the directory ``output`` itself (no lock file is left
    behind; the kernel drops the lock when the process ends). A no-op without ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock
        yield
        return
    fd = os.open(output, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(
                f"output.dir: {output} is in use by another nlhf run; wait for it to finish "
                "or choose another --output"
            ) from None
        yield
    finally:
        os.close(fd)


@contextmanager
def claim_output_dir(
    spec: RunSpec, output: Path, *, resume: bool = False, overwrite: bool = False
) -> Iterator[Path]:
    """Make ``output`` this run's directory for the duration of the ``with`` block
    (``nlhf run`` calls it once, before training or a distributed launch).

    - It holds another run's outputs (:func:`existing_outputs`) and neither ``resume`` nor
      ``overwrite``: :class:`~nlhf.errors.RunDirError` naming them, nothing touched.
    - ``resume``: :func:`resume_checkpoint` checks the spec against the run first.
    - ``overwrite``: the old outputs (checkpoints included) are deleted first, so none can
      be resumed by mistake.

    Then leftovers of a killed run are removed (:func:`remove_temporaries`), and an
    exclusive lock keeps a second ``nlhf run`` out until the block ends."""
    output = Path(output)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: choose one")
    if output.exists() and not output.is_dir():
        raise InputError(f"output.dir: {output} is a file, not a directory; choose a directory")
    found = existing_outputs(output)
    if found and not (resume or overwrite):
        raise RunDirError(
            f"output.dir: {output} holds the outputs of another run ({_summarise(found)}); "
            "continue that run with --resume, delete them and start over with --overwrite, "
            "or choose another --output / output.dir"
        )
    if resume:
        resume_checkpoint(spec, output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"output.dir: cannot create {output}: {exc.strerror or exc}") from None
    with _locked(output):
        if overwrite:
            remove_outputs(output)
        remove_temporaries(output)
        yield output
