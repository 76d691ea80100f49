"""Exceptions with messages meant for users: what went wrong, where, and how to fix it."""

from __future__ import annotations


class NLHFError(Exception):
    """Base class of every error nlhf reports to a user (the CLI prints it without a traceback)."""


class SpecError(NLHFError):
    """A run spec is invalid; ``issues`` holds every problem found, already formatted."""

    def __init__(self, issues: list[str]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(self.issues))


class PluginError(NLHFError):
    """A plugin is misconfigured (duplicate name, bad registration)."""


class UnknownNameError(NLHFError, KeyError):
    """A name (backend, preference model, data format) is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class InputError(NLHFError, ValueError):
    """User-provided data (a matrix, a dataset, a model path) is invalid."""


class PreferenceUnavailableError(NLHFError):
    """The preference gave no usable answer (a server down or failing after every retry).
    The Nash loop then abandons the step, checkpoints the last finished one and re-raises,
    so ``--resume`` continues exactly once the preference answers again."""


class RunDirError(InputError):
    """The output directory conflicts with the run: it holds another run's outputs, or the
    checkpoint being resumed does not match the spec (docs/resume.md). The CLI exits 2."""

    exit_code = 2
