"""The ``nlhf`` command line: ``run``, ``validate``, ``schema``, ``backends``, ``solve``,
plus commands added by plugins through the ``nlhf_register_commands(cli)`` hook.

Heavy frameworks are imported only by the backend a ``run`` asks for: ``nlhf --help``,
``validate``, ``schema`` and ``backends`` never import torch or jax. Every
:class:`nlhf.errors.NLHFError` is printed as ``error: ...`` on stderr (exit 1; a
:class:`~nlhf.errors.SpecError` prints one issue per line and exits 2), without a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

import nlhf
from nlhf.errors import NLHFError, SpecError
from nlhf.formatting import flatten, format_value
from nlhf.multinode import Nodes, check_nodes

SPEC_ERROR_EXIT = 2
ERROR_EXIT = 1

F = TypeVar("F", bound=Callable[..., Any])

SpecArg = Annotated[Path, typer.Argument(help="YAML run spec (see specs/ and docs/spec.md).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override a spec field, e.g. --set algorithm.tau=0.05 (repeatable; "
        "the value is parsed as YAML; a.0.b indexes a list).",
    ),
]


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def report_errors(func: F) -> F:
    """Turn :class:`NLHFError` into a clean message and exit code (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SpecError as exc:
            for issue in exc.issues:
                _err().print(issue, markup=False)
            count = len(exc.issues)
            _err().print(f"error: {count} problem{'s' * (count != 1)} in the spec", markup=False)
            raise typer.Exit(SPEC_ERROR_EXIT) from None
        except NLHFError as exc:
            _err().print(f"error: {exc}", markup=False)
            raise typer.Exit(getattr(exc, "exit_code", ERROR_EXIT)) from None

    return wrapper  # type: ignore[return-value]


def _load(spec: Path, overrides: Sequence[str] | None) -> Any:
    from nlhf.spec.load import load_spec

    return load_spec(spec, list(overrides or ()))


def _preflight(run_spec: Any, spec: Path, overrides: Sequence[str] | None, output: Any) -> None:
    """Output directory and memory checks before any model loads (:mod:`nlhf.spec.preflight`)."""
    from nlhf.spec.preflight import check_preflight

    check_preflight(run_spec, spec, list(overrides or ()), output=output)


def _check_memory(run_spec: Any, spec: Path, overrides: Sequence[str] | None) -> None:
    """The memory part of :func:`_preflight` (and oracle names), e.g. once a plugin's
    ``nlhf_prepare_spec`` has written the model whose ``config.json`` it reads."""
    from nlhf.spec.preflight import check_preflight

    check_preflight(run_spec, spec, list(overrides or ()), outputs=False)


def _backend(name: str) -> Any:
    """Instantiate backend ``name``; if its plugin failed to load, say why."""
    from nlhf.plugins import get_backend

    _backend_entry(name)
    return get_backend(name)


def _backend_entry(name: str) -> Any:
    """The registry entry of backend ``name`` (imports nothing); if its plugin failed to
    load, the error says why."""
    from nlhf.errors import UnknownNameError
    from nlhf.plugins import get_plugins

    try:
        return get_plugins().backends.get(name)
    except UnknownNameError as exc:
        for failure in get_plugins().failures:
            if failure.name == name:
                raise UnknownNameError(
                    f"{exc}; the plugin {name!r} ({failure.package}) failed to load: "
                    f"{failure.error}"
                ) from None
        raise


def _describe(spec: Any) -> str:
    parts = [f"task {spec.task}"]
    if spec.algorithm is not None:
        parts.append(f"algorithm {spec.algorithm.name}")
    if spec.preference is not None:
        parts.append(f"preference {spec.preference.name}")
    return ", ".join(parts)


PROGRESS_BAR_SWITCHES = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")
"""Environment switches of the Hugging Face libraries' progress bars (transformers follows
huggingface_hub's), read when they are imported; launched processes inherit them."""


def library_progress_bars(enabled: bool) -> None:
    """Show or hide the progress bars of transformers, huggingface_hub and datasets (``nlhf
    run`` hides them unless ``--verbose``): the environment switches for libraries not yet
    imported and for launched processes, and the libraries' own switches when imported."""
    import os

    for name in PROGRESS_BAR_SWITCHES:
        os.environ[name] = "0" if enabled else "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    if "datasets" in sys.modules:
        import datasets

        (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()


def _prepare(spec: Any) -> None:
    """Let every plugin build the files ``spec`` needs (the ``nlhf_prepare_spec`` hook):
    once per ``nlhf run``, just before training or a distributed launch."""
    from nlhf.plugins import get_plugins

    get_plugins().manager.hook.nlhf_prepare_spec(spec=spec)


def default_backend(spec: Any) -> str:
    """``numpy`` for tabular specs, ``torch`` otherwise."""
    return "numpy" if getattr(spec, "is_tabular", False) else "torch"


def _check_backend(
    run_spec: Any, name: str, spec: Path, overrides: Sequence[str] | None, nproc: int = 1
) -> str:
    """Check ``run_spec`` against backend ``name``'s declared capabilities, before any
    model loads (:func:`nlhf.spec.capabilities.check_spec_file`: one located
    :class:`SpecError`, exit 2); returns what was checked, for ``validate``'s ok line.
    An unregistered backend is left to :func:`_backend` to report."""
    from nlhf.errors import UnknownNameError
    from nlhf.spec.capabilities import check_spec_file

    try:
        caps = check_spec_file(run_spec, name, spec, list(overrides or ()), nproc=nproc)
    except UnknownNameError:
        return f"backend {name} is not installed: its capabilities were not checked"
    if caps is None:
        return f"backend {name} declares no capabilities: checked the schema only"
    return f"runs on backend {name}" + (f" with --nproc {nproc}" if nproc > 1 else "")


def _front_checks(
    run_spec: Any,
    name: str,
    spec: Path,
    overrides: Sequence[str] | None,
    nproc: int,
    output: Path | None,
    *,
    outputs: bool = True,
) -> str:
    """Every problem ``validate`` and ``run`` find before any model loads, at once (one
    :class:`SpecError`): this machine (:func:`_preflight`; ``outputs=False``, on a node
    that writes no files: not the output directory), then the backend's capabilities
    (:func:`_check_backend`, whose note is returned)."""
    issues: list[str] = []
    checked = ""
    try:
        if outputs:
            _preflight(run_spec, spec, overrides, output)
        else:
            _check_memory(run_spec, spec, overrides)
    except SpecError as exc:
        issues += exc.issues
    try:
        checked = _check_backend(run_spec, name, spec, overrides, nproc)
    except SpecError as exc:
        issues += exc.issues
    if issues:
        raise SpecError(issues)
    return checked


# -------------------------------------------------------------------------- commands
@report_errors
def run(
    spec: SpecArg,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend", "-b", help="Backend name (default: numpy for tabular specs, else torch)."
        ),
    ] = None,
    overrides: SetOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output directory (overrides output.dir).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Resume from the latest checkpoint in the output dir.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Delete the outputs of an earlier run in the output dir (checkpoints "
            "included) before starting; without it such a directory is refused.",
        ),
    ] = False,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            help="Processes on this machine (> 1: the backend's distributed launch, e.g. "
            "torch + `distributed: {engine: deepspeed}`; see docs/distributed.md).",
        ),
    ] = 1,
    nnodes: Annotated[
        int,
        typer.Option(
            "--nnodes",
            help="Machines in a multi-node launch; run the same command on each with its "
            "--node-rank (docs/distributed.md).",
        ),
    ] = 1,
    node_rank: Annotated[
        int, typer.Option("--node-rank", help="This machine's index, 0 .. nnodes-1.")
    ] = 0,
    master_addr: Annotated[
        str | None,
        typer.Option("--master-addr", help="Address of node 0, reachable from every node."),
    ] = None,
    master_port: Annotated[
        str | None,
        typer.Option("--master-port", help="Free TCP port on node 0 (default 29500)."),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Also show the libraries' progress bars (transformers' 'Loading weights', "
            "'Writing model shards', datasets); nlhf's own progress and metrics always show.",
        ),
    ] = False,
) -> None:
    """Run a spec: train, or solve a tabular game, and write outputs."""
    import contextlib

    library_progress_bars(verbose)
    run_spec = _load(spec, overrides)
    if output is not None:
        run_spec.output.dir = str(output)
    name = backend or default_backend(run_spec)
    if nproc < 1:
        from nlhf.errors import InputError

        raise InputError(f"--nproc must be >= 1, got {nproc}")
    nodes = check_nodes(nnodes, node_rank, master_addr, master_port)
    launched = nproc > 1 or nodes.explicit
    if nodes.explicit:
        _check_multinode_backend(name, nodes)
    owner = nodes.owns_outputs and _owns_outputs(run_spec)
    world = nodes.world_size(nproc)
    _front_checks(run_spec, name, spec, overrides, world, output, outputs=owner)
    engine = _backend(name)
    out_dir = Path(run_spec.output.dir)
    from nlhf.runio import claim_output_dir

    # the one owner of out_dir (docs/resume.md); launched processes and the other nodes
    # of a multi-node run do not claim it
    claim = (
        claim_output_dir(run_spec, out_dir, resume=resume, overwrite=overwrite)
        if owner
        else contextlib.nullcontext()
    )
    with claim:
        if launched:
            raise typer.Exit(
                _launch(
                    engine, name, run_spec, spec, nproc, overrides, output, resume, out_dir, nodes
                )
            )
        _err().print(f"nlhf: {spec}: {_describe(run_spec)} on backend {name} -> {out_dir}")
        _prepare(run_spec)
        _check_memory(run_spec, spec, overrides)  # again: prepare may have built the model
        summary = engine.train(run_spec, out_dir, resume=resume) or {}
    console = _out()
    if not owner:
        console.print(f"nlhf: this process is done; process 0 writes the outputs to {out_dir}")
        return
    headline = {k: v for k, v in summary.items() if isinstance(v, int | float | str | bool)}
    if headline:
        table = Table(title="summary", show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value")
        for key, value in headline.items():
            table.add_row(key, format_value(value))
        console.print(table)
    console.print(f"outputs: {out_dir} (summary.json, metrics.jsonl, spec.resolved.yaml)")


def _owns_outputs(run_spec: Any) -> bool:
    """Whether this process writes the run directory: not a jax process with
    ``distributed.process_id`` > 0 (each such process is started by its own ``nlhf run``)."""
    return not getattr(run_spec.distributed, "process_id", None)


def _check_multinode_backend(name: str, nodes: Nodes) -> None:
    """``--nnodes``/``--master-addr`` need a backend whose launch takes them."""
    from nlhf.errors import InputError
    from nlhf.spec.capabilities import capabilities_of

    try:
        caps = capabilities_of(name)
    except NLHFError:
        return  # an unknown backend is reported by _backend
    if caps is None or caps.launch_tasks:
        return
    raise InputError(
        f"--nnodes {nodes.count}: backend {name!r} has no multi-node launch; drop --nnodes, "
        "--node-rank, --master-addr and --master-port (the torch backend launches "
        "DeepSpeed runs on several nodes; a jax run joins several hosts through its spec: "
        "distributed.coordinator_address, num_processes, process_id, see docs/distributed.md)"
    )


def _launch(
    engine: Any,
    name: str,
    run_spec: Any,
    spec: Path,
    nproc: int,
    overrides: Sequence[str] | None,
    output: Path | None,
    resume: bool,
    out_dir: Path,
    nodes: Nodes | None = None,
) -> int:
    """Re-run ``spec`` on ``nproc`` processes with the backend's launch command (a
    ``launch_command(spec, path, nproc, overrides=, output=, resume=)`` method returning
    ``(argv, extra env)``; on several nodes also ``nodes=``, :class:`nlhf.multinode.Nodes`);
    returns the launcher's exit status."""
    import inspect
    import os

    launch = getattr(engine, "launch_command", None)
    if not callable(launch):
        raise NLHFError(
            f"--nproc {nproc}: backend {name!r} has no distributed launch; run with --nproc 1 "
            "(the torch backend launches DeepSpeed runs)"
        )
    extra: dict[str, Any] = {}
    where, failed = f"{nproc} processes", f"{nproc}-process run failed"
    if nodes is not None and nodes.explicit:
        if "nodes" not in inspect.signature(launch).parameters:
            raise NLHFError(
                f"--nnodes {nodes.count}: backend {name!r} launches on one machine only; "
                "drop --nnodes, --node-rank, --master-addr and --master-port"
            )
        extra["nodes"] = nodes
        where = (
            f"node {nodes.rank} of {nodes.count}, {nproc} processes here, "
            f"{nodes.world_size(nproc)} in all"
        )
        failed = f"node {nodes.rank} of {nodes.count}: the run failed"
    args = {"overrides": list(overrides or ()), "output": output, "resume": resume, **extra}
    argv, env = launch(run_spec, spec, nproc, **args)
    _err().print(f"nlhf: {spec}: {_describe(run_spec)} on backend {name}, {where} -> {out_dir}")
    _err().print(f"nlhf: {' '.join(argv)}", markup=False)
    _prepare(run_spec)  # in this process, so that the launched ones find the files
    code = _run_launcher(argv, {**os.environ, **env})
    if code != 0:
        _err().print(f"error: {failed} (exit {code}); see the log above")
    elif nodes is None or nodes.owns_outputs:
        _out().print(f"outputs: {out_dir} (summary.json, metrics.jsonl, spec.resolved.yaml)")
    else:
        _out().print(f"nlhf: node {nodes.rank} is done; node 0 writes the outputs to {out_dir}")
    return code


def _run_launcher(argv: list[str], env: dict[str, str]) -> int:
    """Run the launcher in its own session and relay signals: the first SIGTERM or SIGINT
    becomes one SIGTERM to the launcher, which passes it to every rank (each finishes its
    step, the ranks write one checkpoint together, and exit); a second one kills the whole
    process group at once. Returns the launcher's status, or 128 + the signal relayed."""
    import os
    import signal
    import subprocess

    proc = subprocess.Popen(argv, env=env, start_new_session=True)
    received: list[int] = []

    def relay(signum: int, frame: object) -> None:
        if received:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGTERM)
        received.append(signum)

    previous = {s: signal.signal(s, relay) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return 128 + received[0] if received else code


@report_errors
def validate(
    spec: SpecArg,
    overrides: SetOpt = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            "-b",
            help="Also check what this backend runs (default: as `run` picks it: numpy for "
            "tabular specs, else torch); `nlhf backends` lists the capabilities.",
        ),
    ] = None,
    nproc: Annotated[
        int, typer.Option("--nproc", help="Also check a launch on this many processes.")
    ] = 1,
) -> None:
    """Check a spec, and what its backend runs, reporting every problem at once (exit 2)."""
    run_spec = _load(spec, overrides)
    name = backend or default_backend(run_spec)
    if backend is not None:
        _backend_entry(name)
    checked = _front_checks(run_spec, name, spec, overrides, nproc, None)
    _out().print(f"{spec}: ok ({_describe(run_spec)}; {checked})", markup=False)


