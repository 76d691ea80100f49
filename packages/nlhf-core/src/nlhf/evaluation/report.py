"""``nlhf report RUN_DIR``: one self-contained HTML page for a run or an evaluation.

It gathers what the directory holds — ``summary.json`` (a table of its scalar entries,
nested keys dotted), ``metrics.jsonl`` (training curves), ``winrate.json`` (heatmap and
per-policy table), and for a 3-response tabular run its trajectory on the simplex
(recomputed from ``spec.resolved.yaml``) — writes the plots as PNG + SVG under
``RUN_DIR/plots/`` and embeds the PNGs in ``report.html`` as base64 ``data:`` URIs, so
the page needs no other file.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlhf.errors import InputError
from nlhf.formatting import flatten, format_value

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.6em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}
th{background:#f4f4f4}img{max-width:100%;height:auto;border:1px solid #eee}
.note{color:#666;font-size:.85em}
"""


def _scalar_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for key, value in flatten(summary).items():
        if isinstance(value, bool) or value is None:
            rows.append((key, str(value)))
        elif isinstance(value, int | float | str):
            rows.append((key, format_value(value)))
        elif (
            isinstance(value, list)
            and 0 < len(value) <= 12
            and all(isinstance(v, int | float | str) for v in value)
        ):
            rows.append((key, "[" + ", ".join(format_value(v) for v in value) + "]"))
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(png: Path, alt: str) -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc})") from exc


def build_report(run_dir: Path, output: Path | None = None, *, title: str | None = None) -> Path:
    """Write ``report.html`` (default ``RUN_DIR/report.html``) and ``RUN_DIR/plots/``;
    return the HTML path. :class:`InputError` when the directory holds no run outputs."""
    from nlhf.evaluation import plots
    from nlhf.evaluation.tabular import run_trajectory
    from nlhf.evaluation.winrate import read_winrate
    from nlhf.runio import atomic_write_text, read_metrics

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a directory")
    summary_path, winrate_path = run_dir / "summary.json", run_dir / "winrate.json"
    summary = _read_json(summary_path) if summary_path.is_file() else None
    records = read_metrics(run_dir)
    winrate = read_winrate(winrate_path) if winrate_path.is_file() else None
    if summary is None and not records and winrate is None:
        raise InputError(
            f"{run_dir}: no summary.json, metrics.jsonl or winrate.json; is it a run directory?"
        )
    plot_dir = run_dir / "plots"
    sections: list[str] = []

    if summary is not None:
        rows = _scalar_rows(summary)
        sections.append("<h2>Summary</h2>" + _table(["key", "value"], [list(r) for r in rows]))

    if winrate is not None:
        fig = plots.winrate_heatmap(winrate)
        png = plots.save_figure(fig, plot_dir / "winrate")[0]
        header = ["policy", "mean win-rate vs others"]
        extra_keys: list[str] = []
        for info in winrate.per_policy.values():
            for key, value in info.items():
                numeric = isinstance(value, int | float) and not isinstance(value, bool)
                if numeric and key not in extra_keys:
                    extra_keys.append(key)
        avg = winrate.column_average()
        rows_pp = []
        for n, name in enumerate(winrate.policies):
            info = winrate.per_policy.get(name, {})
            rows_pp.append(
                [name, format_value(float(avg[n]))]
                + [format_value(info.get(k, "")) for k in extra_keys]
            )
        matrix_rows = [
            [name]
            + [
                format_value(float(winrate.mean[i, j]))
                + (
                    ""
                    if winrate.method[i][j] == "exact"
                    else f" [{winrate.low[i, j]:.3f}, {winrate.high[i, j]:.3f}]"
                )
                for j in range(winrate.size)
            ]
            for i, name in enumerate(winrate.policies)
        ]
        sections.append(
            "<h2>Win-rates</h2><p class=note>cell = P(column policy ≻ row policy), "
            f"{round(100 * winrate.confidence)}% confidence intervals in brackets; "
            f"antisymmetry error {winrate.antisymmetry_error():.2e}</p>"
            + _img(Path(png), "win-rate heatmap")
            + _table(["row \\ column", *winrate.policies], matrix_rows)
            + "<h3>Per policy</h3>"
            + _table(header + extra_keys, rows_pp)
        )

    if records:
        curves: Figure | None
        try:
            curves = plots.training_curves(records, title=run_dir.name)
        except InputError:
            curves = None
        if curves is not None:
            png = plots.save_figure(curves, plot_dir / "training_curves")[0]
            sections.append(
                f"<h2>Training curves</h2><p class=note>{len(records)} records from "
                f"metrics.jsonl</p>" + _img(Path(png), "training curves")
            )

    traj = run_trajectory(run_dir)
    if traj is not None and len(traj["labels"]) == 3:
        fig = plots.simplex_figure(
            {traj["algorithm"]: traj["policies"]},
            traj["labels"],
            reference=traj["reference"],
            solution=traj["solution"],
            title=f"{traj['algorithm']}: π_0 (circle) → π_T (square)",
        )
        png = plots.save_figure(fig, plot_dir / "simplex")[0]
        sections.append("<h2>Policy trajectory on the simplex</h2>" + _img(Path(png), "simplex"))

    heading = html.escape(title or f"nlhf report: {run_dir.name}")
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{heading}</title>"
        f"<style>{STYLE}</style></head><body><h1>{heading}</h1>"
        f"<p class=note>{html.escape(str(run_dir.resolve()))}</p>"
        + "".join(sections)
        + "</body></html>\n"
    )
    out = Path(output) if output is not None else run_dir / "report.html"
    atomic_write_text(out, page)
    return out
