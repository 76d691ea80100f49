"""``benchmarks/run.py --workload real --smoke`` produces a well-formed result with a
roofline (docs/benchmarks.md, "Real scale"). Shapes and consistency only — never time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # builds a tiny SmolLM2-shaped model and runs one nlhf step (~30-60 s)
def test_real_smoke_writes_roofline_and_phases(tmp_path: Path) -> None:
    out_dir = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--workload", "real", "--smoke"]
    cmd += ["--methods", "nlhf_torch", "--out-dir", str(out_dir)]
    cmd += ["--assets-dir", str(tmp_path / "assets")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    log = tmp_path / "assets" / "real-smoke.log"
    detail = proc.stdout[-2000:] + proc.stderr[-2000:]
    if log.exists():
        detail += log.read_text()[-3000:]
    assert proc.returncode == 0, detail
    result = json.loads((out_dir / "real-smoke.json").read_text())

    assert result["failures"] == []
    w = result["workload"]
    assert (w["steps"], w["batch_size"], w["max_new_tokens"]) == (1, 2, 4)
    assert w["prompt_source"] == "hh_rlhf"
    s = result["summary"]["nlhf_torch"]
    assert s["generated_tokens_per_step"] == 2 * w["batch_size"] * w["max_new_tokens"]
    gen, upd = s["median_generation_seconds"], s["median_update_seconds"]
    assert gen > 0 and upd > 0
    assert gen + upd == pytest.approx(s["median_step_seconds"], rel=1e-9)  # one step: exact
    roof = result["roofline"]
    assert len(roof["peaks"]) == 2  # measured at the start and at the end
    assert roof["peak_flops"] == max(p["matmul_flops"] for p in roof["peaks"])
    assert 0 < roof["prompt_len"] <= w["max_prompt_tokens"]
    for phase, seconds in (("generation", gen), ("update", upd)):
        r = roof[phase]
        assert r["limit_seconds"] == max(r["flop_seconds"], r["byte_seconds"])
        assert s["roofline_fraction"][phase] == pytest.approx(r["limit_seconds"] / seconds)
    step = roof["step"]["limit_seconds"]
    assert step == roof["generation"]["limit_seconds"] + roof["update"]["limit_seconds"]
    assert s["roofline_fraction"]["step"] == pytest.approx(step / s["median_step_seconds"])
    assert set(result["ratios"]) == {"roofline_generation", "roofline_update", "roofline_step"}
