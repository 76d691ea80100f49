"""Evaluation: win-rate matrices P(π_column ≻ π_row) between policies (paper Table 1),
exact for tabular policies (:mod:`~nlhf.evaluation.tabular`), with confidence intervals
for sampled ones (:mod:`~nlhf.evaluation.winrate`), plots (:mod:`~nlhf.evaluation.plots`,
imports matplotlib) and the HTML run report (:mod:`~nlhf.evaluation.report`).
"""

from nlhf.evaluation.winrate import (
    WinRateMatrix,
    bootstrap_ci,
    cell_interval,
    clopper_pearson,
    exact_matrix,
    matrix_from_outcomes,
    read_winrate,
)

__all__ = [
    "WinRateMatrix",
    "bootstrap_ci",
    "cell_interval",
    "clopper_pearson",
    "exact_matrix",
    "matrix_from_outcomes",
    "read_winrate",
]
