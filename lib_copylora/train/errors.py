"""Typed errors of the trainer; every message is one line that says what is wrong and what to do."""

from ..core.errors import CopyLoraError


class TrainingError(CopyLoraError):
    """Training cannot start or go on (bad settings, nothing to train, a host that cannot do what was asked)."""


class TrainConfigError(TrainingError):
    """A training setting is out of range or contradicts another one."""


class OptimizerUnavailable(TrainingError):
    """The chosen optimiser needs a package that is not installed."""


class TrainingDiverged(TrainingError):
    """The loss became NaN or infinite; the message names the step."""
