"""Plots (docs/evaluation.md): files produced, non-empty, sized, axes carrying the policy names."""

from __future__ import annotations

import os
import struct
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
from nlhf.errors import InputError
from nlhf.evaluation.plots import (
    VERTICES,
    numeric_keys,
    save_figure,
    simplex_figure,
    to_simplex,
    training_curves,
    winrate_heatmap,
)
from nlhf.evaluation.winrate import matrix_from_outcomes
from nlhf.testing.tolerances import assert_close

NAMES = ["nash_md_pg β=0.125", "self_play", "rlhf_pg"]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG IHDR chunk (bytes 16..24), read independently."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _matrix():
    rng = np.random.default_rng(0)
    outcomes = {
        (0, 1): rng.random(40),
        (0, 2): (rng.random(30) < 0.3).astype(float),
        (1, 2): rng.random(10),
    }
    return matrix_from_outcomes(NAMES, outcomes)


def test_heatmap_png_svg_and_axis_names(tmp_path: Path) -> None:
    m = _matrix()
    fig = winrate_heatmap(m)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    texts = [t.get_text() for t in ax.texts]
    assert f"{m.mean[0, 1]:.3f}\n[{m.low[0, 1]:.2f}, {m.high[0, 1]:.2f}]" in texts
    png, svg = save_figure(fig, tmp_path / "sub" / "winrate")
    w, h = png_size(Path(png))
    assert w > 300 and h > 300
    assert Path(png).stat().st_size > 10_000
    svg_text = Path(svg).read_text(encoding="utf-8")
    for name in NAMES:
        assert name in svg_text  # text kept as text (svg.fonttype none)


def test_training_curves_one_panel_per_metric(tmp_path: Path) -> None:
    records = [
        {
            "step": s,
            "loss": 10.0 ** (-s / 10),
            "kl": 0.01 * s,
            "preference": 0.5 + 0.001 * s,
            "lr": 1e-3,
            "kl_estimator": "exact",
            "flag": True,
            "tokens_per_s": 100.0,
        }
        for s in range(1, 51)
    ]
    assert numeric_keys(records) == ["loss", "kl", "preference"]
    fig = training_curves(records, title="run")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "kl", "preference"]
    xs, ys = fig.axes[0].lines[0].get_data()
    assert list(xs) == list(range(1, 51)) and ys[0] == pytest.approx(10**-0.1)
    assert fig.axes[0].get_yscale() == "log"  # loss spans 5 decades
    assert fig.axes[1].get_yscale() == "linear"  # kl spans 50×
    png, _ = save_figure(fig, tmp_path / "curves")
    assert png_size(Path(png))[0] > 600


def test_training_curves_bad_input() -> None:
    with pytest.raises(InputError, match="no records"):
        training_curves([])
    constant = [{"step": s, "tau": 0.1, "loss": float(s)} for s in range(3)]
    assert numeric_keys(constant) == ["loss"]
    long = [{"step": s, "loss": float(s % 7)} for s in range(200)]
    lines = training_curves(long).axes[0].lines
    assert len(lines) == 2 and len(lines[0].get_xdata()) == 200  # raw + moving average
    window = 200 // 20
    assert lines[1].get_ydata()[0] == pytest.approx(np.mean([s % 7 for s in range(window)]))
    with pytest.raises(InputError, match="no numeric"):
        training_curves([{"step": 1, "kl_estimator": "k3"}])


def test_simplex_geometry_and_labels(tmp_path: Path) -> None:
    # vertices of an equilateral triangle centred at 0, first one at the top
    assert np.allclose(to_simplex(np.eye(3)), VERTICES)
    assert np.allclose(VERTICES[0], [0.0, 1.0])
    assert_close(to_simplex(np.ones(3) / 3), [0.0, 0.0], "float64", "centre")
    d = np.linalg.norm(VERTICES[0] - VERTICES[1])
    assert d == pytest.approx(np.sqrt(3)) and np.linalg.norm(
        VERTICES[1] - VERTICES[2]
    ) == pytest.approx(d)
    traj = np.array([[0.5, 0.3, 0.2], [0.4, 0.3, 0.3], [1 / 3, 1 / 3, 1 / 3]])
    fig = simplex_figure(
        {"nash_md": traj}, ["rock", "paper", "scissors"], reference=traj[0], solution=traj[-1]
    )
    ax = fig.axes[0]
    assert {"rock", "paper", "scissors"} <= {t.get_text() for t in ax.texts}
    line = next(ln for ln in ax.lines if ln.get_label() == "nash_md")
    assert np.allclose(np.column_stack(line.get_data()), to_simplex(traj))
    png, svg = save_figure(fig, tmp_path / "simplex")
    assert Path(png).stat().st_size > 5_000 and "scissors" in Path(svg).read_text()
    with pytest.raises(InputError, match="3 responses"):
        simplex_figure({}, ["a", "b"])
