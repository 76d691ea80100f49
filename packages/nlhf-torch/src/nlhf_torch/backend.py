"""The torch backend object (:class:`nlhf.algorithms.protocols.Backend`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nlhf.errors import NLHFError
from nlhf.multinode import Nodes
from nlhf.spec.capabilities import require

from nlhf_torch.plugin import CAPABILITIES


class TorchBackend:
    name = "torch"
    capabilities = CAPABILITIES

    def __init__(self) -> None:
        from nlhf_torch.kernels import TorchKernels
        from nlhf_torch.models import skip_deepspeed_probe

        skip_deepspeed_probe()  # no DeepSpeed import when a run does not use it

        self.kernels = TorchKernels()

    def make_nash_stepper(self, spec: Any, checkpoint: Path | None, plugins: Any = None) -> Any:
        """The :class:`nlhf.training.NashStepper` of a ``task: nash`` LLM spec (the core loop
        drives it; :func:`nlhf_torch.trainer.make_stepper`)."""
        from nlhf_torch.trainer import make_stepper

        return make_stepper(spec, checkpoint, plugins)

    def make_offline_stepper(self, spec: Any, checkpoint: Path | None, total_steps: int) -> Any:
        """The :class:`nlhf.training.offline.OfflineStepper` of a ``task: offline`` spec
        (DPO / IPO on pairs; :func:`nlhf_torch.offline.make_offline_stepper`)."""
        from nlhf_torch.offline import make_offline_stepper

        return make_offline_stepper(spec, checkpoint, total_steps)

    def train(self, spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
        """Run ``spec``. The capability check (:func:`nlhf.spec.capabilities.require`) runs
        once: an LLM ``task: nash``, ``offline`` and ``preference_model`` run it in the entry
        point every caller goes through (``nash_loop``, ``offline_loop``,
        ``train_preference_model``), the other tasks here."""
        if spec.task == "nash" and not spec.is_tabular:
            from nlhf_torch.trainer import train_nash

            return train_nash(spec, Path(output), resume=resume)
        if spec.task == "preference_model":
            from nlhf_torch.preference.train import train_preference_model

            return train_preference_model(spec, Path(output), resume=resume)
        if spec.task == "offline":
            from nlhf_torch.offline import train_offline

            return train_offline(spec, Path(output), resume=resume)
        require(spec, self.name, self.capabilities)
        if spec.task == "nash":
            from nlhf_torch.tabular import train_tabular

            return train_tabular(spec, Path(output), resume=resume)
        if spec.task == "evaluate":
            from nlhf_torch.evaluate import evaluate_spec

            return evaluate_spec(spec, Path(output))
        raise NLHFError(f"task {spec.task!r} is not supported by the torch backend yet")

    def export_model(self, model_dir: Path, dest: Path, spec: Any) -> None:
        """``nlhf export``: the merged policy of a checkpoint (:mod:`nlhf_torch.export`)."""
        from nlhf_torch.export import export_model

        export_model(model_dir, dest, spec)

    def launch_command(
        self,
        spec: Any,
        spec_path: str | Path,
        nproc: int,
        *,
        overrides: Sequence[str] = (),
        output: str | Path | None = None,
        resume: bool = False,
        nodes: Nodes | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        """``(argv, extra environment)`` that runs ``spec_path`` on ``nproc`` local
        processes under torch's elastic launcher (``nlhf run --nproc N``; with ``nodes``,
        this machine's share of a multi-node run, ``--nnodes N --node-rank R``); needs
        ``distributed.engine: deepspeed`` and a task in ``capabilities.launch_tasks``
        (:func:`nlhf.spec.capabilities.require`). ``DS_ACCELERATOR=cpu`` when there is no CUDA.
        The DeepSpeed config is built here first, so a batch that ``nproc`` does not
        divide or a conflicting JSON is one clear error instead of N failing processes."""
        from nlhf_torch.distributed import launch_command, launch_env

        world = nproc if nodes is None else nodes.world_size(nproc)
        require(spec, self.name, self.capabilities, nproc=world)  # engine, task
        import importlib.util

        from nlhf_torch.distributed import DEEPSPEED_MISSING, build_deepspeed_config

        if importlib.util.find_spec("deepspeed") is None:
            raise NLHFError(DEEPSPEED_MISSING)
        build_deepspeed_config(spec, world)  # batch layout, JSON conflicts: before any launch
        extra: list[str] = []
        for item in overrides:
            extra += ["--set", item]
        if output is not None:
            extra += ["--output", str(output)]
        if resume:
            extra.append("--resume")
        import torch

        return launch_command(str(spec_path), nproc, extra, nodes), launch_env(
            cpu=not torch.cuda.is_available()
        )
