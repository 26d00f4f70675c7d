"""Progressive schedules: fixed fractions checked by hand, the adaptive rule, bad values."""

import math

import pytest

from rcc.compression.schedule import SCHEDULES, check_schedule, fixed_fraction, next_fraction
from rcc.errors import RccError

# K = 4, worked out by hand:
#   linear       j/4                                   → 1/4, 2/4, 3/4, 1
#   cosine       (1 − cos(πj/4))/2: cos(π/4) = √2/2     → (1 − √2/2)/2 = 0.1464466, 1/2, (1 + √2/2)/2 = 0.8535534, 1
#   exponential  (1 − 2^−j)/(1 − 1/16) = (1 − 2^−j)·16/15 → 8/15, 12/15, 14/15, 15/15
EXPECTED_K4 = {
    "linear": [0.25, 0.5, 0.75, 1.0],
    "cosine": [(1 - math.sqrt(2) / 2) / 2, 0.5, (1 + math.sqrt(2) / 2) / 2, 1.0],
    "exponential": [8 / 15, 12 / 15, 14 / 15, 1.0],
}


def _run(kind: str, steps: int, relative, threshold: float = 0.9) -> list[float]:
    """Drive ``next_fraction`` to the end; ``relative(f)`` is the metric (÷ dense) measured at strength f."""
    history: list[tuple[float, float]] = []
    while (fraction := next_fraction(kind, steps, history, threshold)) is not None:
        history.append((fraction, relative(fraction)))
        assert len(history) <= 10 * steps, "schedule did not stop"
    return [f for f, _ in history]


@pytest.mark.parametrize("kind", list(EXPECTED_K4))
def test_fixed_schedules_for_four_steps(kind):
    assert [fixed_fraction(kind, j, 4) for j in range(1, 5)] == pytest.approx(EXPECTED_K4[kind], abs=1e-12)
    # next_fraction walks the same values whatever the metric says, then stops.
    assert _run(kind, 4, lambda f: 0.1) == pytest.approx(EXPECTED_K4[kind], abs=1e-12)


def test_cosine_takes_small_first_and_last_steps_and_exponential_big_first_ones():
    cos = [0.0] + EXPECTED_K4["cosine"]
    steps = [b - a for a, b in zip(cos, cos[1:])]
    assert steps[0] < 0.25 < steps[1] and steps[3] < 0.25 < steps[2]
    exp = [0.0] + EXPECTED_K4["exponential"]
    steps = [b - a for a, b in zip(exp, exp[1:])]
    assert steps == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])  # halving after each


@pytest.mark.parametrize("kind", ["linear", "cosine", "exponential"])
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 7, 10])
def test_fixed_fractions_increase_and_end_exactly_at_one(kind, steps):
    fractions = _run(kind, steps, lambda f: 1.0)
    assert len(fractions) == steps
    assert all(a < b for a, b in zip(fractions, fractions[1:]))
    assert fractions[-1] == 1.0 and 0 < fractions[0]


def test_schedule_is_done_once_strength_one_is_reached():
    assert next_fraction("linear", 4, [(1.0, 0.5)], 0.9) is None
    assert next_fraction("adaptive", 4, [(0.25, 1.0), (1.0, 0.99)], 0.9) is None
    assert next_fraction("linear", 4, [(0.25, 1.0)], 0.9) == 0.5


def test_adaptive_first_step_is_one_over_k():
    assert next_fraction("adaptive", 4, [], 0.9) == 0.25
    assert next_fraction("adaptive", 5, [], 0.5) == 0.2


def test_adaptive_step_follows_slack_over_rate():
    # f = 0.25, m = 0.95, threshold 0.9: slack 0.05, rate (1 − 0.95)/0.25 = 0.2,
    # step ½ · 0.05/0.2 = 0.125 → 0.375.
    assert next_fraction("adaptive", 4, [(0.25, 0.95)], 0.9) == pytest.approx(0.375)
    # m = 0.93: slack 0.03, rate 0.28, step ½ · 0.03/0.28 = 0.05357 → below 1/(4K) = 0.0625, so 0.3125.
    assert next_fraction("adaptive", 4, [(0.25, 0.93)], 0.9) == pytest.approx(0.3125)
    # m = 0.99: slack 0.09, rate 0.04, step 1.125 → capped at 1.
    assert next_fraction("adaptive", 4, [(0.25, 0.99)], 0.9) == 1.0
    # Nothing lost at all: no rate to extrapolate, go straight to the plan.
    assert next_fraction("adaptive", 4, [(0.25, 1.0)], 0.9) == 1.0


def test_adaptive_takes_bigger_steps_when_the_slack_is_larger():
    steps = [next_fraction("adaptive", 4, [(0.5, m)], 0.8) - 0.5 for m in (0.82, 0.86, 0.9, 0.95)]
    assert all(a < b for a, b in zip(steps, steps[1:]))
    # m = 0.95 at f = 0.5, threshold 0.8: slack 0.15, rate 0.1, step ½ · 1.5 = 0.75 → capped at 1 − 0.5.
    assert steps[-1] == pytest.approx(0.5)


def test_adaptive_below_threshold_still_moves_by_the_minimum_step():
    # Slack is negative: the step is the floor 1/(4K) = 1/16.
    assert next_fraction("adaptive", 4, [(0.25, 0.5)], 0.9) == pytest.approx(0.3125)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 6, 7, 9])
def test_adaptive_worst_case_finishes_at_exactly_one_within_4k_steps(steps):
    fractions = _run("adaptive", steps, lambda f: 0.0)  # always far below the threshold
    assert fractions[0] == pytest.approx(1 / steps)
    assert all(b - a == pytest.approx(1 / (4 * steps)) for a, b in zip(fractions, fractions[1:-1]))
    assert fractions[-1] == 1.0  # exactly: N:M patterns apply only at full strength
    assert all(a < b for a, b in zip(fractions, fractions[1:]))
    assert len(fractions) <= 4 * steps


def test_adaptive_stops_after_4k_steps_even_below_one():
    history = [(0.1 + 0.01 * i, 0.5) for i in range(16)]
    assert next_fraction("adaptive", 4, history, 0.9) is None
    assert next_fraction("adaptive", 4, history[:15], 0.9) is not None


def test_adaptive_generous_metric_finishes_in_two_steps():
    assert _run("adaptive", 4, lambda f: 1.0 - 0.01 * f) == [0.25, 1.0]


@pytest.mark.parametrize("kind, steps, words", [
    ("bogus", 4, ["'bogus'", "linear, cosine, exponential, adaptive"]),
    ("Linear", 4, ["'Linear'"]),
    ("linear", 0, ["steps 0", "≥ 1"]),
    ("adaptive", -2, ["steps -2", "≥ 1"]),
])
def test_bad_kind_or_steps_are_one_line_errors(kind, steps, words):
    for call in (lambda: check_schedule(kind, steps), lambda: next_fraction(kind, steps, [], 0.9)):
        with pytest.raises(RccError) as error:
            call()
        message = str(error.value)
        assert "\n" not in message
        for word in words:
            assert word in message


def test_adaptive_has_no_fixed_fractions():
    with pytest.raises(RccError, match="'adaptive' has no fixed fractions"):
        fixed_fraction("adaptive", 1, 4)
    assert SCHEDULES == ("linear", "cosine", "exponential", "adaptive")
