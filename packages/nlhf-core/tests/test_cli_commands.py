"""The ``nlhf`` CLI: validate, schema, backends, run, solve, plugin commands, error exits,
and lazy imports (no torch/jax for --help, validate, backends, schema)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import nlhf
import pytest
import typer
from nlhf import cli
from nlhf import plugins as plugins_mod
from nlhf.errors import InputError
from typer.testing import CliRunner

GOOD = """\
spec_version: 1
task: nash
preference: {name: tabular, matrix: [[0.5, 0.9], [0.1, 0.5]]}
reference: {probs: [0.5, 0.5]}
algorithm: {name: nash_md, tau: 0.1, steps: 2000}
output: {dir: runs/example}
"""

runner = CliRunner()


class FakeBackend:
    """Records the call and writes a summary, like a real backend."""

    calls: ClassVar[list[tuple[Any, Path, bool]]] = []

    def __init__(self, name: str) -> None:
        self.name = name
        self.kernels = None

    def train(self, spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
        FakeBackend.calls.append((spec, output, resume))
        output.mkdir(parents=True, exist_ok=True)
        (output / "summary.json").write_text("{}")
        return {"policy": [0.9, 0.1], "duality_gap": 1.5e-9, "steps": spec.algorithm.steps}


class FakePlugin:
    __name__ = "fake_cli_plugin"

    @nlhf.hookimpl
    def nlhf_register_backends(self, register):  # type: ignore[no-untyped-def]
        register("numpy", lambda: FakeBackend("numpy"), description="fake numpy")
        register("ghost", lambda: None, requires=("no_such_module_xyz",), description="needs X")

    @nlhf.hookimpl
    def nlhf_register_commands(self, cli):  # type: ignore[no-untyped-def]
        @cli.command("hello")
        def hello(name: str = "world") -> None:
            """Say hello (added by a plugin)."""
            typer.echo(f"hello {name}")

        @cli.command("fail")
        def fail() -> None:
            """Raise an nlhf error."""
            raise InputError("the plugin's input is bad")


class BrokenCommandsPlugin:
    __name__ = "broken_commands_plugin"

    @nlhf.hookimpl
    def nlhf_register_commands(self, cli):  # type: ignore[no-untyped-def]
        @cli.command("half")
        def half() -> None:
            """Registered before the failure; must be removed again."""

        raise RuntimeError("boom")


@pytest.fixture
def fake_plugins(monkeypatch: pytest.MonkeyPatch) -> plugins_mod.Plugins:
    monkeypatch.setenv("NLHF_PLUGINS", "")  # no installed entry points: deterministic
    built = plugins_mod.build_plugins(extra=[FakePlugin(), BrokenCommandsPlugin()])
    monkeypatch.setattr(plugins_mod, "get_plugins", lambda: built)
    FakeBackend.calls = []
    return built


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tab.yaml"
    path.write_text(GOOD)
    return path


def test_cli_validate_ok(spec_file: Path) -> None:
    result = runner.invoke(cli.get_app(plugins=False), ["validate", str(spec_file)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"{spec_file}: ok (task nash, algorithm nash_md, preference tabular; runs on backend numpy)"
    )


def test_cli_validate_reports_every_error_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("tau: 0.1", "tau: -1") + "outptu: {}\n")
    result = runner.invoke(
        cli.get_app(plugins=False), ["validate", str(path), "--set", "training.steps=0"]
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"{path}:5:33: algorithm.tau: Input should be greater than 0; got -1",
        f"{path}:7:1: outptu: unknown key (did you mean 'output'?)",
        "--set training.steps=0: training.steps: Input should be greater than 0; got 0",
        "error: 3 problems in the spec",
    ]
    assert "Traceback" not in result.output


def test_cli_validate_with_set_fixing_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("tau: 0.1", "tau: -1"))
    result = runner.invoke(
        cli.get_app(plugins=False), ["validate", str(path), "-s", "algorithm.tau=0.2"]
    )
    assert result.exit_code == 0, result.output


def test_cli_validate_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(cli.get_app(plugins=False), ["validate", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2
    assert "no such spec file" in result.stderr


def test_cli_schema_is_the_runspec_json_schema() -> None:
    result = runner.invoke(cli.get_app(plugins=False), ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "RunSpec"
    assert {"preference", "algorithm", "output", "spec_version"} <= set(schema["properties"])


def test_cli_backends_table(
    fake_plugins: plugins_mod.Plugins, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at 80 columns when not on a terminal
    result = runner.invoke(cli.get_app(), ["backends"], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "numpy" in out and "fake numpy" in out
    assert "ghost" in out and "no (missing: no_such_module_xyz)" in out
    # the broken command plugin is reported as a failure, not a crash
    assert "broken_commands_plugin" in out and "RuntimeError: boom" in out


def test_cli_run_default_backend_and_output_override(
    fake_plugins: plugins_mod.Plugins, spec_file: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    result = runner.invoke(
        cli.get_app(),
        ["run", str(spec_file), "--output", str(out_dir), "--set", "algorithm.steps=10"],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    [(spec, output, resume)] = FakeBackend.calls
    assert output == out_dir and spec.output.dir == str(out_dir)
    assert spec.algorithm.steps == 10 and resume is False
    assert (out_dir / "summary.json").exists()
    assert "duality_gap" in result.stdout and "1.5e-09" in result.stdout
    assert f"outputs: {out_dir}" in result.stdout


def test_cli_run_resume_flag(
    fake_plugins: plugins_mod.Plugins, spec_file: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        cli.get_app(), ["run", str(spec_file), "-o", str(tmp_path / "o"), "--resume"]
    )
    assert result.exit_code == 0, result.output
    assert FakeBackend.calls[0][2] is True


def test_cli_run_unknown_backend_is_a_clean_error(
    fake_plugins: plugins_mod.Plugins, spec_file: Path
) -> None:
    result = runner.invoke(cli.get_app(), ["run", str(spec_file), "--backend", "numpyy"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: unknown backend 'numpyy' (did you mean 'numpy'?)")
    assert "Traceback" not in result.output


def test_cli_run_backend_missing_framework(
    fake_plugins: plugins_mod.Plugins, spec_file: Path
) -> None:
    result = runner.invoke(cli.get_app(), ["run", str(spec_file), "-b", "ghost"])
    assert result.exit_code == 1
    assert "needs no_such_module_xyz, which is not installed" in result.stderr


def test_cli_default_backend_choice() -> None:
    from nlhf.spec import load_spec_text

    tab = load_spec_text(GOOD)
    llm = load_spec_text(
        "task: nash\npolicy: {model: m}\ndata: {path: d}\n"
        "preference: {name: oracle, function: f}\nalgorithm: {name: nash_md_pg}\n"
    )
    assert cli.default_backend(tab) == "numpy"
    assert cli.default_backend(llm) == "torch"


def test_cli_plugin_command_appears_and_runs(fake_plugins: plugins_mod.Plugins) -> None:
    app = cli.get_app()
    names = [info.name for info in app.registered_commands]
    assert "hello" in names and "half" not in names
    result = runner.invoke(app, ["hello", "--name", "nash"])
    assert result.exit_code == 0 and result.stdout.strip() == "hello nash"
    helped = runner.invoke(app, ["--help"], terminal_width=200)
    assert "hello" in helped.stdout and "Say hello" in helped.stdout


def test_cli_plugin_command_error_is_clean(fake_plugins: plugins_mod.Plugins) -> None:
    result = runner.invoke(cli.get_app(), ["fail"])
    assert result.exit_code == 1
    assert result.stderr.strip().endswith("error: the plugin's input is bad")


def test_cli_main_exit_codes(
    fake_plugins: plugins_mod.Plugins, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: nsah\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["validate", str(bad)])
    assert info.value.code == 2
    assert f"{bad}:1:7: task: " in capsys.readouterr().err


def _fake_tabular(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    seen: list[Any] = []

    def solve_spec(spec: Any) -> dict[str, Any]:
        seen.append(spec)
        return {
            "responses": ["a", "b"],
            "tau": spec.algorithm.tau,
            "regularized_nash": {"policy": [0.75, 0.25], "duality_gap": 1e-13},
            "maximal_lottery": {"policy": [1.0, 0.0], "exploitability": 0.0},
        }

    module = types.ModuleType("nlhf.tabular")
    module.solve_spec = solve_spec  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nlhf.tabular", module)
    return seen


def test_cli_solve_table(monkeypatch: pytest.MonkeyPatch, spec_file: Path) -> None:
    seen = _fake_tabular(monkeypatch)
    result = runner.invoke(
        cli.get_app(plugins=False),
        ["solve", str(spec_file), "--set", "algorithm.tau=0.5"],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert seen[0].algorithm.tau == 0.5
    rows = [line for line in result.stdout.splitlines() if "0.750000" in line]
    assert rows and "a" in rows[0] and "1.000000" in rows[0]
    header = next(line for line in result.stdout.splitlines() if "response" in line)
    assert "regularized_nash" in header and "maximal_lottery" in header
    assert "regularized_nash.duality_gap" in result.stdout and "1e-13" in result.stdout
    assert "maximal_lottery.exploitability" in result.stdout


def test_cli_solve_json(monkeypatch: pytest.MonkeyPatch, spec_file: Path) -> None:
    _fake_tabular(monkeypatch)
    result = runner.invoke(cli.get_app(plugins=False), ["solve", str(spec_file), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["regularized_nash"]["policy"] == [0.75, 0.25] and data["tau"] == 0.1


def test_cli_solve_rejects_llm_spec(tmp_path: Path) -> None:
    path = tmp_path / "llm.yaml"
    path.write_text(
        "task: nash\npolicy: {model: m}\ndata: {path: d}\n"
        "preference: {name: oracle, function: f}\nalgorithm: {name: nash_md_pg}\n"
    )
    result = runner.invoke(cli.get_app(plugins=False), ["solve", str(path)])
    assert result.exit_code == 1
    assert "needs a tabular preference" in result.stderr


def test_cli_version() -> None:
    result = runner.invoke(cli.get_app(plugins=False), ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"nlhf {nlhf.__version__}"


LAZY = """
import sys
from typer.testing import CliRunner
from nlhf.cli import get_app
result = CliRunner().invoke(get_app(), {args!r}, terminal_width=200)
assert result.exit_code == {code}, result.output
heavy = sorted(m for m in ("torch", "jax", "flax", "transformers") if m in sys.modules)
assert not heavy, heavy
print("LAZY-OK")
"""


@pytest.mark.parametrize(
    ("args", "code"),
    [(["--help"], 0), (["validate", "SPEC"], 0), (["backends"], 0), (["schema"], 0)],
)
def test_cli_commands_do_not_import_frameworks(args: list[str], code: int, spec_file: Path) -> None:
    args = [str(spec_file) if a == "SPEC" else a for a in args]
    proc = subprocess.run(
        [sys.executable, "-c", LAZY.format(args=args, code=code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LAZY-OK" in proc.stdout


REPO = Path(__file__).resolve().parents[3]
EXAMPLE_SPECS = sorted((REPO / "specs").rglob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLE_SPECS, ids=[p.name for p in EXAMPLE_SPECS])
def test_cli_validate_example_specs(path: Path) -> None:
    if "function: population" in path.read_text(encoding="utf-8"):
        pytest.importorskip(
            "nlhf_quickstart", reason="the population oracle is the nlhf-quickstart plugin's"
        )
    result = runner.invoke(cli.get_app(plugins=False), ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{path}: ok (task ")
