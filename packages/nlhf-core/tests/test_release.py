"""Release hygiene: one version for every package (the repository's ``VERSION`` file),
reported by each installed distribution, its module and ``nlhf --version``; the changelog;
the pre-commit configuration's ruff."""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nlhf
import pytest
from nlhf.cli import main

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = {"nlhf-core": "nlhf", "nlhf-torch": "nlhf_torch", "nlhf-jax": "nlhf_jax"}
"""Distribution name → top-level module."""


def _version_file() -> str:
    text = (ROOT / "VERSION").read_text(encoding="utf-8")
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+)?\n", text), repr(text)
    return text.strip()


def _pyproject(dist: str) -> dict:
    return tomllib.loads((ROOT / "packages" / dist / "pyproject.toml").read_text("utf-8"))


@pytest.mark.parametrize("dist", list(PACKAGES))
def test_each_pyproject_takes_its_version_from_the_one_version_file(dist: str) -> None:
    project = _pyproject(dist)
    assert "version" not in project["project"], f"{dist}: a literal version duplicates VERSION"
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"file": "VERSION"}
    link = ROOT / "packages" / dist / "VERSION"
    assert link.is_symlink() and link.resolve() == (ROOT / "VERSION").resolve()


@pytest.mark.parametrize("dist", ["nlhf-torch", "nlhf-jax"])
def test_backends_require_the_core_of_the_same_version(dist: str) -> None:
    wanted = [d for d in _pyproject(dist)["project"]["dependencies"] if d.startswith("nlhf-core")]
    assert wanted == [f"nlhf-core=={_version_file()}"], (
        f"packages/{dist}/pyproject.toml requires {wanted}; write nlhf-core=={_version_file()} "
        "(the VERSION file) there"
    )


@pytest.mark.parametrize("dist", list(PACKAGES))
def test_installed_packages_report_the_version_file(dist: str) -> None:
    try:
        installed = metadata.version(dist)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{dist} is not installed in this environment (a slim install)")
    module = importlib.import_module(PACKAGES[dist])
    assert installed == module.__version__ == _version_file(), (
        f"{dist}: installed {installed}, {PACKAGES[dist]}.__version__ {module.__version__}, "
        f"VERSION {_version_file()}; reinstall after changing VERSION (bash scripts/install.sh)"
    )


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"nlhf {_version_file()}\n"
    assert nlhf.__version__ == _version_file()


def test_console_script_version() -> None:
    script = shutil.which("nlhf", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the nlhf console script is not installed beside this interpreter")
    out = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout == f"nlhf {_version_file()}\n"


def test_changelog_keeps_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog\n")
    assert "https://keepachangelog.com/" in text
    headings = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, flags=re.M)
    assert headings and headings[0][0] == "Unreleased", headings
    for name, date in headings[1:]:
        assert re.fullmatch(r"\d+\.\d+\.\d+\S*", name) and date, (name, date)
    sections = set(re.findall(r"^### (\w+)$", text, flags=re.M))
    assert sections <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def test_pre_commit_runs_the_installed_ruff() -> None:
    import yaml

    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    (repo,) = [r for r in config["repos"] if r["repo"].endswith("/ruff-pre-commit")]
    assert [h["id"] for h in repo["hooks"]] == ["ruff-check", "ruff-format"]
    try:
        ruff = metadata.version("ruff")
    except metadata.PackageNotFoundError:
        pytest.skip("ruff is not installed here (scripts/install.sh installs it)")
    assert repo["rev"] == f"v{ruff}", (
        f".pre-commit-config.yaml pins ruff {repo['rev']}, .venv has ruff {ruff}; make them agree"
    )
