"""Plots of runs and evaluations (matplotlib, object API only: no pyplot global state).

- :func:`winrate_heatmap`: the win-rate matrix P(π_column ≻ π_row) (paper Table 1) with
  each cell's mean and confidence interval, policy names on both axes.
- :func:`training_curves`: every numeric key of ``metrics.jsonl`` against ``step``
  (loss, kl, preference, duality_gap, ... whatever the run logged).
- :func:`simplex_figure`: policies of a 3-response game on the probability simplex in
  barycentric coordinates: vertex k at (cos θ_k, sin θ_k), θ_k = π/2 + 2πk/3, and a
  policy π at Σ_k π_k·vertex_k.

:func:`save_figure` writes PNG and SVG (text kept as text, ``svg.fonttype: none``, so the
SVG is searchable). Importing this module imports matplotlib; nothing else in
:mod:`nlhf.evaluation` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from nlhf import tracking
from nlhf.errors import InputError
from nlhf.evaluation.winrate import WinRateMatrix

SKIP_KEYS = frozenset(
    {"step", "tokens_per_s", "step_seconds", "generation_seconds", "generated_tokens", "lr"}
)
PREFERRED_KEYS = (
    "loss",
    "kl",
    "preference",
    "mean_preference",
    "duality_gap",
    "exploitability",
    "kl_to_reference",
    "kl_to_solution",
    "reward",
)


def save_figure(fig: Figure, stem: Path, *, dpi: int = 120) -> list[str]:
    """Write ``stem.png`` and ``stem.svg`` (parents created); returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        for ext in ("png", "svg"):
            path = stem.with_suffix(f".{ext}")
            fig.savefig(path, dpi=dpi, bbox_inches="tight")
            paths.append(str(path))
    tracking.report_image(Path(paths[0]))  # output.report_to, when open
    return paths


def winrate_heatmap(result: WinRateMatrix, *, title: str | None = None) -> Figure:
    """Heatmap of ``result.mean[i, j] = P(π_j ≻ π_i)``: columns = the policy that wins,
    rows = its opponent; each cell shows the mean and (if sampled) its CI. Colours are
    centred at ½ and span ½ ± max(0.05, max |mean − ½|)."""
    k = result.size
    size = max(4.0, 1.1 * k + 2.0)
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot()
    values = np.where(np.isnan(result.mean), 0.5, result.mean)
    spread = max(0.05, float(np.max(np.abs(values - 0.5))))  # colours centred at ½
    image = ax.imshow(values, cmap="RdBu", vmin=0.5 - spread, vmax=0.5 + spread)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="P(column ≻ row)")
    ax.set_xticks(range(k), labels=result.policies, rotation=35, ha="right")
    ax.set_yticks(range(k), labels=result.policies)
    ax.set_xlabel("column policy π_j (wins with the shown probability)")
    ax.set_ylabel("row policy π_i")
    small = 8 if k <= 6 else 6
    for i in range(k):
        for j in range(k):
            m = result.mean[i, j]
            if math.isnan(m):
                text = "–"
            elif result.method[i][j] in ("exact",) or i == j:
                text = f"{m:.3f}"
            else:
                text = f"{m:.3f}\n[{result.low[i, j]:.2f}, {result.high[i, j]:.2f}]"
            color = "white" if abs(values[i, j] - 0.5) > 0.6 * spread else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=small, color=color)
    methods = sorted({m for row in result.method for m in row} - {"exact"})
    subtitle = f"{round(100 * result.confidence)}% CI: {', '.join(methods)}" if methods else "exact"
    ax.set_title(title or f"win-rate P(column ≻ row) — {subtitle}")
    fig.tight_layout()
    return fig


