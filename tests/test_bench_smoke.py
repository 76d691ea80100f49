"""The benchmark runner's smoke mode produces well-formed results (docs/benchmarks.md).

Asserts the shape of ``benchmarks/results/*.json`` only — never anything about time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # runs both benchmark scripts end to end (~30 s)
def test_bench_smoke_writes_well_formed_json(tmp_path: Path) -> None:
    out_dir = tmp_path / "results"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "run.py"),
        "--smoke",
        "--skip-jax",
        "--tabular-size",
        "30",
        "--out-dir",
        str(out_dir),
        "--assets-dir",
        str(tmp_path / "assets"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    log = tmp_path / "assets" / "tiny-smoke.log"
    detail = proc.stdout[-2000:] + proc.stderr[-2000:]
    if log.exists():
        detail += log.read_text()[-3000:]
    assert proc.returncode == 0, detail
    result = json.loads((out_dir / "tiny-smoke.json").read_text())

    assert result["failures"] == []
    assert result["workload"]["steps"] == 2
    assert result["order"] == ["nlhf_torch"]
    s = result["summary"]["nlhf_torch"]
    for key in ("median_step_seconds", "generated_tokens_per_s", "peak_rss_mb"):
        assert isinstance(s[key], float) and s[key] > 0
    w = result["workload"]
    assert s["generated_tokens_per_step"] == 2 * w["batch_size"] * w["max_new_tokens"]
    (run,) = result["runs"]["nlhf_torch"]
    assert len(run["step_seconds"]) == 2
    assert result["ratios"] == {}  # no baseline in smoke mode

    tab = result["tabular"]["results"]
    assert {"scipy_linprog", "nlhf_maximal_lottery"} <= set(tab)
    for row in tab.values():
        assert row["duality_gap"] <= 1e-8
        assert row["support"] >= 1