@report_errors
def schema() -> None:
    """Print the JSON schema of the run spec."""
    from nlhf.spec.models import RunSpec

    typer.echo(json.dumps(RunSpec.model_json_schema(), indent=2))


@report_errors
def backends() -> None:
    """List backends (name, package, version, framework importable) and broken plugins."""
    from nlhf.plugins import get_plugins

    plugins = get_plugins()
    _add_plugin_commands(get_app(plugins=False))  # records plugin commands that fail or clash
    table = Table(title="nlhf backends")
    for column in ("name", "package", "version", "importable", "description"):
        table.add_column(column)
    for entry in plugins.backends:
        missing = entry.missing()
        ok = "yes" if not missing else f"no (missing: {', '.join(missing)})"
        table.add_row(entry.name, entry.package, entry.version, ok, entry.description)
    console = _out()
    console.print(table)
    _print_capabilities(plugins, console)
    if len(plugins.preference_models):
        console.print(
            "preference models from plugins: " + ", ".join(plugins.preference_models.names())
        )
    if plugins.failures:
        failed = Table(title="plugins that failed to load (skipped)")
        for column in ("plugin", "package", "error"):
            failed.add_column(column)
        for failure in plugins.failures:
            failed.add_row(failure.name, failure.package, failure.error)
        console.print(failed)


