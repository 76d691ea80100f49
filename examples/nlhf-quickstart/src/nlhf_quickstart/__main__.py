"""``python -m nlhf_quickstart``: Nash-MD-PG vs RLHF-PG on the quickstart spec."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nlhf_quickstart.task import QUICKSTART_SPEC


def main(argv: Sequence[str] | None = None) -> int:
    """Build the assets if missing, train both algorithms, print the comparison; a spec
    or input problem prints ``error: ...`` and returns 2 or 1, as ``nlhf run`` does."""
    import typer
    from nlhf.cli import report_errors

    parser = argparse.ArgumentParser(
        prog="python -m nlhf_quickstart",
        description="Nash-MD-PG vs RLHF-PG on a non-transitive population (offline, CPU).",
    )
    parser.add_argument("--spec", default=QUICKSTART_SPEC)
    parser.add_argument("--out", default=None, help="default: the spec's output.dir")
    parser.add_argument(
        "--set", action="append", default=[], help="override, e.g. training.steps=50"
    )
    args = parser.parse_args(argv)
    try:
        return report_errors(_run)(args.spec, args.set, args.out)
    except typer.Exit as exc:
        return exc.exit_code


def _run(spec_path: str, overrides: list[str], out: str | None) -> int:
    from nlhf.spec.load import load_spec
    from transformers.utils import logging as hf_logging

    from nlhf_quickstart.assets import ensure_assets
    from nlhf_quickstart.report import format_report, run_quickstart

    hf_logging.disable_progress_bar()
    spec = load_spec(spec_path, overrides)
    ensure_assets(spec)
    report = run_quickstart(spec, out or spec.output.dir)
    print(format_report(report))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
