"""`nlhf report RUN_DIR` (docs/evaluation.md): a self-contained HTML page with embedded plots."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
from nlhf.errors import InputError
from nlhf.evaluation.report import build_report
from nlhf.evaluation.winrate import matrix_from_outcomes
from nlhf.spec.load import load_spec_text

IMG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in IMG.findall(page)]


def test_report_of_a_tabular_run(tmp_path: Path) -> None:
    from nlhf.tabular.runner import train_spec

    spec = load_spec_text(
        f"""
spec_version: 1
task: nash
preference: {{name: tabular, game: bt3}}
algorithm: {{name: nash_md, tau: 0.1, steps: 120}}
output: {{dir: {tmp_path}}}
"""
    )
    summary = train_spec(spec, tmp_path, progress=False)
    path = build_report(tmp_path)
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    images = _images(page)
    assert len(images) == 2  # training curves + simplex trajectory
    assert all(img.startswith(b"\x89PNG\r\n\x1a\n") and len(img) > 5000 for img in images)
    assert f"{summary['duality_gap']:.6g}" in page
    assert "<td>algorithm</td><td>nash_md</td>" in page
    assert (tmp_path / "plots" / "simplex.svg").is_file()
    assert (tmp_path / "plots" / "training_curves.png").is_file()
    assert 'src="plots/' not in page and "<link" not in page  # nothing external


def test_report_of_an_evaluation_via_cli(tmp_path: Path) -> None:
    from nlhf.cli import get_app
    from typer.testing import CliRunner

    m = matrix_from_outcomes(["alpha", "beta"], {(0, 1): np.array([1.0, 1.0, 1.0, 0.0])})
    m.per_policy = {"alpha": {"mean_length": 3.25}, "beta": {"mean_length": 7.5}}
    m.write(tmp_path)
    (tmp_path / "summary.json").write_text(
        json.dumps({"task": "evaluate", "policies": ["alpha", "beta"]})
    )
    out = tmp_path / "r.html"
    result = CliRunner().invoke(get_app(plugins=False), ["report", str(tmp_path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert len(_images(page)) == 1
    assert "<th>alpha</th>" in page and "<th>beta</th>" in page
    assert "0.75 [" in page and "3.25" in page and "7.5" in page
    assert "mean_length" in page


def test_report_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no summary\.json"):
        build_report(tmp_path)
    with pytest.raises(InputError, match="not a directory"):
        build_report(tmp_path / "missing")
    from nlhf.cli import get_app
    from typer.testing import CliRunner

    result = CliRunner().invoke(get_app(plugins=False), ["report", str(tmp_path)])
    assert result.exit_code == 1 and "no summary.json" in result.output
