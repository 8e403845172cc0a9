"""What a training loop does after a step besides the step itself, as callbacks (OLMo-core's are the model): each
is given the trainer and a :class:`StepEnd` and may add metrics to it.

The loops of :class:`~taalm_dist.programs.meta_train.MetaTrainer` (validation, CKL validation, best-φ selection, the
checkpoint cadence) and of :class:`~taalm_dist.programs.document_training.DocumentTrainer` (the checkpoint cadence,
per epoch) are built from them; a callback is called on every rank (they run θ and φ, whose ZeRO-3 forwards every
rank takes part in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class StepEnd:
    """The moment after a step: its number (``step``, 1-based; 0: before the first), whether it is the last
    (``final``: the step budget is spent, or the run is stopping), whether the baselines are wanted too (the
    first validation), and the ``metrics`` logged for it, which callbacks extend."""

    step: int
    final: bool = False
    baselines: bool = False
    metrics: dict = field(default_factory=dict)


class Callback(Protocol):
    """Something done after steps."""

    def on_step_end(self, trainer, end: StepEnd) -> None:
        """Do it when due (every rank calls it); metrics go into ``end.metrics``."""


@dataclass(frozen=True)
class Every:
    """Due every ``n`` steps (0: never), at the last step, and whenever baselines are asked."""

    n: int

    def due(self, end: StepEnd) -> bool:
        return bool(self.n) and (end.baselines or end.final or end.step % self.n == 0)


@dataclass
class CheckpointCadence:
    """When a checkpoint is due besides the last one: every ``every`` steps (0: never by count) or once ``every_s``
    seconds passed since the last (None: never by time; the time is decided by the caller, rank 0's clock shared)."""

    every: int = 0
    every_s: float | None = None

    def due(self, step: int, time_due: bool = False) -> bool:
        return bool(self.every and step % self.every == 0) or time_due


def run_callbacks(callbacks: list, trainer, end: StepEnd) -> dict:
    """Call each of ``callbacks`` in order on ``end``; returns its metrics."""
    for cb in callbacks:
        cb.on_step_end(trainer, end)
    return end.metrics
