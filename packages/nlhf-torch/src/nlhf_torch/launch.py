"""Per-process entry point of a distributed torch run (docs/distributed.md)::

    DS_ACCELERATOR=cpu torchrun --nproc_per_node=2 -m nlhf_torch.launch spec.yaml \\
        [--set key=value ...] [--output DIR] [--resume] [--plugin MODULE:ATTR ...]

``nlhf run spec.yaml --nproc N`` starts this module under torch's elastic launcher. Every
process runs the spec's task (``nash``: :func:`nlhf_torch.trainer.train_nash`,
``preference_model``: :func:`nlhf_torch.preference.train.train_preference_model`); with
``distributed: {engine: deepspeed}`` they join one DeepSpeed engine and rank 0 writes the
run directory. The ``deepspeed`` launcher's ``--local_rank=N`` is accepted (and ignored:
the rank comes from the environment). ``--plugin`` adds a pluggy plugin object (e.g. one
registering an oracle) to the entry-point plugins.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from nlhf.errors import InputError, NLHFError

from nlhf_torch.distributed import parse_local_rank


def load_plugin(ref: str) -> object:
    """Import ``MODULE:ATTR`` (or a module) as a plugin object."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError(f"--plugin {ref}: cannot import {module_name!r}: {err}") from None
    if not attr:
        return module
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InputError(f"--plugin {ref}: {module_name!r} has no attribute {attr!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one process of a torch run; returns the exit status."""
    _, rest = parse_local_rank(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m nlhf_torch.launch")
    parser.add_argument("spec", help="the YAML run spec")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--output", help="run directory (default: the spec's output.dir)")
    parser.add_argument("--resume", action="store_true", help="continue the latest checkpoint")
    parser.add_argument("--plugin", dest="plugins", action="append", default=[])
    args = parser.parse_args(rest)
    try:
        from nlhf.plugins import build_plugins
        from nlhf.spec import load_spec

        spec = load_spec(args.spec, args.overrides)
        if args.output:
            spec.output.dir = str(args.output)
        output = Path(spec.output.dir)
        if spec.task == "preference_model":
            if args.plugins:
                raise InputError("--plugin: task preference_model takes no plugins")
            from nlhf_torch.preference.train import train_preference_model

            train_preference_model(spec, output, resume=args.resume)
        elif spec.task == "nash":
            from nlhf_torch.trainer import train_nash

            plugins = (
                build_plugins(extra=[load_plugin(p) for p in args.plugins])
                if args.plugins
                else None
            )
            train_nash(spec, output, resume=args.resume, plugins=plugins)
        else:
            raise InputError(
                f"task: {spec.task!r} has no distributed launch; run it with `nlhf run` "
                "on one process"
            )
    except NLHFError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
