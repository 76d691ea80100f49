"""Win-rate matrices and their confidence intervals (docs/evaluation.md).

Oracles: closed forms of the Clopper–Pearson bounds at s = 0 and s = n, the binomial
tail identities that define the bounds (scipy.stats.binom, not the Beta quantiles the
code uses), exact coverage sums, and seeded simulations with known p.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from nlhf.errors import InputError
from nlhf.evaluation.winrate import (
    WinRateMatrix,
    bootstrap_ci,
    cell_interval,
    clopper_pearson,
    exact_matrix,
    matrix_from_outcomes,
    read_winrate,
)
from nlhf.testing.tolerances import assert_close
from scipy.stats import binom


def test_clopper_pearson_closed_forms_at_the_edges() -> None:
    n = 10
    # s = 0: [0, 1 − (α/2)^(1/n)];  s = n: [(α/2)^(1/n), 1]
    assert_close(clopper_pearson(0, n), (0.0, 1 - 0.025 ** (1 / n)), "float64")
    assert_close(clopper_pearson(n, n), (0.025 ** (1 / n), 1.0), "float64")
    # a tabulated value, printed to 7 decimals (± ½ unit)
    assert clopper_pearson(0, 10)[1] == pytest.approx(0.3084971, abs=0.5e-7)


@pytest.mark.parametrize(("s", "n"), [(1, 10), (7, 20), (50, 100), (3, 4)])
def test_clopper_pearson_solves_the_binomial_tail_equations(s: int, n: int) -> None:
    low, high = clopper_pearson(s, n, 0.95)
    # P(X ≥ s | p = low) = α/2 and P(X ≤ s | p = high) = α/2
    assert_close(binom.sf(s - 1, n, low), 0.025, "float64")
    assert_close(binom.cdf(s, n, high), 0.025, "float64")
    assert low < s / n < high


@pytest.mark.parametrize("n", [5, 20, 60])
@pytest.mark.parametrize("p", [0.03, 0.2, 0.5, 0.77])
def test_clopper_pearson_exact_coverage_is_at_least_nominal(n: int, p: float) -> None:
    coverage = sum(
        binom.pmf(s, n, p)
        for s in range(n + 1)
        if clopper_pearson(s, n)[0] <= p <= clopper_pearson(s, n)[1]
    )
    assert coverage >= 0.95 - 1e-12


def test_clopper_pearson_simulated_coverage_of_1000_cells() -> None:
    rng = np.random.default_rng(7)
    cells, n = 1000, 50
    p = rng.uniform(0.05, 0.95, size=cells)
    outcomes = rng.random((cells, n)) < p[:, None]
    hits = 0
    for k in range(cells):
        low, high, method = cell_interval(outcomes[k].astype(float), 0.95)
        assert method == "clopper_pearson"
        hits += low <= p[k] <= high
    coverage = hits / cells
    tol = 3 * np.sqrt(0.95 * 0.05 / cells)  # 3 binomial standard errors
    assert coverage >= 0.95 - tol
    assert coverage <= 1.0


def test_bootstrap_simulated_coverage_of_soft_outcomes() -> None:
    rng = np.random.default_rng(11)
    cells, n = 600, 150
    a = rng.uniform(0.5, 4.0, size=cells)
    b = rng.uniform(0.5, 4.0, size=cells)
    truth = a / (a + b)  # mean of Beta(a, b)
    hits = 0
    for k in range(cells):
        x = rng.beta(a[k], b[k], size=n)
        low, high, method = cell_interval(x, 0.95, resamples=800, seed=k)
        assert method == "bootstrap"
        hits += low <= truth[k] <= high
    coverage = hits / cells
    tol = 3 * np.sqrt(0.95 * 0.05 / cells)
    assert abs(coverage - 0.95) <= tol + 0.01  # percentile bootstrap: slight undercoverage


def test_cluster_bootstrap_is_wider_for_correlated_groups() -> None:
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(20), 10)
    x = np.clip(rng.normal(0.5, 0.25, size=20)[groups] + rng.normal(0, 0.01, 200), 0, 1)
    plain = bootstrap_ci(x, resamples=2000, seed=0)
    cluster = bootstrap_ci(x, resamples=2000, seed=0, groups=groups)
    assert (cluster[1] - cluster[0]) > 2 * (plain[1] - plain[0])


def test_matrix_from_outcomes_is_antisymmetric_and_counts() -> None:
    outcomes = {
        (0, 1): np.array([1.0, 0.0, 1.0, 1.0]),
        (0, 2): np.array([0.2, 0.4]),
        (1, 2): np.array([0.9]),
    }
    m = matrix_from_outcomes(["a", "b", "c"], outcomes)
    assert m.mean[0, 1] == 0.75 and m.mean[1, 0] == 0.25
    assert m.mean[0, 2] == pytest.approx(0.3) and m.mean[2, 0] == pytest.approx(0.7)
    assert m.n[0, 1] == m.n[1, 0] == 4 and m.n[1, 2] == 1 and m.n[0, 0] == 0
    assert m.method[0][1] == "clopper_pearson" and m.method[0][2] == "bootstrap"
    low, high = clopper_pearson(3, 4)
    assert (m.low[1, 0], m.high[1, 0]) == pytest.approx((1 - high, 1 - low))
    assert np.allclose(m.mean + m.mean.T, 1.0)
    assert np.all(np.diag(m.mean) == 0.5)


def test_csv_and_json_round_trip(tmp_path) -> None:
    m = matrix_from_outcomes(["x", "y"], {(0, 1): np.array([1.0, 1.0, 0.0])})
    m.per_policy = {"x": {"mean_length": 3.0}, "y": {"mean_length": 4.5}}
    csv_path, json_path = m.write(tmp_path)
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert len(rows) == 4
    cell = next(r for r in rows if r["row_policy"] == "x" and r["column_policy"] == "y")
    assert float(cell["winrate"]) == pytest.approx(2 / 3) and cell["n"] == "3"
    assert float(cell["ci_low"]) == pytest.approx(clopper_pearson(2, 3)[0])
    data = json.loads(json_path.read_text())
    assert data["matrix"][1][0] == pytest.approx(1 / 3)
    back = read_winrate(tmp_path)
    assert back.policies == ["x", "y"] and np.allclose(back.mean, m.mean)
    assert back.per_policy["y"]["mean_length"] == 4.5


def test_bad_inputs_raise_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match="n ≥ 1"):
        clopper_pearson(0, 0)
    with pytest.raises(InputError, match="successes"):
        clopper_pearson(5, 4)
    with pytest.raises(InputError, match="confidence"):
        clopper_pearson(1, 4, confidence=1.5)
    with pytest.raises(InputError, match="probabilities"):
        cell_interval([0.2, 1.3])
    with pytest.raises(InputError, match="binary"):
        cell_interval([0.2, 1.0], method="clopper_pearson")
    with pytest.raises(InputError, match="unique"):
        exact_matrix(["a", "a"], np.full((2, 2), 0.5))
    with pytest.raises(InputError, match="shape"):
        WinRateMatrix(
            ["a"],
            np.zeros((2, 2)),
            np.zeros((1, 1)),
            np.zeros((1, 1)),
            np.zeros((1, 1)),
            [["exact"]],
        )
    with pytest.raises(InputError, match=r"no winrate\.json"):
        read_winrate(tmp_path)
