"""Progress of a long session op, as one small event type both front ends understand.

Every phase of an op (loading, calibration, a stage's layers, evaluation, saving, checkout,
training steps) reports ``done`` of ``total`` as soon as it starts (``done=0``) and after each
unit, so a front end can show the phase and a percentage from the op's first second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class OpProgress:
    """``done`` of ``total`` units (layers, batches, steps) of ``phase``; ``metric`` when a step was evaluated.

    ``loss`` is set on each training step (``done`` is then the step, counted from 1): like
    ``metric`` it is a chart point, so a front end keeps every one of them.
    """

    op: str
    phase: str
    done: int = 0
    total: int | None = None
    detail: str = ""
    metric: float | None = None  # the eval metric of an attempt that just finished
    params: int | None = None  # numbers stored by the selected layers after that attempt
    accepted: bool | None = None
    loss: float | None = None  # the training loss of the step that just finished
    stored_bytes: int | None = None  # bytes the whole model stores (as the compressed export) after that attempt

    @property
    def is_point(self) -> bool:
        """A chart point (an evaluated attempt or step, a training loss): never to be dropped."""
        return self.metric is not None or self.loss is not None

    @property
    def fraction(self) -> float | None:
        """How far the phase is, 0…1 (None when it is not counted)."""
        return None if not self.total else min(max(self.done / self.total, 0.0), 1.0)


ProgressFn = Callable[[OpProgress], None]
BatchProgress = Callable[[int, int, str], None]  # (done, total, what): the eval and calibration loops' callback


def phase_progress(op: str, phase: str, progress: ProgressFn | None) -> BatchProgress | None:
    """A ``(done, total, what)`` callback reporting as OpProgress events of ``phase`` (None without ``progress``)."""
    if progress is None:
        return None

    def report(done: int, total: int, what: str) -> None:
        progress(OpProgress(op=op, phase=phase, done=done, total=total, detail=what))

    return report
