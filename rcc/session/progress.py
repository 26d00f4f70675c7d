"""Progress of a long session op, as one small event type both front ends understand."""

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


ProgressFn = Callable[[OpProgress], None]
