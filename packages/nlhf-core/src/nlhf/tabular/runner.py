"""Run specs on the tabular engine: :func:`solve_spec` (``nlhf solve``) and
:func:`train_spec` (``train`` of a tabular spec, on any backend).

:func:`train_spec` is the one tabular runner: it resolves the spec, computes and checks
the schedules η_t, τ_t (:func:`nlhf.tabular.dynamics.schedules`), writes the outputs and
takes the metrics in NumPy; a backend only supplies the numeric steps (a
:class:`~nlhf.tabular.dynamics.TrajectoryFn` on its own arrays, NumPy's by default).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from nlhf.algorithms.params import _TabularFields
from nlhf.algorithms.schedules import Schedule
from nlhf.errors import NLHFError
from nlhf.tabular import dynamics
from nlhf.tabular.games import game_from_spec
from nlhf.tabular.matrix import validate_reference
from nlhf.tabular.metrics import duality_gap, exploitability, kl_divergence
from nlhf.tabular.solvers import maximal_lottery, regularized_nash

if TYPE_CHECKING:
    from nlhf.spec.models import RunSpec

LOG_RECORDS = 100
"""Default number of metrics records of a run (``algorithm.log_every`` overrides it)."""
CHUNK_STEPS = 4096
"""Steps handed to a backend's :class:`~nlhf.tabular.dynamics.TrajectoryFn` per call
(bounded memory, live progress; a run of ≤ this many steps is one call)."""


@dataclass(frozen=True)
class TabularProblem:
    """A tabular run spec resolved to arrays and numbers."""

    game: str
    P: np.ndarray
    mu: np.ndarray
    labels: tuple[str, ...]
    algorithm: str
    tau: float | Schedule
    tau_final: float
    """τ of the game the run is measured against: τ at the last step (schedules)."""
    eta: float | str
    steps: int
    log_every: int
    magnet_every: int | None = None
    """``mpo``: refresh the magnet to the current policy every this many steps."""


def resolve(spec: RunSpec) -> TabularProblem:
    """Resolve a tabular :class:`~nlhf.spec.RunSpec`; :class:`NLHFError` if it is not one."""
    if not spec.is_tabular:
        name = getattr(spec.preference, "name", None)
        raise NLHFError(
            f"preference.name: {name!r} is not tabular; LLM specs run on --backend torch or "
            "jax (the numpy backend runs `preference: {name: tabular, ...}` only)"
        )
    game = game_from_spec(spec)
    mu = validate_reference(spec.reference.probs, game.size, where="reference.probs")
    algo = spec.algorithm
    magnet_every = None
    eta: float | Literal["auto"]
    if algo is None:  # e.g. `task: evaluate`: solve the unregularised game
        name, tau, eta, steps, log_every = "nash_md", 0.0, "auto", dynamics.DEFAULT_STEPS, None
    else:
        # RunSpec refuses an LLM algorithm with a tabular preference
        assert isinstance(algo, _TabularFields), algo.name
        name, tau, eta = algo.name, getattr(algo, "tau", 0.0), algo.eta
        steps = 1 if name == "best_response" else (algo.steps or dynamics.DEFAULT_STEPS)
        log_every = algo.log_every
        magnet_every = getattr(algo, "magnet_every", None)
    # A refreshed magnet (mpo) moves the regularised game towards the unregularised one.
    tau_final = 0.0 if magnet_every else dynamics.tau_at(tau, steps, steps)
    return TabularProblem(
        game=game.name,
        P=game.matrix,
        mu=mu,
        labels=game.labels,
        algorithm=name,
        tau=tau,
        tau_final=tau_final,
        eta=eta,
        steps=steps,
        log_every=log_every or max(1, steps // LOG_RECORDS),
        magnet_every=magnet_every,
    )


def solution(problem: TabularProblem) -> np.ndarray:
    """π*_τ at τ = ``tau_final`` (the maximal lottery when it is 0)."""
    if problem.tau_final > 0:
        return regularized_nash(problem.P, problem.mu, problem.tau_final)
    return maximal_lottery(problem.P)


def solve_spec(spec: RunSpec) -> dict[str, Any]:
    """The exact equilibria of a tabular spec (``nlhf solve``).

    Returns ``responses``, ``reference`` (μ), ``tau``, ``regularized_nash`` (π*_τ with
    its ``duality_gap``, ``exploitability``, ``kl_to_reference``) and ``maximal_lottery``
    (with its ``exploitability``); when τ = 0 the regularised NE *is* the maximal lottery.
    """
    problem = resolve(spec)
    P, mu, tau = problem.P, problem.mu, problem.tau_final
    ml = maximal_lottery(P)
    pi = regularized_nash(P, mu, tau) if tau > 0 else ml
    return {
        "game": problem.game,
        "responses": list(problem.labels),
        "reference": mu.tolist(),
        "algorithm": problem.algorithm,
        "tau": tau,
        "regularized_nash": {
            "policy": pi.tolist(),
            "duality_gap": duality_gap(P, mu, pi, tau),
            "exploitability": exploitability(P, pi),
            "kl_to_reference": kl_divergence(pi, mu),
        },
        "maximal_lottery": {
            "policy": ml.tolist(),
            "exploitability": exploitability(P, ml),
        },
    }


AVERAGED = ("sppo",)
"""Algorithms whose guarantee is for the average iterate π̄_T = (1/T) Σ_{t<T} π_t: their
records and summary add ``average_*`` metrics of π̄ next to those of the last iterate."""


def _record(
    problem: TabularProblem,
    star: np.ndarray,
    t: int,
    log_pi: np.ndarray,
    average: np.ndarray | None = None,
) -> dict[str, Any]:
    pi = np.exp(log_pi)
    tau = problem.tau_final
    record = {
        "step": t,
        "duality_gap": duality_gap(problem.P, problem.mu, pi, tau),
        "exploitability": exploitability(problem.P, pi),
        "kl_to_reference": kl_divergence(pi, problem.mu),
        "kl_to_solution": kl_divergence(star, pi, log_q=log_pi),
    }
    if average is not None:
        record["average_duality_gap"] = duality_gap(problem.P, problem.mu, average, tau)
        record["average_exploitability"] = exploitability(problem.P, average)
        record["average_kl_to_solution"] = kl_divergence(star, average)
    return record


def train_spec(
    spec: RunSpec,
    output: Path,
    *,
    resume: bool = False,
    progress: bool | None = None,
    trajectory: dynamics.TrajectoryFn = dynamics.trajectory,
    backend: str = "numpy",
) -> dict[str, Any]:
    """Run a tabular spec, writing ``spec.resolved.yaml``, ``metrics.jsonl`` (a record every
    ``log_every`` steps, plus steps 0 and T) and ``summary.json`` under ``output``.

    The steps π_t → π_{t+1} (paper §5) run in ``trajectory``, a backend's
    :class:`~nlhf.tabular.dynamics.TrajectoryFn` (NumPy's by default), at most
    :data:`CHUNK_STEPS` at a time; ``backend`` names it in the summary. The schedules are
    checked (η_t τ_t ≤ 1) before anything is written. Tabular runs take seconds and keep
    no checkpoints: ``resume`` recomputes the run (deterministically) from step 0, once
    the spec is checked against the run's ``spec.resolved.yaml``
    (:func:`nlhf.runio.resume_checkpoint`).
    ``progress=None`` shows a rich progress bar when stderr is a terminal and the run has
    ≥ 1000 steps.
    """
    from nlhf.runio import MetricsWriter, resume_checkpoint, write_resolved_spec, write_summary
    from nlhf.tracking import track
    from nlhf.training.progress import Progress

    if resume:  # deterministic and cheap: recomputed, if the spec is the run's
        resume_checkpoint(spec, output)
    start = time.perf_counter()
    problem = resolve(spec)
    P, mu = problem.P, problem.mu
    sched = dynamics.schedules(
        P,
        mu,
        algorithm=problem.algorithm,
        tau=problem.tau,
        eta=problem.eta,
        steps=problem.steps,
        magnet_every=problem.magnet_every,
    )
    total = len(sched)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    write_resolved_spec(output, spec)
    star = solution(problem)
    if progress is None:
        progress = sys.stderr.isatty() and problem.steps >= 1000
    log_pi = dynamics.initial_log_policy(mu)
    log_aux = log_pi
    averaged = problem.algorithm in AVERAGED
    played = np.zeros_like(mu)  # Σ_{t<s} π_t, for the average iterate
    last = _record(problem, star, 0, log_pi, np.exp(log_pi) if averaged else None)
    with track(spec, output, "tabular", resumed_from=0 if resume else None):
        with (
            MetricsWriter(output) as writer,
            Progress(total, problem.algorithm, enabled=progress) as bar,
        ):
            writer.log(last)
            for s in range(0, total, CHUNK_STEPS):
                chunk = sched[s : s + CHUNK_STEPS]
                rows, log_aux = trajectory(P, mu, log_pi, log_aux, chunk, problem.algorithm)
                rows, log_aux = np.asarray(rows, np.float64), np.asarray(log_aux, np.float64)
                if rows.shape != (len(chunk), mu.shape[0]) or log_aux.shape != mu.shape:
                    raise NLHFError(
                        f"backend {backend!r}: the tabular trajectory returned shapes {rows.shape} "
                        f"and {log_aux.shape}, expected {(len(chunk), mu.shape[0])} and {mu.shape}"
                    )
                # sums[j] = Σ_{t ≤ s+j} π_t: π̄ at step i = s+j+1 is sums[j] / i
                sums = played + np.cumsum(np.vstack([np.exp(log_pi), np.exp(rows[:-1])]), axis=0)
                for i, row in enumerate(rows, start=s + 1):
                    if i % problem.log_every == 0 or i == total:
                        average = sums[i - s - 1] / i if averaged else None
                        last = _record(problem, star, i, row, average)
                        writer.log(last)
                played = sums[-1]
                log_pi = rows[-1]
                bar.update(s + len(rows), gap=f"{last['duality_gap']:.2e}")
        policy = np.exp(log_pi)
        summary: dict[str, Any] = {
            "backend": backend,
            "game": problem.game,
            "algorithm": problem.algorithm,
            "tau": problem.tau.model_dump() if isinstance(problem.tau, Schedule) else problem.tau,
            "tau_final": problem.tau_final,
            "eta": problem.eta,
            "steps": int(last["step"]),
            "responses": list(problem.labels),
            "reference": problem.mu.tolist(),
            "policy": policy.tolist(),
            "duality_gap": last["duality_gap"],
            "exploitability": last["exploitability"],
            "kl_to_reference": last["kl_to_reference"],
            "solution": star.tolist(),
            "solution_kind": "regularized_nash" if problem.tau_final > 0 else "maximal_lottery",
            "kl_to_solution": last["kl_to_solution"],
            "seconds": time.perf_counter() - start,
        }
        if problem.magnet_every:
            summary["magnet_every"] = problem.magnet_every
        if averaged:
            summary["average_policy"] = (played / total).tolist()
            for key in ("average_duality_gap", "average_exploitability", "average_kl_to_solution"):
                summary[key] = last[key]
        write_summary(output, summary)
    return summary
