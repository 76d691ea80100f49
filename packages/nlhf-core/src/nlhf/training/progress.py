"""The one progress bar of every long run (Nash training, tabular runs, preference-model
training, evaluation): a rich bar on stderr when stderr is a terminal, silent otherwise
(CI logs and redirected output stay clean)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any


class Progress:
    """``with Progress(total, label, done=start) as bar: bar.advance(loss=…, kl=…)``.

    ``info`` fields are shown as ``name value`` after the bar (floats with 4 decimals).
    ``enabled``: None (default) draws when stderr is a terminal, True always, False never
    (e.g. ranks > 0 of a distributed run)."""

    def __init__(
        self, total: int, label: str, *, done: int = 0, enabled: bool | None = None
    ) -> None:
        self.total, self.label, self.done = total, label, done
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(
                self.label, total=self.total, completed=self.done, info=""
            )
        return self

    def advance(self, steps: int = 1, **info: float | str | None) -> None:
        """Move ``steps`` forward and show ``info``."""
        self.done += steps
        if self._bar is not None:
            text = " ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in info.items()
                if v is not None
            )
            self._bar.update(self._task, advance=steps, info=text)

    def update(self, completed: int, **info: float | str | None) -> None:
        """Set the position to ``completed`` (for loops that count in larger strides)."""
        self.advance(completed - self.done, **info)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, value, tb)
