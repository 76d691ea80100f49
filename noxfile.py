"""nox sessions for nlhf.

Daily work: these sessions reuse the repository's ./.venv (created by
``bash scripts/install.sh``, run first by each of them and a fast no-op when up to date),
so torch is never reinstalled.

    nox -s lint                    # ruff check + ruff format --check
    nox -s unit                    # core, torch and jax package tests + cross-backend tests
    nox -s "unit(package='core')"  # one package
    nox -s conformance             # the conformance kit, per backend
    nox -s "conformance(backend='numpy')"
    nox -s e2e                     # end-to-end runs (-m slow)
    nox -s typecheck               # mypy over nlhf core (config: [tool.mypy] in pyproject.toml)
    nox -s docs                    # mkdocs build --strict of the docs site (mkdocs.yml)
    nox -s bench                   # benchmarks/run.py

Slim installs: each ``slim`` session builds its own virtualenv with uv (``pip install uv``
into .venv), installs only one package and what it declares (non-editable, so packaging is
tested too) plus pytest (core: its ``test`` extra), and runs that package's fast tests and
the conformance kit for its backend. They catch a dependency that only the fat .venv
provides.

    nox -s slim                                     # every combination below
    nox -s "slim(python='3.11', package='core')"    # nlhf-core alone, kit for numpy
    nox -s "slim(python='3.11', package='torch')"   # core + nlhf-torch, kit for torch
    nox -s "slim(python='3.11', package='jax')"     # core + nlhf-jax, kit for jax
    nox -s "slim(python='3.13', package='jax')"     # core and jax also on 3.12 and 3.13
    nox -s slim_lowest                              # each package at its lowest declared versions
    nox -s "slim_lowest(package='torch')"

torch runs on Python 3.11 only: it is pinned to the CPU wheel ``torch==2.13.0+cpu``
(an unpinned torch pulls a multi-GB CUDA build), and the CPU wheel available here is
cp311 only. It comes from ``$PIP_FIND_LINKS`` (a local wheel directory) when set,
otherwise from the PyTorch CPU index. The interpreters must be on PATH (with pyenv:
``pyenv shell 3.11 3.12 3.13``); a missing one is an error, not a skip.
"""

from __future__ import annotations

import os
import tempfile
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

#: slim(package): what is installed (besides nlhf-core) and which tests run.
SLIM = {
    "core": ([], ["packages/nlhf-core/tests", "tests/conformance/test_conformance_numpy.py"]),
    "torch": (
        ["packages/nlhf-torch", "torch==2.13.0+cpu"],
        ["packages/nlhf-torch/tests", "tests/conformance/test_conformance_torch.py"],
    ),
    "jax": (
        ["packages/nlhf-jax"],
        ["packages/nlhf-jax/tests", "tests/conformance/test_conformance_jax.py"],
    ),
}
SLIM_MATRIX = [
    ("3.11", "core"),
    ("3.12", "core"),
    ("3.13", "core"),
    ("3.11", "torch"),  # the CPU torch wheel is cp311 only (see the module docstring)
    ("3.11", "jax"),
    ("3.12", "jax"),
    ("3.13", "jax"),
]
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: test tools of the backend slims (core's remote-preference fault server runs on uvicorn)
TEST_TOOLS = ["pytest>=8", "fastapi>=0.110", "uvicorn>=0.29"]  # the ranges of nlhf-core[test]

nox.options.sessions = ["lint", "unit", "conformance"]
nox.options.default_venv_backend = "none"
nox.options.error_on_missing_interpreters = True  # a slim session never passes by skipping


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
def typecheck(session: nox.Session) -> None:
    """mypy over nlhf core (packages/nlhf-core/src/nlhf), configured in pyproject.toml."""
    _install(session)
    session.run(PYTHON, "-m", "pip", "install", "-q", "mypy", "types-PyYAML", external=True)
    paths = session.posargs or ["packages/nlhf-core/src/nlhf"]
    session.run(PYTHON, "-m", "mypy", *paths, external=True)


@nox.session(venv_backend="uv")
@nox.parametrize(("python", "package"), SLIM_MATRIX)
def slim(session: nox.Session, package: str) -> None:
    """One package in a fresh virtualenv: its declared dependencies only, then its fast
    tests and the conformance kit for its backend (posargs replace the test paths)."""
    extra, tests = SLIM[package]
    core = "packages/nlhf-core[test]" if package == "core" else "packages/nlhf-core"
    links = os.environ.get("PIP_FIND_LINKS")
    source = ["--find-links", links] if links else ["--extra-index-url", TORCH_CPU_INDEX]
    if package == "torch":
        extra = [*extra, *source]
    tools = ["pytest>=8"] if package == "core" else TEST_TOOLS
    session.install(core, *extra, *tools)
    tests = session.posargs or tests
    session.run("python", "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", *tests)


@nox.session(venv_backend="uv", python="3.11")
@nox.parametrize("package", list(SLIM))
def slim_lowest(session: nox.Session, package: str) -> None:
    """``slim`` at the low end of every range the packages declare: their requirements
    (core's ``test`` extra included) resolved with uv's ``--resolution lowest-direct`` from
    wheels only (``--no-build``: the lowest release that has a wheel for this Python), then
    the packages themselves without dependencies, then the same tests. A lower bound that
    no longer works fails here; the upper ends are what ``slim`` resolves."""
    extra, tests = SLIM[package]
    paths = ["packages/nlhf-core", *(e for e in extra if e.startswith("packages/"))]
    pins = [e for e in extra if not e.startswith("packages/")]
    requirements = _declared(paths[0], "test" if package == "core" else "")
    requirements += [r for path in paths[1:] for r in _declared(path)]
    tools = ["pytest>=8"] if package == "core" else TEST_TOOLS
    links = os.environ.get("PIP_FIND_LINKS")
    source = ["--find-links", links] if links else ["--extra-index-url", TORCH_CPU_INDEX]
    session.install(
        "--resolution", "lowest-direct", "--no-build", *source, *requirements, *pins, *tools
    )
    session.install("--no-deps", *paths)
    tests = session.posargs or tests
    session.run("python", "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", *tests)


def _declared(path: str, extra: str = "") -> list[str]:
    """The requirements ``path``'s pyproject declares (and those of its ``extra``, with the
    package's own extras it names expanded), other nlhf packages left out."""
    import tomllib

    project = tomllib.loads((ROOT / path / "pyproject.toml").read_text("utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    name = project["name"]

    def expand(requirements: list[str]) -> list[str]:
        out = []
        for req in requirements:
            if req.startswith(f"{name}["):
                for item in req[len(name) + 1 : -1].split(","):
                    out += expand(optional[item])
            elif not req.startswith("nlhf-"):
                out.append(req)
        return out

    return expand(project["dependencies"] + (optional[extra] if extra else []))


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    """The docs site (mkdocs.yml): mkdocs build --strict into a temporary directory, so a
    broken link, anchor or nav entry fails. Preview it with ``.venv/bin/mkdocs serve``."""
    _install(session)
    session.run(PYTHON, "-m", "pip", "install", "-q", "-r", "docs/requirements.txt", external=True)
    site = tempfile.mkdtemp(prefix="nlhf-site-")
    session.run(PYTHON, "-m", "mkdocs", "build", "--strict", "--site-dir", site, external=True)
    session.log(f"site built in {site}")


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Throughput/memory benchmarks with same-run baselines (benchmarks/run.py)."""
    _install(session)
    script = ROOT / "benchmarks" / "run.py"
    if not script.exists():
        session.skip("benchmarks/run.py does not exist yet")
    session.run(PYTHON, str(script), *session.posargs, external=True)
