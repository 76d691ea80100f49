"""Experiment tracking: ``output.report_to: [tensorboard, wandb, mlflow]`` (docs/tracking.md).

Every task writes the same four things through the run directory's writers, and each
listed tracker receives them through its library's own API:

================  =================================  ===========================  ==================================
what              TensorBoard (``tensorboard/``)     W&B (``wandb/``, offline)    MLflow (``mlruns/``, file store)
================  =================================  ===========================  ==================================
the spec          hparams + text ``spec``            ``run.config``               params (flattened) + artifact
a metrics record  scalars at ``record["step"]``      ``run.log(…, step=…)``       metrics at ``step``
the summary       text ``summary`` + scalars         ``run.summary``              metrics ``summary/…`` + artifact
a plot (PNG)      image                              ``wandb.Image``              artifact under ``plots/``
================  =================================  ===========================  ==================================

A task opens its trackers once, on the process that writes files (rank 0), with
:func:`track`; while it is open, :class:`nlhf.runio.MetricsWriter`, :func:`nlhf.runio.write_summary`
and :func:`nlhf.evaluation.plots.save_figure` forward what they write below that directory
to it (:func:`report_metrics`, :func:`report_summary`, :func:`report_image`), so every
backend's writers report without knowing the trackers. Records written in a subdirectory
(the Bradley–Terry ``baseline/`` of a preference fit) are reported with that prefix.

Everything stays local by default: W&B runs in offline mode unless ``WANDB_MODE`` says
otherwise; MLflow writes a file store under the run directory unless
``MLFLOW_TRACKING_URI`` names another store. The libraries are imported only when a tracker
opens; a missing one is reported by ``nlhf validate`` / ``nlhf run`` before anything loads
(:func:`tracking_problems`). A tracker that fails after it opened is reported once and
dropped; the run goes on (its ``metrics.jsonl`` is the record of truth).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nlhf.spec.models import RunSpec

REPORTERS = ("tensorboard", "wandb", "mlflow")
"""The trackers ``output.report_to`` may list."""
MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""The module each tracker imports."""
INSTALL_HINTS = {name: f"pip install 'nlhf-core[{name}]'" for name in REPORTERS}
TRACKING_DIRS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlruns"}
"""Where each tracker writes, relative to the run directory."""
PROJECT = "nlhf"
"""Default W&B project and MLflow experiment (``WANDB_PROJECT`` /
``MLFLOW_EXPERIMENT_NAME`` override it)."""

Loc = tuple[str | int, ...]


# ------------------------------------------------------------------------- checks
def tracking_problems(spec: RunSpec) -> list[tuple[Loc, str]]:
    """``(field, message)`` for each tracker in ``output.report_to`` whose library is not
    installed, with the command that installs it."""
    problems: list[tuple[Loc, str]] = []
    for i, name in enumerate(spec.output.report_to):
        if importlib.util.find_spec(MODULES[name]) is None:
            problems.append(
                (
                    ("output", "report_to", i),
                    f"{name}: the {MODULES[name]} library is not installed; install it with "
                    f"`{INSTALL_HINTS[name]}` or remove {name!r} from output.report_to",
                )
            )
    return problems


