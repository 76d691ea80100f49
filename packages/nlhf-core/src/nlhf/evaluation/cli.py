"""``nlhf eval`` and ``nlhf report`` (added to the app by :func:`register`).

The command signatures use :mod:`nlhf.cli`'s shared option types (annotations are
evaluated by typer, so they are imported at module level). Frameworks and matplotlib are imported inside the commands only, so ``nlhf --help``
stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nlhf.cli import SetOpt, SpecArg, _backend, _err, _load, _out, report_errors

EVAL_BACKENDS = "numpy (tabular, exact), torch or jax (LLM policies, sampled), or a plugin's"


def print_matrix(result: Any, console: Any) -> None:
    """Print a :class:`~nlhf.evaluation.winrate.WinRateMatrix` as a rich table: rows
    ``i name``, columns by index ``i`` (so wide matrices fit), then the column averages.
    The confidence intervals are in ``winrate.csv`` / ``winrate.json``."""
    from rich.table import Table

    table = Table(title="win-rate P(column ≻ row)")
    table.add_column("row \\ column", style="bold", no_wrap=True)
    for j in range(result.size):
        table.add_column(str(j + 1), justify="right", no_wrap=True)
    for i, name in enumerate(result.policies):
        table.add_row(f"{i + 1} {name}", *(f"{result.mean[i, j]:.3f}" for j in range(result.size)))
    avg = result.column_average()
    table.add_row("mean vs others", *(f"{a:.3f}" for a in avg), style="italic")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``eval`` and ``report`` commands to ``app`` (the ``nlhf`` typer app)."""

    @app.command("eval")
    @report_errors
    def eval_command(
        spec: SpecArg,
        backend: Annotated[
            str | None,
            typer.Option(
                "--backend", "-b", help=f"Backend: {EVAL_BACKENDS} (default: by spec kind)."
            ),
        ] = None,
        overrides: SetOpt = None,
        output: Annotated[
            Path | None,
            typer.Option("--output", "-o", help="Output directory (overrides output.dir)."),
        ] = None,
    ) -> None:
        """Win-rate matrix between policies (task: evaluate): winrate.csv/json, plots."""
        from nlhf.errors import InputError
        from nlhf.evaluation.winrate import read_winrate

        run_spec = _load(spec, overrides)
        if run_spec.task != "evaluate":
            raise InputError(
                f"{spec}: `nlhf eval` needs `task: evaluate` (got {run_spec.task!r}); "
                f"list the policies under eval.policies"
            )
        if output is not None:
            run_spec.output.dir = str(output)
        out_dir = Path(run_spec.output.dir)
        name = backend or ("numpy" if run_spec.is_tabular else "torch")
        _err().print(f"nlhf eval: {spec}: {len(run_spec.eval.policies)} policies on {name}")
        from nlhf.runio import claim_output_dir

        # reuses an evaluation's caches; refuses another task's run directory (docs/resume.md)
        with claim_output_dir(run_spec, out_dir, resume=True):
            if name == "numpy":
                if not run_spec.is_tabular:
                    raise InputError(
                        "--backend numpy evaluates tabular policies only; use --backend torch"
                    )
                from nlhf.evaluation.tabular import evaluate_tabular_spec

                evaluate_tabular_spec(run_spec, out_dir)
            else:
                if run_spec.is_tabular:
                    raise InputError("tabular evaluations are exact: use --backend numpy")
                _backend(name).train(run_spec, out_dir)
        console = _out()
        print_matrix(read_winrate(out_dir), console)
        console.print(f"outputs: {out_dir} (winrate.csv, winrate.json, summary.json, plots/)")

    @app.command("report")
    @report_errors
    def report_command(
        run_dir: Annotated[Path, typer.Argument(help="A run or evaluation output directory.")],
        output: Annotated[
            Path | None,
            typer.Option("--output", "-o", help="HTML file (default: RUN_DIR/report.html)."),
        ] = None,
    ) -> None:
        """Write a self-contained HTML report (plots embedded) of a run or evaluation."""
        from nlhf.evaluation.report import build_report

        path = build_report(run_dir, output)
        _out().print(f"report: {path}", markup=False)
