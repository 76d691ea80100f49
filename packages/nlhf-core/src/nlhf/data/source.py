"""Open the ``data:`` source of a spec with 🤗 ``datasets`` and check its columns.

Local ``.json``/``.jsonl``/``.json.gz``/``.jsonl.gz``/``.parquet``/``.csv`` files (or a
directory of them) load through the matching ``datasets`` builder; any other string
is treated as a hub dataset name (needs network).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlhf.errors import InputError

if TYPE_CHECKING:
    from nlhf.spec.models import DataSpec

_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}


def builder_for(path: Path) -> str | None:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return _BUILDERS.get(suffixes[-1]) if suffixes else None


def load_rows(spec: DataSpec, *, split: str | None = None) -> Any:
    """Return the ``datasets.Dataset`` for ``spec`` (a :class:`nlhf.spec.DataSpec`),
    with the column mapping applied, ``limit`` applied, and at least one row."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets ships with every backend
        raise InputError("loading data needs the `datasets` package: pip install datasets") from exc

    datasets.disable_progress_bars()
    split = split or spec.split
    path = Path(spec.path).expanduser()
    if path.exists():
        files = sorted(p for p in path.iterdir() if builder_for(p)) if path.is_dir() else [path]
        if not files:
            raise InputError(f"data.path: {path} holds no .json/.jsonl/.parquet/.csv file")
        builders = {builder_for(f) for f in files}
        if None in builders or len(builders) != 1:
            raise InputError(
                f"data.path: cannot tell the format of {path}; use one of "
                f"{', '.join(sorted(_BUILDERS))} (optionally .gz)"
            )
        try:
            ds = datasets.load_dataset(
                builders.pop(), data_files=[str(f) for f in files], split="train"
            )
        except Exception as exc:
            raise InputError(f"data.path: could not read {path}: {exc}") from exc
    elif spec.path.startswith((".", "/", "~")) or builder_for(path):
        raise InputError(f"data.path: file not found: {spec.path}")
    else:
        try:
            ds = datasets.load_dataset(spec.path, split=split)
        except Exception as exc:
            raise InputError(
                f"data.path: {spec.path!r} is neither a local file nor a loadable hub "
                f"dataset ({type(exc).__name__}: {exc})"
            ) from exc
    if spec.columns:
        missing = [src for src in spec.columns.values() if src not in ds.column_names]
        if missing:
            raise InputError(
                f"data.columns: column(s) {', '.join(map(repr, missing))} not in "
                f"{spec.path}; columns found: {', '.join(ds.column_names)}"
            )
        ds = ds.rename_columns({src: dst for dst, src in spec.columns.items() if src != dst})
    if spec.limit is not None:
        ds = ds.select(range(min(spec.limit, len(ds))))
    if len(ds) == 0:
        raise InputError(f"data.path: {spec.path} has no rows")
    return ds


def require_columns(ds: Any, needed: list[str], *, spec: DataSpec, hint: str = "") -> None:
    """Raise a clear error naming the columns found when ``needed`` are missing."""
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise InputError(
            f"data: {spec.path} lacks column(s) {', '.join(map(repr, missing))}; columns "
            f"found: {', '.join(ds.column_names)}. Map yours with data.columns, e.g. "
            f"columns: {{{missing[0]}: <your column>}}{hint}"
        )
