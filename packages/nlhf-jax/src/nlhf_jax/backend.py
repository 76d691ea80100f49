"""The jax backend object (:class:`nlhf.algorithms.protocols.Backend`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nlhf.errors import NLHFError
from nlhf.spec.capabilities import require

from nlhf_jax.plugin import CAPABILITIES


class JaxBackend:
    """Backend ``jax``: :class:`nlhf_jax.kernels.JaxKernels` plus ``train`` (task ``nash``
    on LLM specs, :mod:`nlhf_jax.trainer`; task ``preference_model``,
    :mod:`nlhf_jax.preference.train`; task ``evaluate``, :mod:`nlhf_jax.evaluate`)."""

    name = "jax"
    capabilities = CAPABILITIES

    def __init__(self) -> None:
        from nlhf_jax.kernels import JaxKernels

        self.kernels = JaxKernels()

    def make_nash_stepper(self, spec: Any, checkpoint: Path | None, plugins: Any = None) -> Any:
        """The :class:`nlhf.training.NashStepper` of a ``task: nash`` LLM spec (the core loop
        drives it; :func:`nlhf_jax.trainer.make_stepper`)."""
        from nlhf_jax.trainer import make_stepper

        return make_stepper(spec, checkpoint, plugins)

    def make_offline_stepper(self, spec: Any, checkpoint: Path | None, total_steps: int) -> Any:
        """The :class:`nlhf.training.offline.OfflineStepper` of a ``task: offline`` spec
        (DPO / IPO on pairs; :func:`nlhf_jax.offline.make_offline_stepper`)."""
        from nlhf_jax.offline import make_offline_stepper

        return make_offline_stepper(spec, checkpoint, total_steps)

    def train(self, spec: Any, output: Path, *, resume: bool = False) -> dict[str, Any]:
        """Run ``spec``. The capability check (:func:`nlhf.spec.capabilities.require`) runs
        once: an LLM ``task: nash``, ``offline`` and ``preference_model`` run it in the entry
        point every caller goes through (``nash_loop``, ``offline_loop``,
        ``train_preference_model``), the other tasks here; a multi-host run also here,
        before it joins the coordinator."""
        if getattr(spec.distributed, "multihost", False):  # one of several jax processes
            require(spec, self.name, self.capabilities)
            from nlhf_jax.multihost import train

            return train(spec, Path(output), resume=resume)
        if spec.task == "nash" and not spec.is_tabular:
            from nlhf_jax.trainer import train_nash

            return train_nash(spec, Path(output), resume=resume)
        if spec.task == "preference_model":
            from nlhf_jax.preference.train import train_preference_model

            return train_preference_model(spec, Path(output), resume=resume)
        if spec.task == "offline":
            from nlhf_jax.offline import train_offline

            return train_offline(spec, Path(output), resume=resume)
        require(spec, self.name, self.capabilities)
        if spec.task == "nash":
            from nlhf_jax.tabular import train_tabular

            return train_tabular(spec, Path(output), resume=resume)
        if spec.task == "evaluate":
            from nlhf_jax.evaluate import evaluate_spec

            return evaluate_spec(spec, Path(output))
        raise NLHFError(
            f"task {spec.task!r} is not supported by the jax backend yet (supported: nash, "
            "preference_model, evaluate, offline); use --backend torch"
        )