def _print_capabilities(plugins: Any, console: Console) -> None:
    """What each backend runs, from its registration (:mod:`nlhf.spec.capabilities`)."""
    from nlhf.errors import PluginError
    from nlhf.spec.capabilities import capabilities_of

    table = Table(title="what each backend runs (`nlhf validate SPEC --backend NAME` checks)")
    for column in ("backend", "capability", "supported"):
        table.add_column(column)
    for entry in plugins.backends:
        try:
            caps = capabilities_of(entry.name, plugins)
        except PluginError as exc:
            rows = [("(invalid)", str(exc))]
        else:
            rows = caps.describe() if caps is not None else [("(none declared)", "")]
        for i, (key, value) in enumerate(rows):
            table.add_row(entry.name if i == 0 else "", key, value)
        table.add_section()
    console.print(table)


@report_errors
def solve(
    spec: SpecArg,
    overrides: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Solve a tabular spec exactly: regularised NE (+ gap) and maximal lottery."""
    from nlhf.errors import InputError

    run_spec = _load(spec, overrides)
    if not run_spec.is_tabular:
        raise InputError(
            f"{spec}: `nlhf solve` needs a tabular preference (preference.name: tabular), "
            f"got {run_spec.preference.name if run_spec.preference else 'none'}"
        )
    _check_memory(run_spec, spec, overrides)
    from nlhf.tabular import solve_spec

    result = solve_spec(run_spec)
    if as_json:
        from nlhf.runio import _jsonable

        typer.echo(json.dumps(_jsonable(result), indent=2))
        return
    _print_solution(result)


def _print_solution(result: dict[str, Any]) -> None:
    """Vector entries (per response) as the columns of one table, the rest as key/value
    rows; nested mappings are flattened to dotted keys (``x.policy`` shows as ``x``)."""
    console = _out()
    flat = flatten(result)
    responses = [str(r) for r in flat.pop("responses", None) or []]
    vectors = {
        key.removesuffix(".policy"): list(value)
        for key, value in flat.items()
        if isinstance(value, list | tuple)
        and value
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    }
    size = max((len(v) for v in vectors.values()), default=0)
    if len(responses) < size:
        responses += [f"y{i}" for i in range(len(responses), size)]
    if vectors:
        table = Table(title="policies")
        table.add_column("response")
        for key in vectors:
            table.add_column(key, justify="right")
        for i, response in enumerate(responses):
            table.add_row(
                response, *(f"{v[i]:.6f}" if i < len(v) else "" for v in vectors.values())
            )
        console.print(table)
    scalars = Table(show_header=False, title="solution")
    scalars.add_column("key", style="bold")
    scalars.add_column("value")
    shown = {f"{k}.policy" for k in vectors} | set(vectors)
    for key, value in flat.items():
        if key not in shown:
            scalars.add_row(
                key, format_value(value) if not isinstance(value, list) else json.dumps(value)
            )
    console.print(scalars)


# ------------------------------------------------------------------------------ app
def _version(value: bool) -> None:
    if value:
        typer.echo(f"nlhf {nlhf.__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """nlhf: Nash Learning from Human Feedback. Write one YAML spec, run it on a backend."""


def _command_name(info: Any) -> str:
    """The name typer gives a registered command or group."""
    if info.name:
        return str(info.name)
    callback = getattr(info, "callback", None) or getattr(info, "typer_instance", None)
    return str(getattr(callback, "__name__", "") or "").lower().replace("_", "-")


def _add_plugin_commands(app: typer.Typer) -> None:
    """Call every plugin's ``nlhf_register_commands(cli)``; a plugin that fails (any
    exception or ``sys.exit``) or adds a command named like a built-in one (or like an
    earlier plugin's) is reported (stderr and ``nlhf backends``) and that part skipped."""
    from nlhf.plugins import PluginFailure, describe_error, get_plugins

    try:
        plugins = get_plugins()
    except NLHFError as exc:
        _err().print(f"warning: plugins not loaded: {exc}", markup=False)
        return

    def report(plugin: str, error: str) -> None:
        package = plugins.packages.get(plugin, (plugin, "?"))[0]
        if not any(f.name == plugin and f.error == error for f in plugins.failures):
            plugins.failures.append(PluginFailure(plugin, package, error))
        _err().print(f"warning: plugin {plugin!r}: {error}", markup=False)

    builtin = {_command_name(i) for i in [*app.registered_commands, *app.registered_groups]}
    taken = set(builtin)
    for impl in plugins.manager.hook.nlhf_register_commands.get_hookimpls():
        commands, groups = len(app.registered_commands), len(app.registered_groups)
        try:
            impl.function(cli=app)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            del app.registered_commands[commands:], app.registered_groups[groups:]
            report(impl.plugin_name, f"failed to add commands: {describe_error(exc)}")
            continue
        for added in (app.registered_commands, app.registered_groups):
            start = commands if added is app.registered_commands else groups
            kept = []
            for info in added[start:]:
                name = _command_name(info)
                if name in taken:
                    whose = "a built-in command" if name in builtin else "another plugin's"
                    report(impl.plugin_name, f"command {name!r} is {whose}; refused")
                    continue
                taken.add(name)
                kept.append(info)
            added[start:] = kept


def _needs_plugin_commands(args: Sequence[str]) -> bool:
    """Whether the command line can reach a plugin's command: the root ``--help`` (or no
    arguments), or a command that is not built in. Built-in commands never import the
    plugins to build the application (they load the ones they need, lazily)."""
    command = next((a for a in args if not a.startswith("-")), None)
    if command is None:
        return not args or "--help" in args
    builtin = get_app(plugins=False)
    return command not in {_command_name(i) for i in builtin.registered_commands}


def get_app(*, plugins: bool = True) -> typer.Typer:
    """Build the typer application (with plugin commands unless ``plugins=False``)."""
    app = typer.Typer(
        name="nlhf",
        help="nlhf: Nash Learning from Human Feedback (Munos et al., arXiv:2312.00886).",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
    )
    app.callback()(_root)
    app.command()(run)
    app.command()(validate)
    app.command()(schema)
    app.command()(backends)
    app.command()(solve)
    from nlhf.evaluation.cli import register as _register_eval

    _register_eval(app)  # `eval` and `report`
    from nlhf.preference.serve_cli import register as _register_serve

    _register_serve(app)  # `serve`: a preference model over HTTP
    from nlhf.preference.eval_cli import register as _register_preference_eval

    _register_preference_eval(app)  # `preference-eval`: a saved model on a pairs file
    from nlhf.export import register as _register_export

    _register_export(app)  # `export`: a merged model directory to publish
    if plugins:
        builtin = len(app.registered_commands)
        _add_plugin_commands(app)
        for info in app.registered_commands[builtin:]:
            if info.callback is not None:
                info.callback = report_errors(info.callback)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``nlhf``."""
    args = list(argv) if argv is not None else sys.argv[1:]
    app = get_app(plugins=_needs_plugin_commands(args))
    try:
        app(args=args, prog_name="nlhf")
    except SpecError as exc:  # raised outside a command (defensive)
        for issue in exc.issues:
            _err().print(issue, markup=False)
        sys.exit(SPEC_ERROR_EXIT)
    except NLHFError as exc:
        _err().print(f"error: {exc}", markup=False)
        sys.exit(getattr(exc, "exit_code", ERROR_EXIT))


if __name__ == "__main__":  # pragma: no cover
    main()