# ------------------------------------------------------------------------- values
def flatten(data: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """Nested mappings as one level, keys joined by ``sep`` (``{"eval": {"acc": 1}}`` →
    ``{"eval/acc": 1}``)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}{sep}", sep))
        else:
            flat[name] = value
    return flat


def scalars(data: Mapping[str, Any], *, skip: tuple[str, ...] = ("step",)) -> dict[str, float]:
    """The finite numbers of ``data`` (flattened; booleans as 0/1), without ``skip``."""
    out: dict[str, float] = {}
    for key, value in flatten(data).items():
        if key in skip or value is None or isinstance(value, str):
            continue
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()
        if isinstance(value, bool | int | float) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str, allow_nan=True)


# ------------------------------------------------------------------------- trackers
class Tracker:
    """One tracking library's run: opened with the spec, the run directory and the task;
    ``close(failed)`` ends it (``failed``: the task raised)."""

    name = "tracker"

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The resolved spec (its JSON dump)."""

    def log_metrics(self, record: Mapping[str, Any], step: int) -> None:
        """One ``metrics.jsonl`` record at ``step``."""

    def log_summary(self, summary: Mapping[str, Any], step: int) -> None:
        """The ``summary.json`` of the task (``step``: the last step logged)."""

    def log_image(self, path: Path, key: str, step: int) -> None:
        """A PNG plot under ``key`` (e.g. ``plots/winrate``)."""

    def close(self, failed: bool = False) -> None:
        """Flush and end the run."""


class TensorBoardTracker(Tracker):
    """Event files under ``RUN/tensorboard/``, written with TensorBoard's own
    ``EventFileWriter`` and summary protos (no TensorFlow needed). A resumed run writes a
    ``SessionLog.START`` event at its first step, so TensorBoard's reader purges the steps
    the resume redoes."""

    name = "tensorboard"

    def __init__(self, directory: Path, task: str, resumed_from: int | None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._Event, self._Summary = Event, Summary
        directory.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(directory))
        if resumed_from is not None:
            self._add(Event(step=resumed_from + 1, session_log=SessionLog(status=SessionLog.START)))

    def _add(self, event: Any) -> None:
        event.wall_time = event.wall_time or time.time()
        self._writer.add_event(event)

    def _summary(self, values: list[Any], step: int) -> None:
        self._add(self._Event(step=step, summary=self._Summary(value=values)))

    def _text(self, tag: str, text: str, step: int) -> None:
        from tensorboard.plugins.text.summary_v2 import text_pb

        self._add(self._Event(step=step, summary=text_pb(tag, text)))

    def log_config(self, config: Mapping[str, Any]) -> None:
        import yaml
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        hparams = {
            k: v
            for k, v in flatten(config, sep=".").items()
            if isinstance(v, bool | int | float | str)
        }
        self._add(self._Event(step=0, summary=hparams_pb(hparams)))
        self._text("spec", "```\n" + yaml.safe_dump(dict(config), sort_keys=False) + "```", 0)

    def log_metrics(self, record: Mapping[str, Any], step: int) -> None:
        values = [self._Summary.Value(tag=k, simple_value=v) for k, v in scalars(record).items()]
        self._summary(values, step)

    def log_summary(self, summary: Mapping[str, Any], step: int) -> None:
        self._text("summary", "```\n" + _json(summary) + "\n```", step)
        prefixed = scalars({"summary": summary}, skip=())
        self._summary(
            [self._Summary.Value(tag=k, simple_value=v) for k, v in prefixed.items()], step
        )

    def log_image(self, path: Path, key: str, step: int) -> None:
        from PIL import Image

        with Image.open(path) as image:
            width, height = image.size
            channels = len(image.getbands())
        encoded = Path(path).read_bytes()
        picture = self._Summary.Image(
            height=height, width=width, colorspace=channels, encoded_image_string=encoded
        )
        self._summary([self._Summary.Value(tag=key, image=picture)], step)

    def close(self, failed: bool = False) -> None:
        self._writer.close()


class WandbTracker(Tracker):
    """A W&B run under ``RUN/wandb/``: offline unless ``WANDB_MODE`` is set (``wandb sync``
    uploads it later); project ``WANDB_PROJECT`` or :data:`PROJECT`, named after the run
    directory, grouped by it (a resumed run is a new W&B run in the same group)."""

    name = "wandb"

    def __init__(self, root: Path, task: str, resumed_from: int | None) -> None:
        import wandb

        self._wandb = wandb
        root.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(
            console="off",
            silent=True,
            x_disable_stats=True,
            x_disable_machine_info=True,
            disable_git=True,
            save_code=False,
            x_save_requirements=False,
            disable_job_creation=True,
        )
        tags = [task] + ([f"resumed_from_{resumed_from}"] if resumed_from else [])
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", PROJECT),
            name=root.parent.name,
            group=str(root.parent.resolve()),
            job_type=task,
            tags=tags,
            dir=str(root.parent),
            mode=os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]
            reinit="create_new",
            settings=settings,
        )
        self._step = -1

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._run.config.update(dict(config), allow_val_change=True)

    def log_metrics(self, record: Mapping[str, Any], step: int) -> None:
        values = scalars(record)
        if step <= self._step:  # W&B keeps steps increasing; a repeated step joins the last
            self._run.log(values)
        else:
            self._run.log(values, step=step)
            self._step = step

    def log_summary(self, summary: Mapping[str, Any], step: int) -> None:
        self._run.summary.update(flatten(json.loads(_json(summary))))

    def log_image(self, path: Path, key: str, step: int) -> None:
        self._run.log({key: self._wandb.Image(str(path))}, step=max(step, self._step))
        self._step = max(step, self._step)

    def close(self, failed: bool = False) -> None:
        self._run.finish(exit_code=1 if failed else 0)
        # finish() can return before the offline transaction log is flushed; the W&B
        # service writes it completely when it is torn down (a later run starts a new one)
        self._wandb.teardown()


