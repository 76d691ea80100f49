"""Win-rate matrices between policies (the NLHF paper's Table 1, arXiv:2312.00886 §8).

Convention (as in the paper's Table 1): ``matrix[i, j] = P(π_j ≻ π_i)``, the probability
that the **column** policy beats the **row** policy, so a column with large values is a
strong policy. Preferences are antisymmetric (P(y≻y') + P(y'≻y) = 1), hence

    matrix + matrixᵀ = 1,   diag(matrix) = ½.

Each cell is the mean of ``n`` comparison outcomes o_k ∈ [0, 1] (o_k = P(y_j ≻ y_i | x)
for a sampled pair). Its confidence interval depends on the outcomes:

- **binary** outcomes (every o_k ∈ {0, 1}): the exact **Clopper–Pearson** interval
  [B⁻¹(α/2; s, n−s+1), B⁻¹(1−α/2; s+1, n−s)] with s = Σ o_k and B⁻¹ the Beta quantile
  (Clopper & Pearson 1934). Its coverage is ≥ the nominal level for i.i.d. Bernoulli(p)
  outcomes; for independent outcomes with different p_k (fixed prompts) it is
  conservative (the variance of a Poisson-binomial is ≤ the binomial's).
- **soft** outcomes (probabilities): the percentile **bootstrap** (Efron 1979): the
  α/2 and 1 − α/2 quantiles of the means of ``resamples`` resamples with replacement
  (seeded). When ``groups`` (e.g. the prompt of each comparison) is given, whole groups
  are resampled (cluster bootstrap), which keeps correlated comparisons together.

Cells on the diagonal are ½ exactly with ``n = 0``; a cell with no comparisons is NaN.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.stats import beta as beta_dist

from nlhf.errors import InputError
from nlhf.runio import atomic_write_text, write_json

CIMethod = Literal["clopper_pearson", "bootstrap", "exact"]


# ------------------------------------------------------------------ intervals
def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval [B⁻¹(α/2; s, n−s+1), B⁻¹(1−α/2; s+1, n−s)] (α = 1 − confidence).

    Source: Clopper & Pearson (1934), Biometrika 26(4); the bounds are 0 at s = 0 and 1 at
    s = n.
    """
    _check_confidence(confidence)
    if n <= 0:
        raise InputError(f"clopper_pearson: need n ≥ 1 comparisons; got n={n}")
    if not 0 <= successes <= n:
        raise InputError(f"clopper_pearson: successes must lie in [0, n={n}]; got {successes}")
    alpha = 1.0 - confidence
    low = 0.0 if successes == 0 else float(beta_dist.ppf(alpha / 2, successes, n - successes + 1))
    high = (
        1.0 if successes == n else float(beta_dist.ppf(1 - alpha / 2, successes + 1, n - successes))
    )
    return low, high