def _finite_number(value: Any) -> TypeGuard[float]:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def numeric_keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Keys with at least one finite numeric value, not constant over several records
    (bools and :data:`SKIP_KEYS` excluded), :data:`PREFERRED_KEYS` first, then in
    first-seen order."""
    seen: list[str] = []
    values: dict[str, set[float]] = {}
    for rec in records:
        for key, value in rec.items():
            if key in SKIP_KEYS or not _finite_number(value):
                continue
            if key not in seen:
                seen.append(key)
            values.setdefault(key, set()).add(float(value))
    if len(records) > 1:  # a constant (tau, beta) is a setting, not a curve
        seen = [k for k in seen if len(values[k]) > 1]
    return [k for k in PREFERRED_KEYS if k in seen] + [k for k in seen if k not in PREFERRED_KEYS]


def training_curves(
    records: Sequence[Mapping[str, Any]],
    *,
    keys: Sequence[str] | None = None,
    title: str | None = None,
    max_panels: int = 12,
) -> Figure:
    """One panel per metric (against ``step``, or the record index when absent). Keys
    whose values are all > 0 and span ≥ 2 decades get a log y-axis; with > 50 records
    the raw values are drawn faintly under a moving average of window n/20."""
    if not records:
        raise InputError("training_curves: metrics.jsonl has no records")
    chosen = list(keys) if keys is not None else numeric_keys(records)[:max_panels]
    if not chosen:
        raise InputError("training_curves: no numeric metrics to plot")
    cols = min(3, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
    for n, key in enumerate(chosen):
        ax = fig.add_subplot(rows, cols, n + 1)
        xs, ys = [], []
        for idx, rec in enumerate(records):
            value = rec.get(key)
            if _finite_number(value):
                xs.append(rec.get("step", idx))
                ys.append(float(value))
        if len(ys) > 50:  # raw values thin, plus a centred moving average
            ax.plot(xs, ys, lw=0.6, alpha=0.35, color="C0")
            window = max(3, len(ys) // 20)
            smooth = np.convolve(ys, np.ones(window) / window, mode="valid")
            ax.plot(xs[window // 2 : window // 2 + len(smooth)], smooth, lw=1.6, color="C0")
        else:
            ax.plot(xs, ys, lw=1.2, marker="." if len(xs) < 30 else None)
        positive = [y for y in ys if y > 0]
        if ys and len(positive) == len(ys) and max(ys) / min(ys) >= 100:
            ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


_ANGLES = np.pi / 2 + 2 * np.pi * np.arange(3) / 3
VERTICES = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1)
"""Corners of the simplex: response k at (cos θ_k, sin θ_k), θ_k = π/2 + 2πk/3."""


def to_simplex(probs: np.ndarray) -> np.ndarray:
    """Barycentric (…, 3) probabilities -> (…, 2) plane points Σ_k π_k·vertex_k."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[-1] != 3:
        raise InputError(f"simplex plots need 3 responses; got {p.shape[-1]}")
    return p @ VERTICES


def simplex_figure(
    trajectories: Mapping[str, np.ndarray],
    labels: Sequence[str],
    *,
    points: Mapping[str, np.ndarray] | None = None,
    reference: np.ndarray | None = None,
    solution: np.ndarray | None = None,
    title: str | None = None,
) -> Figure:
    """Policies of a 3-response game on the simplex: ``trajectories[name]`` (T, 3) as
    lines from π_0 (circle) to π_T (square), ``points`` as labelled markers, μ and the
    solution as stars. Corners carry the response ``labels``."""
    if len(labels) != 3:
        raise InputError(f"simplex plots need 3 responses; got {len(labels)}")
    fig = Figure(figsize=(5.6, 5.2))
    ax = fig.add_subplot()
    corners = np.vstack([VERTICES, VERTICES[:1]])
    ax.plot(corners[:, 0], corners[:, 1], color="0.3", lw=1)
    for k, label in enumerate(labels):
        x, y = VERTICES[k] * 1.1
        ax.text(x, y, str(label), ha="center", va="center", fontsize=11, weight="bold")
    for name, traj in trajectories.items():
        xy = to_simplex(np.asarray(traj))
        (line,) = ax.plot(xy[:, 0], xy[:, 1], lw=1.4, label=name)
        ax.plot(*xy[0], "o", color=line.get_color(), ms=5)
        ax.plot(*xy[-1], "s", color=line.get_color(), ms=6)
    markers = "oDv^<>ph*X"
    for n, (name, p) in enumerate((points or {}).items()):
        ax.plot(*to_simplex(np.asarray(p)), markers[n % len(markers)], ms=8, label=name)
    if reference is not None:
        ax.plot(*to_simplex(reference), "*", color="0.4", ms=13, label="reference μ")
    if solution is not None:
        ax.plot(*to_simplex(solution), "*", color="crimson", ms=13, label="solution")
    ax.set_aspect("equal")
    ax.set_xlim(-1.15, 1.15)
    ax.set_ylim(-0.75, 1.25)
    ax.axis("off")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
