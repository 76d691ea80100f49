"""Broken plugins cannot brick nlhf: real distributions (``*.dist-info`` with an
``entry_points.txt`` of group ``nlhf``) on a temporary ``sys.path`` entry that hang at
import, call ``sys.exit``, raise a ``BaseException``, fail in a hook, register a name twice
or add a command named like a built-in one. ``--help``, ``schema``, ``backends`` and
``validate`` still work; each failure is reported; nothing but the broken part is lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from nlhf import cli
from nlhf import plugins as plugins_mod

TIMEOUT = 1.0
"""NLHF_PLUGIN_TIMEOUT of these tests (seconds)."""

GOOD_SPEC = """\
spec_version: 1
task: nash
preference: {name: tabular, matrix: [[0.5, 0.9], [0.1, 0.5]]}
algorithm: {name: nash_md, tau: 0.1, steps: 100}
output: {dir: OUT}
"""

HOOKS = """\
import sys
import nlhf
"""

BROKEN = {
    # entry-point name: (module source, the error the failure must report)
    "hang": ("import time\ntime.sleep(120)\n", "did not finish within 1 s"),
    "exits": ("import sys\nsys.exit(3)\n", "SystemExit: the plugin called sys.exit(3)"),
    "base": (
        "class Boom(BaseException):\n    pass\nraise Boom('at import')\n",
        "Boom: at import",
    ),
    "raises": ("raise RuntimeError('broken at import')\n", "RuntimeError: broken at import"),
    "hook_exits": (
        HOOKS
        + "@nlhf.hookimpl\ndef nlhf_register_backends(register):\n"
        + "    register('half_registered', lambda: None)\n    sys.exit(4)\n",
        "SystemExit: the plugin called sys.exit(4)",
    ),
    "dup": (
        HOOKS
        + "@nlhf.hookimpl\ndef nlhf_register_backends(register):\n"
        + "    register('numpy', lambda: 'shadow', description='shadow numpy')\n"
        + "    register('dup_ok', lambda: 'ok', description='kept')\n",
        "duplicate backend name 'numpy'",
    ),
    "cmds": (
        HOOKS
        + "import typer\n"
        + "@nlhf.hookimpl\ndef nlhf_register_commands(cli):\n"
        + "    @cli.command('run')\n    def run() -> None:\n        print('hijacked')\n"
        + "    @cli.command('hello')\n    def hello() -> None:\n        print('hello from a plugin')\n",
        "command 'run' is a built-in command; refused",
    ),
}


def make_site(root: Path) -> tuple[Path, dict[str, str]]:
    """A directory of one distribution per broken plugin; returns it and the unique
    module name of each entry point (unique per test: a hung import keeps its module lock)."""
    site = root / "site"
    site.mkdir()
    modules = {}
    for ep_name, (source, _) in BROKEN.items():
        module = f"nlhf_broken_{ep_name}_{uuid.uuid4().hex[:8]}"
        modules[ep_name] = module
        (site / f"{module}.py").write_text(source)
        info = site / f"{module}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[nlhf]\n{ep_name} = {module}\n")
    return site, modules


@pytest.fixture
def broken_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    site, modules = make_site(tmp_path)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("NLHF_PLUGINS", raising=False)
    monkeypatch.setenv("NLHF_PLUGIN_TIMEOUT", str(TIMEOUT))
    plugins_mod.reset()
    yield modules
    plugins_mod.reset()
    for module in modules.values():
        sys.modules.pop(module, None)


def test_broken_plugins_are_reported_and_the_rest_loads(broken_site: dict[str, str]) -> None:
    start = time.monotonic()
    built = plugins_mod.build_plugins()
    elapsed = time.monotonic() - start
    errors = {f.name: f.error for f in built.failures}
    for ep_name, (_, expected) in BROKEN.items():
        if ep_name == "cmds":
            continue  # commands are checked when the CLI adds them
        assert expected in errors.get(ep_name, ""), (ep_name, errors)
    # the built-in numpy backend is kept, the duplicate skipped; the plugin's other name stays
    assert built.backends.get("numpy").package == "nlhf-core"
    assert built.backends.get("dup_ok").description == "kept"
    assert f"{broken_site['dup']}'s is skipped" in errors["dup"]
    # a hook that exits after one registration keeps what it registered (reported, not fatal)
    assert "half_registered" in built.backends
    assert elapsed < 4 * TIMEOUT + 5, f"{elapsed:.1f} s"  # one timeout for the hung import


def test_schema_does_not_load_plugins(broken_site: dict[str, str], capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as info:
        cli.main(["schema"])
    assert info.value.code == 0
    assert json.loads(capsys.readouterr().out)["title"] == "RunSpec"
    assert plugins_mod.get_plugins.cache_info().currsize == 0  # lazy: nothing imported
    assert not any(m in sys.modules for m in broken_site.values())


def test_help_lists_builtins_and_good_plugin_commands(broken_site: dict[str, str], capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    out, err = capsys.readouterr()
    assert info.value.code == 0, out + err
    for command in ("run", "validate", "schema", "backends", "solve", "hello"):
        assert command in out
    assert "command 'run' is a built-in command; refused" in err
    assert "Traceback" not in out + err


def test_builtin_run_is_not_hijacked(broken_site: dict[str, str], capsys) -> None:  # type: ignore[no-untyped-def]
    app = cli.get_app()
    names = [cli._command_name(i) for i in app.registered_commands]
    assert names.count("run") == 1 and "hello" in names
    [run] = [i for i in app.registered_commands if cli._command_name(i) == "run"]
    assert run.callback is not None and run.callback.__module__ == "nlhf.cli"


def test_backends_lists_every_failure(broken_site: dict[str, str], capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as info:
        cli.main(["backends"])
    out, err = capsys.readouterr()
    assert info.value.code == 0, out + err
    assert "numpy" in out and "dup_ok" in out
    for ep_name in ("hang", "exits", "base", "raises", "hook_exits", "dup"):
        assert ep_name in out, ep_name
    assert "command 'run' is a built-in command; refused" in out
    assert "Traceback" not in out + err


def test_validate_builtin_sections_works(
    broken_site: dict[str, str], tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "spec.yaml"
    spec.write_text(GOOD_SPEC.replace("OUT", str(tmp_path / "out")))
    with pytest.raises(SystemExit) as info:
        cli.main(["validate", str(spec)])
    out, err = capsys.readouterr()
    assert info.value.code == 0, out + err
    assert f"{spec}: ok" in out


@pytest.mark.slow  # fresh interpreters (2-5 s each on a shared CPU)
@pytest.mark.parametrize("args", [["--help"], ["schema"], ["backends"]])
def test_console_entry_with_broken_plugins(args: list[str], tmp_path: Path) -> None:
    """A real process: exits 0 without a traceback, and a hung import does not keep the
    interpreter alive at exit (daemon thread)."""
    site, _ = make_site(tmp_path)
    env = {**os.environ, "NLHF_PLUGIN_TIMEOUT": str(TIMEOUT), "COLUMNS": "300"}
    env.pop("NLHF_PLUGINS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    code = "import sys; from nlhf.cli import main; main(sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    if args == ["backends"]:
        assert "hang" in proc.stdout and "did not finish within" in proc.stdout


def test_keyboard_interrupt_is_not_swallowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during plugin loading stops nlhf (it is not a plugin failure)."""
    site = tmp_path / "site"
    site.mkdir()
    module = f"nlhf_ctrl_c_{uuid.uuid4().hex[:8]}"
    (site / f"{module}.py").write_text("raise KeyboardInterrupt\n")
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(f"[nlhf]\nctrl_c = {module}\n"))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("NLHF_PLUGINS", "ctrl_c")
    with pytest.raises(KeyboardInterrupt):
        plugins_mod.build_plugins()
