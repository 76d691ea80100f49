"""docs/tutorial.md says every command on it was run as written and shows its real output:
run each ```bash block in order (under a temporary directory instead of runs/tutorial/)
and compare its output with the ```text block after it.

Lines are compared after dropping table borders and runs of spaces (their widths follow
the paths) and timings. Words must be equal. Numbers of the tabular blocks (exact
computations in float64) must agree to one unit in the last printed digit plus the
float64 model-scope tolerance; lines with numbers of the blocks that read the quickstart
run (sampled, on a float32 transformer, so machine-dependent) are not compared."""

from __future__ import annotations

import os
import re
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from nlhf.testing import tolerance

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
TIMING = ("seconds", "tokens_per_s")  # wall clock: differs on every run
BLOCK = re.compile(r"```bash\n(.*?)```\s*(?:```text\n(.*?)```)?", re.S)
NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
FIXED = re.compile(r"step-\d+|exit code \d|spec_version: 1")  # integers that are words


def _lines(text: str, sampled: bool) -> list[str]:
    lines = []
    for line in text.splitlines():
        line = " ".join(re.sub(r"[\u2500-\u257f]", " ", line).split())
        if not line or any(key in line for key in TIMING):
            continue
        if line.startswith("quickstart: building"):  # first use on a fresh clone only
            continue
        if sampled and re.search(r"\d", FIXED.sub("", line)):
            continue
        lines.append(line)
    return lines


def _same_line(actual: str, shown: str) -> bool:
    a_tokens, s_tokens = actual.split(), shown.split()
    if len(a_tokens) != len(s_tokens):
        return False
    tol = tolerance("float64", "model")
    for a, s in zip(a_tokens, s_tokens, strict=True):
        if NUMBER.match(s) and NUMBER.match(a):
            unit = float(Decimal(1).scaleb(Decimal(s).as_tuple().exponent))  # last digit
            if abs(float(a) - float(s)) > unit + tol.atol + tol.rtol * abs(float(s)):
                return False
        elif a != s:
            return False
    return True


@pytest.mark.slow
@pytest.mark.torch
def test_tutorial_commands_print_what_the_page_shows(tmp_path: Path) -> None:
    if not (ROOT / ".venv" / "bin" / "nlhf").exists():
        pytest.skip("needs the README install (.venv/bin/nlhf)")
    where = str(tmp_path / "tutorial")
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", "COLUMNS": "200"}
    blocks = BLOCK.findall(TUTORIAL.read_text(encoding="utf-8"))
    assert len(blocks) >= 9, "the tutorial's ```bash blocks"
    for command, shown in blocks:
        proc = subprocess.run(
            ["bash", "-c", command.replace("runs/tutorial", where)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}"
        sampled = "quickstart" in command
        actual = _lines(proc.stdout.replace(where, "runs/tutorial"), sampled)
        expected = _lines(shown, sampled)
        assert len(actual) == len(expected), f"{command}\n{actual}\n!=\n{expected}"
        for a, s in zip(actual, expected, strict=True):
            assert _same_line(a, s), f"docs/tutorial.md is out of date for\n{command}\n{a}\n!=\n{s}"
