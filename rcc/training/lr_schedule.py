"""Learning-rate schedules: linear warm-up, then cosine, linear or constant."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "linear", "constant")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_factor: float = 0.0) -> float:
    """Multiplier of the base LR at ``step`` (0-based).

    Warm-up: (step + 1) / warmup. After it, with progress p = (step − warmup) / (total − warmup):
    cosine m + (1 − m)·½(1 + cos πp), linear m + (1 − m)(1 − p), constant 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return min_factor + (1 - min_factor) * (1 - progress)
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