class MLflowTracker(Tracker):
    """An MLflow run through ``MlflowClient``: the file store ``RUN/mlruns/`` unless
    ``MLFLOW_TRACKING_URI`` names another; experiment ``MLFLOW_EXPERIMENT_NAME`` or
    :data:`PROJECT`. MLflow 3 keeps the file store in maintenance mode behind
    ``MLFLOW_ALLOW_FILE_STORE=true``, which this tracker sets for its own store."""

    name = "mlflow"

    def __init__(self, root: Path, task: str, resumed_from: int | None) -> None:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            root.mkdir(parents=True, exist_ok=True)
            uri = root.resolve().as_uri()
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)
        experiment = self._client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else self._client.create_experiment(name)
        )
        tags = {"nlhf.task": task, "nlhf.output": str(root.parent.resolve())}
        if resumed_from is not None:
            tags["nlhf.resumed_from"] = str(resumed_from)
        run = self._client.create_run(experiment_id, run_name=root.parent.name, tags=tags)
        self.run_id = run.info.run_id

    def _metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            self._client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def log_config(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        params = [
            Param(_mlflow_key(k), json.dumps(v) if not isinstance(v, str) else v)
            for k, v in flatten(config, sep=".").items()
        ]
        params = [p for p in params if len(p.value) <= 6000]  # MLflow's value limit
        for i in range(0, len(params), 100):  # MLflow's batch limit
            self._client.log_batch(self.run_id, params=params[i : i + 100])
        self._client.log_dict(self.run_id, dict(config), "spec.resolved.yaml")

    def log_metrics(self, record: Mapping[str, Any], step: int) -> None:
        self._metrics(scalars(record), step)

    def log_summary(self, summary: Mapping[str, Any], step: int) -> None:
        self._client.log_dict(self.run_id, json.loads(_json(summary)), "summary.json")
        self._metrics(scalars({"summary": summary}, skip=()), step)

    def log_image(self, path: Path, key: str, step: int) -> None:
        folder = str(Path(key).parent) if "/" in key else None
        self._client.log_artifact(self.run_id, str(path), folder)

    def close(self, failed: bool = False) -> None:
        self._client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def _mlflow_key(key: str) -> str:
    """MLflow keys take letters, digits, ``_ - . space / :``; anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in key)[:250]


#: name -> constructor(directory, task, resumed_from)
TRACKERS: dict[str, Callable[..., Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "mlflow": MLflowTracker,
}


class Trackers:
    """The trackers of one run directory; forwards each call to all of them. A tracker
    that raises is reported once on stderr and dropped."""

    def __init__(self, output: Path, trackers: list[Tracker]) -> None:
        self.output = output
        self.trackers = trackers
        self.step = 0
        """The largest step logged so far (the summary's and the plots' step)."""

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # a tracker never stops the run
                self.trackers.remove(tracker)
                print(
                    f"warning: output.report_to: {tracker.name} failed ({type(exc).__name__}: "
                    f"{exc}); it is dropped for the rest of the run, metrics.jsonl is complete",
                    file=sys.stderr,
                    flush=True,
                )

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._each("log_config", config)

    def log_metrics(self, record: Mapping[str, Any], prefix: str = "") -> None:
        step = record.get("step")
        step = int(step) if isinstance(step, int | float) else self.step
        self.step = max(self.step, step)
        self._each("log_metrics", _prefixed(record, prefix), step)

    def log_summary(self, summary: Mapping[str, Any], prefix: str = "") -> None:
        self._each("log_summary", _prefixed(summary, prefix), self.step)

    def log_image(self, path: Path, key: str) -> None:
        self._each("log_image", Path(path), key, self.step)

    def close(self, failed: bool = False) -> None:
        self._each("close", failed)
        self.trackers = []


def _prefixed(data: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if not prefix:
        return dict(data)
    out = {f"{prefix}/{k}": v for k, v in data.items()}
    if "step" in data:  # keep the run's step axis; the subdirectory's own step as a value
        out["step"] = data["step"]
    return out


_ACTIVE: dict[Path, Trackers] = {}


def open_trackers(
    spec: RunSpec, output: Path, task: str, *, resumed_from: int | None = None
) -> Trackers:
    """Open every tracker of ``spec.output.report_to`` for the run directory ``output``
    and log the resolved spec; raises :class:`~nlhf.errors.InputError` (with the install
    hint) when a library is missing, :class:`~nlhf.errors.NLHFError` when a tracker
    cannot start (those opened before it are closed)."""
    from nlhf.errors import InputError, NLHFError

    output = Path(output)
    problems = tracking_problems(spec)
    if problems:
        raise InputError("; ".join(f"output.report_to.{loc[-1]}: {m}" for loc, m in problems))
    opened = Trackers(output, [])
    for name in dict.fromkeys(spec.output.report_to):
        try:
            opened.trackers.append(TRACKERS[name](output / TRACKING_DIRS[name], task, resumed_from))
        except BaseException as exc:
            opened.close(failed=True)
            if not isinstance(exc, Exception):
                raise
            raise NLHFError(
                f"output.report_to: {name} could not start ({type(exc).__name__}: {exc}); "
                "fix its settings (docs/tracking.md) or remove it from output.report_to"
            ) from exc
    opened.log_config(spec.model_dump(mode="json"))
    return opened


@contextmanager
def track(
    spec: RunSpec, output: Path, task: str, *, resumed_from: int | None = None
) -> Iterator[Trackers | None]:
    """The trackers of ``spec.output.report_to`` for the run directory ``output`` while the
    block runs (``None`` when it lists none); the run directory's writers report to them
    (module docstring). Closed at the end, marked failed when the block raises."""
    if not spec.output.report_to:
        yield None
        return
    key = Path(output).resolve()
    trackers = open_trackers(spec, Path(output), task, resumed_from=resumed_from)
    _ACTIVE[key] = trackers
    failed = True
    try:
        yield trackers
        failed = False
    finally:
        _ACTIVE.pop(key, None)
        trackers.close(failed=failed)


def active(path: Path) -> tuple[Trackers, str] | None:
    """The open trackers of the run directory that holds ``path`` (itself or an ancestor),
    with ``path``'s position below it (``""`` for the run directory itself)."""
    if not _ACTIVE:
        return None
    path = Path(path).resolve()
    for candidate in (path, *path.parents):
        if candidate in _ACTIVE:
            below = path.relative_to(candidate).as_posix()
            return _ACTIVE[candidate], "" if below == "." else below
    return None


def report_metrics(directory: Path, record: Mapping[str, Any]) -> None:
    """Forward a record written to ``directory/metrics.jsonl`` to the open trackers."""
    if (found := active(directory)) is not None:
        found[0].log_metrics(record, found[1])


def report_summary(directory: Path, summary: Mapping[str, Any]) -> None:
    """Forward ``directory/summary.json`` to the open trackers."""
    if (found := active(directory)) is not None:
        found[0].log_summary(summary, found[1])


def report_image(path: Path) -> None:
    """Forward a PNG written below a run directory to the open trackers, keyed by its path
    in the run directory without the suffix (e.g. ``plots/winrate``)."""
    if (found := active(Path(path).parent)) is not None:
        trackers, below = found
        key = "/".join(p for p in (below, Path(path).stem) if p)
        trackers.log_image(Path(path), key)
