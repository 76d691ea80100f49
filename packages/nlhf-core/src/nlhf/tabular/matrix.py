"""Validation of preference matrices and reference policies (validate once, at the front).

Contract: ``matrix[i][j] = P(y_i ≻ y_j)``; a valid matrix is square with at
least two responses, finite, with entries in [0, 1] and ``P + Pᵀ = 1`` (so the diagonal
is ½). Every error names the offending entry and says how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nlhf.errors import InputError

ANTISYMMETRY_TOL = 1e-9
"""Largest accepted |P_ij + P_ji − 1|."""


def matrix_problem(matrix: object) -> tuple[tuple[int, ...], str] | None:
    """The first violation of the preference contract in ``matrix``, or None.

    Returns ``(entry, detail)``: ``entry`` is ``(i, j)`` for a bad entry (``()`` for the
    shape) and ``detail`` the message that follows ``matrix[i][j]`` (or ``matrix``).
    """
    try:
        P = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return (), (
            ": must be a square list of lists of numbers (rows of equal length); "
            f"could not read it as a matrix ({exc})"
        )
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        return (), (
            f": must be square (matrix[i][j] = P(y_i ≻ y_j) for n responses); got shape {P.shape}"
        )
    n = P.shape[0]
    if n < 2:
        return (), f": needs at least 2 responses; got {n}"
    bad = np.argwhere(~np.isfinite(P))
    if bad.size:
        i, j = (int(k) for k in bad[0])
        return (i, j), f" = {P[i, j]}, must be a finite probability in [0, 1]"
    bad = np.argwhere((P < 0) | (P > 1))
    if bad.size:
        i, j = (int(k) for k in bad[0])
        return (i, j), f" = {P[i, j]:.6g}, must lie in [0, 1] (it is P(y_{i} ≻ y_{j}))"
    dev = np.abs(P + P.T - 1.0)
    bad = np.argwhere(dev > ANTISYMMETRY_TOL)
    if bad.size:
        i, j = (int(k) for k in bad[0])
        if i == j:
            return (i, i), f" = {P[i, i]:.6g}, must be 0.5 (a response ties with itself)"
        return (i, j), (
            f" + matrix[{j}][{i}] = {P[i, j] + P[j, i]:.6g}, must be 1 "
            f"(P(y_i≻y_j) = 1 − P(y_j≻y_i)); set matrix[{j}][{i}] = {1 - P[i, j]:.6g}"
        )
    return None


def validate_matrix(matrix: object, *, where: str = "preference.matrix") -> np.ndarray:
    """Return ``matrix`` as a float64 array after checking the preference contract.

    Raises :class:`nlhf.errors.InputError` naming ``where[i][j]`` for the first bad entry
    (:func:`matrix_problem`).
    """
    problem = matrix_problem(matrix)
    if problem is not None:
        entry, detail = problem
        raise InputError(f"{where}{''.join(f'[{k}]' for k in entry)}{detail}")
    return np.array(matrix, dtype=np.float64)


def validate_reference(
    probs: Sequence[float] | np.ndarray | None, n: int, *, where: str = "reference.probs"
) -> np.ndarray:
    """μ as a float64 array of length ``n``: uniform when ``probs`` is None, else checked to
    be finite, > 0 and to sum to 1 (within 1e-6; renormalised exactly)."""
    if probs is None:
        return np.full(n, 1.0 / n)
    mu = np.asarray(probs, dtype=np.float64)
    if mu.ndim != 1 or mu.shape[0] != n:
        raise InputError(
            f"{where}: has {mu.size} entries but the preference matrix has {n} responses; "
            f"give one probability per response"
        )
    bad = np.flatnonzero(~np.isfinite(mu) | (mu <= 0))
    if bad.size:
        k = bad[0]
        raise InputError(f"{where}[{k}] = {mu[k]}, must be > 0 (KL to μ is infinite otherwise)")
    total = float(mu.sum())
    if abs(total - 1.0) > 1e-6:
        raise InputError(f"{where}: must sum to 1 (got {total:.6g}); normalise it")
    return mu / total
