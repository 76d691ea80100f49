"""``python -m nlhf_quickstart`` end to end: Nash-MD-PG approaches the regularised NE of
the population game while RLHF-PG collapses onto one answer (Munos et al., §7–8)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from nlhf_quickstart.__main__ import main

SPEC = Path(__file__).resolve().parents[3] / "specs" / "quickstart.yaml"


@pytest.mark.slow
def test_quickstart_nash_approaches_ne_while_rlhf_collapses(
    quickstart_overrides: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = [arg for item in quickstart_overrides for arg in ("--set", item)]
    assert main(["--spec", str(SPEC), "--out", str(tmp_path), *sets]) == 0
    report = json.loads((tmp_path / "summary.json").read_text())
    nash, rlhf = report["nash"], report["rlhf"]
    # Nash-MD-PG moves toward π*_τ; RLHF-PG concentrates on one answer, away from it
    assert nash["tv_policy_to_nash"] < 0.5 * nash["tv_reference_to_nash"]
    assert rlhf["max_answer_prob"] > 0.8
    assert rlhf["tv_policy_to_nash"] > 2 * nash["tv_policy_to_nash"]
    for name in ("nash_md_pg", "rlhf_pg"):
        assert json.loads((tmp_path / name / "summary.json").read_text())["algorithm"] == name
    printed = capsys.readouterr().out
    assert f"TV(Nash-MD-PG, NE)      {nash['tv_policy_to_nash']:.3f}" in printed
    assert f"TV(RLHF-PG, NE)         {rlhf['tv_policy_to_nash']:.3f}" in printed
    if os.environ.get("NLHF_PRINT_QUICKSTART"):
        print(printed)


def test_main_reports_a_bad_spec_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--spec", str(SPEC), "--set", "training.steps=0"]) == 2
    err = capsys.readouterr().err
    assert "training.steps" in err and "Traceback" not in err
    assert main(["--spec", str(tmp_path / "missing.yaml")]) == 2
