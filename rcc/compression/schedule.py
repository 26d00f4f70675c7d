"""Progressive schedules: how much of the plan's compression to reach at each of K steps.

A schedule yields strengths f₁ < f₂ < … ≤ 1 (fractions of the final plan; the stages turn a
strength into sparsity f·s, a rank between full and the target, or a kept budget):
- linear       f_j = j / K
- cosine       f_j = (1 − cos(π j / K)) / 2            small first and last steps
- exponential  f_j = (1 − 2^{−j}) / (1 − 2^{−K})         big first steps, halving after each
- adaptive     f_{j+1} = f_j + ½ · slack_j / rate_j        sized from the measured slack, where
               slack_j = m_j/m_dense − threshold and rate_j = (1 − m_j/m_dense) / f_j is the
               metric lost per unit of strength so far (first step: 1/K; at least 1/(4K)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rcc.errors import RccError

SCHEDULES = ("linear", "cosine", "exponential", "adaptive")
_SAFETY = 0.5


MAX_STEPS = 100  # each step runs every stage once (and evaluates): more is never a useful schedule
MAX_ATTEMPTS = 20


def check_schedule(kind: str, steps: int) -> None:
    if kind not in SCHEDULES:
        raise RccError(f"schedule {kind!r} is unknown; allowed: {', '.join(SCHEDULES)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise RccError(f"schedule steps {steps!r} is invalid; allowed: an integer ≥ 1 and ≤ {MAX_STEPS}")


def fixed_fraction(kind: str, step: int, steps: int) -> float:
    """Strength after ``step`` (1-based) of ``steps`` for the linear, cosine and exponential schedules."""
    if kind == "linear":
        return step / steps
    if kind == "cosine":
        return (1 - math.cos(math.pi * step / steps)) / 2
    if kind == "exponential":
        return (1 - 2.0 ** -step) / (1 - 2.0 ** -steps)
    raise RccError(f"schedule {kind!r} has no fixed fractions; allowed: linear, cosine, exponential")


def next_fraction(kind: str, steps: int, history: Sequence[tuple[float, float]], threshold: float) -> float | None:
    """The next strength, or None when the schedule is done.

    ``history`` holds (strength reached, metric relative to dense) for every finished step.
    """
    check_schedule(kind, steps)
    done = len(history)
    reached = history[-1][0] if history else 0.0
    if reached >= 1.0 - 1e-9:
        return None
    if kind != "adaptive":
        return fixed_fraction(kind, done + 1, steps) if done < steps else None
    if not history:
        return 1.0 / steps
    if done >= 4 * steps:  # never more than 4K steps, however small the slack gets
        return None
    fraction, relative = history[-1]
    slack = relative - threshold
    rate = (1.0 - relative) / fraction if fraction > 0 else 0.0
    step = 1.0 - fraction if rate <= 1e-9 else _SAFETY * max(slack, 0.0) / rate
    reached = fraction + max(step, 1.0 / (4 * steps))
    # Sums of 1/(4K) steps can stop a rounding error short of 1 (K = 6: 0.9999999999999996);
    # the last step must be exactly 1, or N:M patterns (applied only at full strength) never run.
    return 1.0 if reached >= 1.0 - 1e-9 else reached
