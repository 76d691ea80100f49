"""The set-up contract: README's two commands, scripts/, .ci/run and the nox sessions."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def test_cli_readme_has_exactly_two_setup_commands() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the Set up section needs a bash code block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert [c for c in commands if c] == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]


def test_cli_quickstart_spec_exists_and_validates() -> None:
    text = (REPO / "scripts" / "quickstart.sh").read_text(encoding="utf-8")
    match = re.search(r'^SPEC="\$\{NLHF_QUICKSTART_SPEC:-([^}]+)\}"', text, re.M)
    assert match, "quickstart.sh must set SPEC near the top"
    spec = REPO / match.group(1)
    assert spec.is_file(), spec
    from nlhf.spec import load_spec

    loaded = load_spec(spec)
    assert loaded.task == "nash" and loaded.algorithm is not None
    assert loaded.algorithm.name == "nash_md_pg"  # the main job is the tiny-LLM Nash run
    assert "scripts/install.sh" in text and '.venv/bin/nlhf run "$SPEC"' in text


def test_cli_install_pins_torch_before_packages() -> None:
    text = (REPO / "scripts" / "install.sh").read_text(encoding="utf-8")
    assert 'TORCH_PIN="torch==2.13.0"' in text
    first_torch = text.index('"${PIP[@]}" "$TORCH_PIN"\n')
    editable = text.index("packages/nlhf-core")  # -e, with its extras (the trackers)
    assert first_torch < editable < text.index('"${PIP[@]}" "$TORCH_PIN" "${PACKAGES[@]}"')
    tools = ("pytest", "pytest-xdist", "ruff", "nox", "matplotlib")
    for package in ("nlhf-torch", "nlhf-jax", *tools):
        assert package in text, package
    assert "examples/nlhf-example-backend" in text
    assert "-r docs/requirements.txt" in text  # the docs site's tools (mkdocs.yml)


def test_cli_test_script_runs_one_worker_per_cpu_with_whole_files() -> None:
    """The suite fits its time budget on 2 cores only in parallel: scripts/test.sh starts one
    pytest-xdist worker per CPU (NLHF_TEST_WORKERS overrides), a test file whole per worker so
    module fixtures are built once; conftest.py splits the CPUs' threads between workers."""
    text = (REPO / "scripts" / "test.sh").read_text(encoding="utf-8")
    assert '-n "${NLHF_TEST_WORKERS:-auto}" --dist loadfile "$@"' in text
    conftest = (REPO / "conftest.py").read_text(encoding="utf-8")
    assert "PYTEST_XDIST_WORKER_COUNT" in conftest and "OMP_NUM_THREADS" in conftest


@pytest.mark.parametrize("script", ["scripts/install.sh", "scripts/test.sh", ".ci/run"])
def test_cli_scripts_are_strict_bash(script: str) -> None:
    text = (REPO / script).read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(REPO / script)], check=True)


def test_cli_ci_run_is_executable_and_maps_exit_5() -> None:
    path = REPO / ".ci" / "run"
    assert os.access(path, os.X_OK)
    text = path.read_text(encoding="utf-8")
    assert "bash scripts/test.sh -q" in text
    assert "-eq 5" in text and "exit 1" in text


def test_cli_nox_sessions() -> None:
    import nox

    spec = importlib.util.spec_from_file_location("nlhf_noxfile", REPO / "noxfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = set(nox.registry.get())
    assert {"lint", "unit", "conformance", "e2e", "bench", "docs"} <= names
    assert set(module.PACKAGES) == {"core", "torch", "jax", "cross"}
    assert module.BACKENDS == ["numpy", "torch", "jax"]
    for test_dir in module.PACKAGES.values():
        assert (REPO / test_dir).is_dir(), test_dir