def bootstrap_ci(
    outcomes: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    *,
    resamples: int = 2000,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``outcomes`` (Efron 1979).

    ``groups`` (same length as ``outcomes``): resample whole groups (cluster bootstrap),
    each resampled mean being Σ(group sums)/Σ(group sizes).
    """
    _check_confidence(confidence)
    x = np.asarray(outcomes, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise InputError("bootstrap_ci: no outcomes")
    if resamples < 1:
        raise InputError(f"bootstrap_ci: resamples must be ≥ 1; got {resamples}")
    rng = np.random.default_rng(seed)
    alpha = 1.0 - confidence
    if groups is None:
        idx = rng.integers(0, x.size, size=(resamples, x.size))
        means = x[idx].mean(axis=1)
    else:
        g = np.asarray(groups)
        if g.shape[0] != x.size:
            raise InputError(f"bootstrap_ci: groups has {g.shape[0]} entries for {x.size} outcomes")
        _, inverse = np.unique(g, return_inverse=True)
        sums = np.bincount(inverse, weights=x)
        sizes = np.bincount(inverse).astype(np.float64)
        idx = rng.integers(0, sums.size, size=(resamples, sums.size))
        means = sums[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def is_binary(outcomes: np.ndarray) -> bool:
    """Whether every outcome is exactly 0 or 1 (then Clopper–Pearson applies)."""
    return bool(np.all((outcomes == 0.0) | (outcomes == 1.0)))


def cell_interval(
    outcomes: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    *,
    method: Literal["auto", "clopper_pearson", "bootstrap"] = "auto",
    resamples: int = 2000,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> tuple[float, float, str]:
    """(low, high, method) for one cell: Clopper–Pearson for binary outcomes, else the
    bootstrap (``method='auto'``, module docstring)."""
    x = np.asarray(outcomes, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise InputError("cell_interval: no outcomes")
    if np.any(~np.isfinite(x)) or np.any(x < 0) or np.any(x > 1):
        raise InputError("cell_interval: outcomes must be probabilities in [0, 1]")
    chosen = method
    if method == "auto":
        chosen = "clopper_pearson" if is_binary(x) else "bootstrap"
    if chosen == "clopper_pearson":
        if not is_binary(x):
            raise InputError("cell_interval: Clopper–Pearson needs binary (0/1) outcomes")
        low, high = clopper_pearson(int(x.sum()), x.size, confidence)
    elif chosen == "bootstrap":
        low, high = bootstrap_ci(x, confidence, resamples=resamples, seed=seed, groups=groups)
    else:
        raise InputError(f"cell_interval: unknown method {method!r}")
    return low, high, chosen


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence: must lie in (0, 1); got {confidence}")


# ---------------------------------------------------------------------- matrix
@dataclass
class WinRateMatrix:
    """``mean[i, j] = P(π_j ≻ π_i)`` (column beats row) with per-cell ``n`` comparisons
    and a ``confidence`` interval [``low``, ``high``] computed by ``method[i][j]``."""

    policies: list[str]
    mean: np.ndarray
    n: np.ndarray
    low: np.ndarray
    high: np.ndarray
    method: list[list[str]]
    confidence: float = 0.95
    per_policy: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = len(self.policies)
        if k == 0:
            raise InputError("a win-rate matrix needs at least one policy")
        if len(set(self.policies)) != k:
            dupes = sorted({p for p in self.policies if self.policies.count(p) > 1})
            raise InputError(f"policy names must be unique; repeated: {', '.join(dupes)}")
        for name in ("mean", "n", "low", "high"):
            arr = np.asarray(getattr(self, name))
            if arr.shape != (k, k):
                raise InputError(f"win-rate {name}: shape {arr.shape}, expected ({k}, {k})")
            setattr(self, name, arr)

    @property
    def size(self) -> int:
        return len(self.policies)

    def antisymmetry_error(self) -> float:
        """max_ij |mean[i, j] + mean[j, i] − 1| (0 for an exact matrix)."""
        m = np.where(np.isnan(self.mean), 0.5, self.mean)
        return float(np.max(np.abs(m + m.T - 1.0)))

    def column_average(self) -> np.ndarray:
        """Mean win-rate of each column policy against the *other* policies."""
        k = self.size
        if k == 1:
            return np.array([0.5])
        off = ~np.eye(k, dtype=bool)
        return np.array([np.nanmean(self.mean[:, j][off[:, j]]) for j in range(k)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``policies``, ``matrix`` (column beats row), ``n``, ``ci_low``,
        ``ci_high``, ``ci_method``, ``confidence``, ``per_policy``, ``meta``."""
        return {
            "convention": "matrix[i][j] = P(policies[j] > policies[i]) (column beats row)",
            "policies": list(self.policies),
            "matrix": _nan_to_none(self.mean),
            "n": self.n.astype(int).tolist(),
            "ci_low": _nan_to_none(self.low),
            "ci_high": _nan_to_none(self.high),
            "ci_method": self.method,
            "confidence": self.confidence,
            "column_average": _nan_to_none(self.column_average()),
            "per_policy": self.per_policy,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WinRateMatrix:
        """Inverse of :meth:`to_dict` (e.g. a ``winrate.json`` read back)."""
        try:

            def arr(key: str) -> np.ndarray:
                return np.array(
                    [[np.nan if v is None else v for v in row] for row in data[key]], dtype=float
                )

            return cls(
                policies=list(data["policies"]),
                mean=arr("matrix"),
                n=np.asarray(data["n"], dtype=int),
                low=arr("ci_low"),
                high=arr("ci_high"),
                method=[list(r) for r in data["ci_method"]],
                confidence=float(data.get("confidence", 0.95)),
                per_policy=dict(data.get("per_policy", {})),
                meta=dict(data.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a win-rate matrix ({type(exc).__name__}: {exc})") from exc

    def to_csv(self) -> str:
        """Long format, one row per ordered pair: ``row_policy, column_policy, winrate``
        (= P(column ≻ row)), ``n``, ``ci_low``, ``ci_high``, ``ci_method``."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(
            ["row_policy", "column_policy", "winrate", "n", "ci_low", "ci_high", "ci_method"]
        )
        for i, row in enumerate(self.policies):
            for j, col in enumerate(self.policies):
                writer.writerow(
                    [
                        row,
                        col,
                        _fmt(self.mean[i, j]),
                        int(self.n[i, j]),
                        _fmt(self.low[i, j]),
                        _fmt(self.high[i, j]),
                        self.method[i][j],
                    ]
                )
        return buf.getvalue()

    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write ``winrate.csv`` and ``winrate.json`` under ``directory`` (atomically)."""
        directory = Path(directory)
        csv_path, json_path = directory / "winrate.csv", directory / "winrate.json"
        atomic_write_text(csv_path, self.to_csv())
        write_json(json_path, self.to_dict())
        return csv_path, json_path


def _fmt(value: float) -> str:
    return "" if math.isnan(float(value)) else repr(float(value))


def _nan_to_none(a: np.ndarray) -> Any:
    if a.ndim == 1:
        return [None if math.isnan(v) else float(v) for v in a]
    return [[None if math.isnan(v) else float(v) for v in row] for row in a]


def read_winrate(path: Path) -> WinRateMatrix:
    """Read ``winrate.json`` (a file, or a directory holding one)."""
    import json

    path = Path(path)
    if path.is_dir():
        path = path / "winrate.json"
    if not path.is_file():
        raise InputError(f"{path}: no winrate.json here")
    return WinRateMatrix.from_dict(json.loads(path.read_text(encoding="utf-8")))


def exact_matrix(policies: Sequence[str], values: np.ndarray) -> WinRateMatrix:
    """A matrix of exact values (no sampling): CI = [value, value], ``n = 0``, method
    ``exact``. ``values[i, j] = P(π_j ≻ π_i)``."""
    v = np.asarray(values, dtype=np.float64)
    k = len(policies)
    return WinRateMatrix(
        policies=list(policies),
        mean=v,
        n=np.zeros((k, k), dtype=int),
        low=v.copy(),
        high=v.copy(),
        method=[["exact"] * k for _ in range(k)],
    )


def matrix_from_outcomes(
    policies: Sequence[str],
    outcomes: dict[tuple[int, int], np.ndarray],
    *,
    confidence: float = 0.95,
    groups: dict[tuple[int, int], np.ndarray] | None = None,
    method: Literal["auto", "clopper_pearson", "bootstrap"] = "auto",
    resamples: int = 2000,
    seed: int = 0,
    symmetric: bool = True,
) -> WinRateMatrix:
    """Build a matrix from comparison outcomes.

    ``outcomes[(i, j)]``: outcomes o_k = P(y_j ≻ y_i) of column policy j against row
    policy i. With ``symmetric=True`` only i < j (or either order) need be given and the
    other cell is filled by antisymmetry: mean' = 1 − mean, CI' = [1 − high, 1 − low]
    (the same comparisons seen from the other side). With ``symmetric=False`` every
    off-diagonal cell must be given (independently estimated cells).
    """
    k = len(policies)
    mean = np.full((k, k), np.nan)
    low = np.full((k, k), np.nan)
    high = np.full((k, k), np.nan)
    n = np.zeros((k, k), dtype=int)
    meth = [["none"] * k for _ in range(k)]
    for i in range(k):
        mean[i, i] = low[i, i] = high[i, i] = 0.5
        meth[i][i] = "exact"
    for (i, j), values in outcomes.items():
        if not (0 <= i < k and 0 <= j < k) or i == j:
            raise InputError(f"outcomes: bad cell ({i}, {j}) for {k} policies")
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        if x.size == 0:
            continue
        g = None if groups is None else groups.get((i, j))
        lo, hi, used = cell_interval(
            x, confidence, method=method, resamples=resamples, seed=seed + i * k + j, groups=g
        )
        mean[i, j], low[i, j], high[i, j], n[i, j], meth[i][j] = x.mean(), lo, hi, x.size, used
        if symmetric:
            mean[j, i], low[j, i], high[j, i] = 1.0 - x.mean(), 1.0 - hi, 1.0 - lo
            n[j, i], meth[j][i] = x.size, used
    result = WinRateMatrix(list(policies), mean, n, low, high, meth, confidence)
    return result
