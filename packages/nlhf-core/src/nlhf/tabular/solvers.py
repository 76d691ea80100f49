"""Exact equilibria of a preference game.

- :func:`regularized_nash`: the τ-regularised NE π*_τ = softmax(log μ + P π*_τ / τ)
  (paper §3/§5), to duality gap ≤ 1e-12.
- :func:`maximal_lottery`: the unregularised NE (τ = 0), a maximal lottery: a π with
  P(y ≻ π) ≤ ½ for every y, by linear programming (scipy HiGHS).

**Why Newton, not the fixed-point iteration.** π ↦ softmax(log μ + Pπ/τ) is a
contraction only when τ is large (its Lipschitz constant grows like 1/τ), so plain
iteration diverges or cycles for small τ. We solve instead for the centred payoff
vector u = Aπ/τ, A = P − ½11ᵀ (antisymmetric; Aπ = Pπ − ½ on the simplex, so
softmax(log μ + u) is unchanged, and dropping the constant ½/τ keeps u small and
accurate for tiny τ; |u_y| ≤ 1/(2τ)):

    Φ(u) = u − A softmax(log μ + u)/τ = 0,   J(u) = I − A D(s)/τ,   D(s) = diag(s) − s sᵀ,

with s = softmax(log μ + u), by damped Newton with an Armijo line search on ½‖Φ‖².
J is never singular: AD has the eigenvalues of D^{1/2} A D^{1/2}, which are purely
imaginary, so the eigenvalues of J are 1 − iλ/τ ≠ 0. Newton directions are therefore always descent directions of
½‖Φ‖² (its slope along Δ = −J⁻¹Φ is −‖Φ‖²) and the sublevel sets are bounded
(Φ(u) = u + bounded), so damped Newton converges globally, quadratically near π*_τ.
Probabilities are formed in log space, so tiny τ does not overflow.

**Progress.** Games of at least :data:`PROGRESS_MIN_RESPONSES` responses report on stderr
(or to a ``progress`` callback): each Newton step with its residual and time (a step costs
one n×n solve, O(n³)), and, for the maximal lottery, an estimate of the LP's time before it
starts — the time of the same LP on the leading :data:`LP_CALIBRATION_SIZE`-response
sub-game (a valid game: a principal submatrix keeps P + Pᵀ = 1) scaled by
(n / m)^:data:`LP_TIME_EXPONENT` — then a line every :data:`HEARTBEAT_SECONDS` while HiGHS
runs. Measured on 2 CPU cores: n = 500 takes 2 s, n = 1000 takes 27 s (so n = 5000 takes
hours).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
from scipy.optimize import OptimizeResult, linprog

from nlhf.errors import NLHFError
from nlhf.tabular.metrics import duality_gap, exploitability

GAP_TOL = 1e-12
PROGRESS_MIN_RESPONSES = 500
"""Games at least this large report progress by default (their solve takes seconds or more)."""
LP_CALIBRATION_SIZE = 200
LP_TIME_EXPONENT = 3.5
"""Growth of the maximal-lottery LP's time with n (HiGHS simplex on a dense game: measured
×13 from n = 500 to 1000 on 2 cores, i.e. about n^3.7; 3.5 keeps the estimate a lower end)."""
HEARTBEAT_SECONDS = 15.0

Progress = Callable[[str], None]
"""Receives one human-readable progress line."""


def _stderr(line: str) -> None:
    print(f"nlhf: {line}", file=sys.stderr, flush=True)


def _reporter(progress: Progress | Literal["auto"] | None, n: int) -> Progress | None:
    if progress == "auto":
        return _stderr if n >= PROGRESS_MIN_RESPONSES else None
    return progress


def format_duration(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3.5 min``, ``2.1 h``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@contextmanager
def _heartbeat(report: Progress | None, what: str, every: float) -> Iterator[None]:
    """Report ``what`` every ``every`` seconds until the block ends, then its duration."""
    if report is None:
        yield
        return
    stop = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not stop.wait(every):
            report(f"{what}: still running after {format_duration(time.monotonic() - start)}")

    thread = threading.Thread(target=beat, name="nlhf-solve-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        report(f"{what}: done in {format_duration(time.monotonic() - start)}")


def _policy(log_mu: np.ndarray, u: np.ndarray) -> np.ndarray:
    """softmax(log μ + u), max-shifted."""
    e = np.exp(log_mu + u - np.max(log_mu + u))
    return e / e.sum()


def regularized_nash(
    P: np.ndarray,
    mu: np.ndarray,
    tau: float,
    *,
    tol: float = GAP_TOL,
    max_iter: int = 200,
    progress: Progress | Literal["auto"] | None = "auto",
) -> np.ndarray:
    """π*_τ = softmax(log μ + P π*_τ / τ) by damped Newton on u = (P − ½)π/τ (module docstring).

    Stops when the duality gap is ≤ ``tol`` after a Newton step of relative size ≤ 1e-13
    (or when the residual stops decreasing in float64); raises :class:`NLHFError` if the gap
    is still above ``tol`` after ``max_iter`` Newton steps. ``progress`` receives a line per
    Newton step (``"auto"``: stderr for games of ≥ :data:`PROGRESS_MIN_RESPONSES` responses).
    """
    if tau <= 0:
        raise ValueError("regularized_nash needs tau > 0; use maximal_lottery for tau = 0")
    P = np.asarray(P, dtype=np.float64)
    A = P - 0.5
    log_mu = np.log(np.asarray(mu, dtype=np.float64))
    n = P.shape[0]
    report = _reporter(progress, n)
    eye = np.eye(n)

    def residual(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = _policy(log_mu, u)
        return u - (A @ s) / tau, s

    u = (A @ np.exp(log_mu)) / tau
    phi, s = residual(u)
    merit = 0.5 * float(phi @ phi)
    if report is not None:
        report(
            f"regularised NE of {n} responses (tau = {tau:g}) by Newton: one {n}×{n} solve "
            f"per step, quadratic convergence (usually < 30 steps, at most {max_iter})"
        )
    start = time.monotonic()
    for iteration in range(max_iter):
        if merit == 0.0:
            break
        AD = A * s[None, :] - np.outer(A @ s, s)  # A·(diag(s) − s sᵀ) in O(n²)
        J = eye - AD / tau
        delta = np.linalg.solve(J, -phi)
        step = 1.0
        while True:
            u_new = u + step * delta
            phi_new, s_new = residual(u_new)
            merit_new = 0.5 * float(phi_new @ phi_new)
            if merit_new <= (1.0 - 1e-4 * step) * merit or step < 1e-12:
                break
            step *= 0.5
        if merit_new >= merit:  # no further progress possible in float64
            break
        moved = float(np.max(np.abs(u_new - u)))
        u, phi, s, merit = u_new, phi_new, s_new, merit_new
        if report is not None:
            per_step = (time.monotonic() - start) / (iteration + 1)
            report(
                f"regularised NE: step {iteration + 1}, residual {np.sqrt(2 * merit):.2e}, "
                f"{format_duration(per_step)} per step"
            )
        # quadratic convergence: after a step this small the error is ~ its square
        if moved <= 1e-13 * max(1.0, float(np.max(np.abs(u)))) and (
            duality_gap(P, np.exp(log_mu), s, tau) <= tol
        ):
            break
    gap = duality_gap(P, np.exp(log_mu), s, tau)
    if not gap <= tol:
        raise NLHFError(
            f"regularized_nash did not reach duality gap {tol:g} (got {gap:.3g}) with "
            f"tau = {tau:g}; the preference matrix may be badly scaled"
        )
    return s


def _lottery_lp(P: np.ndarray) -> OptimizeResult:
    n = P.shape[0]
    c = np.zeros(n + 1)
    c[-1] = 1.0
    A_ub = np.hstack([P, -np.ones((n, 1))])
    A_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
    bounds = [(0.0, None)] * n + [(None, None)]
    return linprog(
        c, A_ub=A_ub, b_ub=np.zeros(n), A_eq=A_eq, b_eq=[1.0], bounds=bounds, method="highs"
    )


def estimate_lottery_seconds(P: np.ndarray) -> float:
    """Estimated seconds of :func:`maximal_lottery`'s LP on this machine: the measured time
    on the leading m×m sub-game (m = :data:`LP_CALIBRATION_SIZE`) × (n/m)^LP_TIME_EXPONENT."""
    P = np.asarray(P, dtype=np.float64)
    n = P.shape[0]
    m = min(n, LP_CALIBRATION_SIZE)
    start = time.monotonic()
    _lottery_lp(P[:m, :m])
    return (time.monotonic() - start) * (n / m) ** LP_TIME_EXPONENT


def maximal_lottery(
    P: np.ndarray, *, polish: bool = True, progress: Progress | Literal["auto"] | None = "auto"
) -> np.ndarray:
    """A maximal lottery (von Neumann winner): min_π max_y (Pπ)_y s.t. π ∈ Δ, by LP
    (scipy ``linprog(method="highs")``). The optimal value is ½ for every P with
    P + Pᵀ = 1 (symmetric zero-sum game). The LP over variables (π, v) is

        minimise v   s.t.  Pπ − v·1 ≤ 0,  1ᵀπ = 1,  π ≥ 0.

    With ``polish``, the LP solution is refined on its support S by solving
    P_SS π_S = ½·1, 1ᵀπ_S = 1 (least squares) and kept if it is feasible and no more
    exploitable (removes HiGHS's ~1e-9 tolerance). If the maximal lottery is not unique
    (e.g. ties) one of them is returned. ``progress`` receives the LP's estimated time, a
    line every :data:`HEARTBEAT_SECONDS` while it runs, and its duration (``"auto"``: stderr
    for games of ≥ :data:`PROGRESS_MIN_RESPONSES` responses).
    """
    P = np.asarray(P, dtype=np.float64)
    n = P.shape[0]
    report = _reporter(progress, n)
    what = f"maximal lottery of {n} responses (HiGHS linear program)"
    if report is not None:
        estimate = estimate_lottery_seconds(P)
        report(
            f"{what}: estimated {format_duration(estimate)} on this machine (from a "
            f"{min(n, LP_CALIBRATION_SIZE)}-response sub-game, time ∝ n^{LP_TIME_EXPONENT:g})"
        )
    with _heartbeat(report, what, HEARTBEAT_SECONDS):
        res = _lottery_lp(P)
    if res.status != 0:
        raise NLHFError(f"maximal lottery LP failed: {res.message}")
    pi = np.clip(res.x[:n], 0.0, None)
    pi /= pi.sum()
    if not polish:
        return pi
    support = np.flatnonzero(pi > 1e-9)
    A = np.vstack([P[np.ix_(support, support)], np.ones((1, support.size))])
    b = np.concatenate([np.full(support.size, 0.5), [1.0]])
    sol, *_ = np.linalg.lstsq(A, b, rcond=None)
    if np.all(sol >= 0):
        cand = np.zeros(n)
        cand[support] = sol
        cand /= cand.sum()
        if exploitability(P, cand) <= exploitability(P, pi):
            return cand
    return pi
