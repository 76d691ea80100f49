"""``nlhf preference-eval MODEL_DIR --data FILE``: accuracy, log loss, ECE and the number
of pairs of a saved preference model on a pairs file (docs/real-models.md).

``MODEL_DIR`` is a ``task: preference_model`` output directory (its final ``model/`` is
used) or one model directory (``model/``, ``baseline/model/``, ``checkpoints/step-N/``,
any transformers directory a backend's ``load_preference_model`` reads). The pairs are
read by :func:`nlhf.data.pairs.load_pairs` in any format ``data`` accepts (``auto``,
``preference``, ``hh_rlhf``, a plugin's), unshuffled, every row evaluated, and truncated
exactly as ``task: preference_model`` truncates its held-out pairs (the model's saved
``max_prompt_length`` and ``truncation``, and ``max_length`` minus the tokens it adds),
so on a run's own held-out split the numbers equal the run's ``eval/*``. The metrics are
:func:`nlhf.preference.metrics.evaluate_pairs`'. This module only parses the command line;
the model loads through the backend.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from nlhf.errors import InputError

LOADERS = {
    "torch": "nlhf_torch.preference.model",
    "jax": "nlhf_jax.preference.model",
}
"""The module whose ``load_preference_model(path)`` loads a saved model, per backend."""
HEADLINE = ("accuracy", "log_loss", "ece", "pairs")


def model_directory(path: Path) -> Path:
    """The model directory ``path`` names: itself when it holds a model (``config.json``),
    else a run output's ``model/``; a clear error otherwise."""
    path = path.expanduser()
    if not path.is_dir():
        raise InputError(f"MODEL_DIR: {path} is not a directory")
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():
        return path / "model"
    raise InputError(
        f"MODEL_DIR: {path} holds no preference model (no config.json, no model/config.json); "
        "give a `task: preference_model` output directory or one of its model directories "
        "(model/, checkpoints/step-N/)"
    )


def evaluate_model_dir(
    model_dir: Path,
    data: Path,
    *,
    data_format: str = "auto",
    backend: str = "torch",
    batch_size: int = 16,
) -> dict[str, Any]:
    """:func:`nlhf.preference.metrics.evaluate_pairs` of the model in ``model_dir`` on
    every pair of ``data`` (plus ``model``, ``data``, ``backend``, ``kind``, ``n``)."""
    from nlhf.data.pairs import load_pairs
    from nlhf.data.tokenizer import text_overhead
    from nlhf.preference.metrics import evaluate_pairs
    from nlhf.preference.run import LENGTH_SLACK
    from nlhf.spec.models import DataSpec

    if backend not in LOADERS:
        raise InputError(f"--backend: {backend!r} has no preference models; use torch or jax")
    if batch_size < 1:
        raise InputError(f"--batch-size: must be at least 1 (got {batch_size})")
    directory = model_directory(model_dir)
    if not data.is_file() and not data.is_dir():
        raise InputError(f"--data: {data} not found")
    try:
        module = importlib.import_module(LOADERS[backend])
    except ModuleNotFoundError as exc:
        raise InputError(
            f"--backend {backend}: needs {exc.name!r}; install nlhf-{backend}"
        ) from None
    model = module.load_preference_model(directory)
    if callable(getattr(model, "eval", None)):
        model.eval()  # torch: no dropout
    config = model.config
    spec = DataSpec(
        path=str(data),
        format=data_format,
        shuffle=False,
        max_length=config.max_length,
        max_prompt_length=config.max_prompt_length or config.max_length,
        truncation=config.truncation,
    )
    pairs = load_pairs(
        spec,
        tokenizer=model.tokenizer,
        reserve=text_overhead(model.tokenizer, config) + LENGTH_SLACK,
        joint=config.kind == "pairwise",
    )
    if not pairs.train:
        raise InputError(f"--data: {data} has no usable pairs ({pairs.report})")
    metrics = evaluate_pairs(model, pairs.train, batch_size)
    return {
        "model": str(directory),
        "data": str(data),
        "backend": backend,
        "kind": config.kind,
        "n": int(metrics["pairs"]),
        **metrics,
        "data_report": pairs.report,
    }


def register(app: typer.Typer) -> None:
    """Add ``preference-eval`` to the CLI."""
    from nlhf.cli import report_errors

    @app.command("preference-eval")
    @report_errors
    def preference_eval(
        model_dir: Annotated[
            Path,
            typer.Argument(
                help="A task: preference_model output directory (its model/ is used) or one "
                "model directory (model/, checkpoints/step-N/)."
            ),
        ],
        data: Annotated[Path, typer.Option("--data", help="Pairs file or directory.")],
        data_format: Annotated[
            str,
            typer.Option("--format", help="auto, preference, hh_rlhf or a plugin's format."),
        ] = "auto",
        backend: Annotated[str, typer.Option("--backend", "-b", help="torch or jax.")] = "torch",
        batch_size: Annotated[int, typer.Option(help="Comparisons per forward.")] = 16,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """Accuracy, log loss, ECE and n of a saved preference model on a pairs file (both
        presentation orders scored)."""
        from nlhf.cli import _out, library_progress_bars

        library_progress_bars(False)
        result = evaluate_model_dir(
            model_dir, data, data_format=data_format, backend=backend, batch_size=batch_size
        )
        if as_json:
            typer.echo(json.dumps(result))
            return
        from rich.table import Table

        from nlhf.formatting import format_value

        table = Table(title=f"preference-eval {result['model']}", show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value")
        for key in ("n", "accuracy", "log_loss", "ece", "antisymmetry_max_error", "kind"):
            if key in result:
                table.add_row(key, format_value(result[key]))
        _out().print(table)
