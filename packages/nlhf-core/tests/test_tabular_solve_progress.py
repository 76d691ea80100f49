"""Progress and time estimates of the exact solvers on large games (``nlhf solve`` on
thousands of responses runs for minutes to hours: it says so, and keeps saying it runs)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from nlhf.tabular import solvers
from nlhf.tabular.games import random_game
from nlhf.tabular.solvers import maximal_lottery, regularized_nash


def test_newton_reports_every_step() -> None:
    P = random_game(12, seed=3).matrix
    lines: list[str] = []
    pi = regularized_nash(P, np.full(12, 1 / 12), 0.1, progress=lines.append)
    assert lines[0].startswith("regularised NE of 12 responses (tau = 0.1) by Newton")
    steps = [line for line in lines if line.startswith("regularised NE: step ")]
    assert steps and steps[0].startswith("regularised NE: step 1, residual ")
    assert len(steps) == len(lines) - 1
    # reporting does not change the answer
    np.testing.assert_array_equal(pi, regularized_nash(P, np.full(12, 1 / 12), 0.1, progress=None))


def test_lottery_reports_an_estimate_then_its_duration() -> None:
    P = random_game(30, seed=4).matrix
    lines: list[str] = []
    pi = maximal_lottery(P, progress=lines.append)
    assert lines[0].startswith("maximal lottery of 30 responses (HiGHS linear program): estimated ")
    assert "from a 30-response sub-game" in lines[0]
    assert lines[-1].startswith("maximal lottery of 30 responses (HiGHS linear program): done in ")
    np.testing.assert_array_equal(pi, maximal_lottery(P, progress=None))


def test_small_games_are_quiet_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    P = random_game(10, seed=5).matrix
    maximal_lottery(P)
    regularized_nash(P, np.full(10, 0.1), 0.5)
    assert capsys.readouterr().err == ""
    assert solvers.PROGRESS_MIN_RESPONSES > 10


def test_heartbeat_while_a_long_step_runs() -> None:
    lines: list[str] = []
    with solvers._heartbeat(lines.append, "work", every=0.01):
        time.sleep(0.2)
    assert any(line.startswith("work: still running after ") for line in lines[:-1])
    assert lines[-1].startswith("work: done in ")


def test_estimate_scales_the_calibration_sub_game(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    clock = iter([0.0, 2.0])
    monkeypatch.setattr(solvers, "_lottery_lp", lambda P: seen.append(P.shape[0]))
    monkeypatch.setattr(solvers.time, "monotonic", lambda: next(clock))
    P = random_game(400, seed=6).matrix
    estimate = solvers.estimate_lottery_seconds(P)
    assert seen == [solvers.LP_CALIBRATION_SIZE]
    # the same float64 expression: bit-exact
    assert estimate == 2.0 * (400 / solvers.LP_CALIBRATION_SIZE) ** solvers.LP_TIME_EXPONENT


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.44, "0.4 s"), (12.2, "12 s"), (210, "3.5 min"), (7560, "2.1 h")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert solvers.format_duration(seconds) == text
