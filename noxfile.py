"""nox sessions for nlhf. They reuse the repository's ./.venv (created by
``bash scripts/install.sh``, run first by every session and a fast no-op when up to date)
instead of building one virtualenv per session, so torch is never reinstalled.

    nox -s lint                    # ruff check + ruff format --check
    nox -s unit                    # core, torch and jax package tests + cross-backend tests
    nox -s "unit(package='core')"  # one package
    nox -s conformance             # the conformance kit, per backend
    nox -s "conformance(backend='numpy')"
    nox -s e2e                     # end-to-end runs (-m slow)
    nox -s bench                   # benchmarks/run.py
"""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
PACKAGES = {
    "core": "packages/nlhf-core/tests",
    "torch": "packages/nlhf-torch/tests",
    "jax": "packages/nlhf-jax/tests",
    "cross": "tests",  # cross-backend tests (the conformance kit has its own session)
}
BACKENDS = ["numpy", "torch", "jax"]

nox.options.sessions = ["lint", "unit", "conformance"]
nox.options.default_venv_backend = "none"


def _install(session: nox.Session) -> None:
    session.run("bash", "scripts/install.sh", "--if-needed", external=True)


def _pytest(session: nox.Session, *args: str) -> None:
    session.run(PYTHON, "-m", "pytest", *args, *session.posargs, external=True)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repository."""
    _install(session)
    session.run(PYTHON, "-m", "ruff", "check", ".", external=True)
    session.run(PYTHON, "-m", "ruff", "format", "--check", ".", external=True)


@nox.session(venv_backend="none")
@nox.parametrize("package", list(PACKAGES))
def unit(session: nox.Session, package: str) -> None:
    """Unit tests of one package (fast: -m 'not slow')."""
    _install(session)
    _pytest(session, PACKAGES[package], "--ignore=tests/conformance", "-m", "not slow", "-q")


@nox.session(venv_backend="none")
@nox.parametrize("backend", BACKENDS)
def conformance(session: nox.Session, backend: str) -> None:
    """The conformance kit against one backend (tests/conformance, -k BACKEND)."""
    _install(session)
    _pytest(session, "tests/conformance", "-k", backend, "-q")


@nox.session(venv_backend="none")
def e2e(session: nox.Session) -> None:
    """End-to-end runs (tests marked slow)."""
    _install(session)
    _pytest(session, "-m", "slow", "-q")


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Throughput/memory benchmarks with same-run baselines (benchmarks/run.py)."""
    _install(session)
    script = ROOT / "benchmarks" / "run.py"
    if not script.exists():
        session.skip("benchmarks/run.py does not exist yet")
    session.run(PYTHON, str(script), *session.posargs, external=True)
