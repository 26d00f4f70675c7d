"""Rung evaluation and the prune rules: the Wilson bound, nested balanced subsets, domination."""

import math
from collections import Counter

import pytest

from rcc.data.registry import load_dataset
from rcc.errors import RccError
from rcc.search.pruning import (
    MemoryFeatureCache, PruningConfig, dominated_reason, nested_subsets, wilson_upper,
)
from rcc.search.trials import dominates, pareto_front


def test_the_wilson_upper_limit_matches_its_formula_and_tightens_with_more_items():
    # p̂ = 0.8 on n = 50 with z = 2: (0.8 + 0.04 + 2·√(0.0032 + 0.0004)) / 1.08
    assert wilson_upper(0.8, 50, 2.0) == pytest.approx((0.84 + 2 * math.sqrt(0.0036)) / 1.08)
    assert wilson_upper(0.0, 10, 2.0) > 0 and wilson_upper(1.0, 10, 2.0) == 1.0
    assert wilson_upper(0.7, 200, 2.0) < wilson_upper(0.7, 50, 2.0) < wilson_upper(0.7, 10, 2.0)
    assert wilson_upper(0.7, 50, 0.0) == pytest.approx(0.7)


def test_rungs_are_nested_class_balanced_and_end_with_the_split_itself():
    data = load_dataset("digits", "val")
    rungs = nested_subsets(data, (0.25, 0.5, 1.0), seed=0)
    assert rungs[-1] is data
    assert [len(r) for r in rungs] == [50, 90, 180]
    first, second = (set(r.images.indices) for r in rungs[:2])
    assert first < second
    assert set(Counter(rungs[0].labels).values()) == {5}  # ⌈0.25 · 18⌉ of each of the 10 classes
    again = nested_subsets(data, (0.25, 0.5, 1.0), seed=0)
    assert again[0].images.indices == rungs[0].images.indices  # the same items every time


def test_a_trial_is_dominated_only_by_a_no_larger_more_accurate_completed_trial():
    completed = [(0, 100.0, 0.90), (1, 80.0, 0.70)]
    assert "trial 0" in dominated_reason(120.0, 0.85, completed)
    assert dominated_reason(90.0, 0.85, completed) == ""  # trial 0 stores more
    assert dominated_reason(120.0, 0.95, completed) == ""  # could still be more accurate
    assert dominated_reason(80.0, 0.70, completed) == ""  # equal is not better


def test_the_front_holds_exactly_the_points_nothing_dominates():
    points = [("a", 1, 0.5), ("b", 2, 0.9), ("c", 2, 0.8), ("d", 3, 0.9), ("e", 0.5, 0.1)]
    assert pareto_front(points) == {"a", "b", "e"}
    assert dominates((2, 0.9), (3, 0.9)) and not dominates((2, 0.9), (2, 0.9))


def test_the_memory_cache_keeps_the_newest_entries():
    cache = MemoryFeatureCache(limit=2)
    for key in "abc":
        cache.put(key, key.upper())
    assert cache.get("a") is None and cache.get("c") == "C"


@pytest.mark.parametrize("config, message", [
    (dict(rungs=(0.5,)), "ending with 1"), (dict(rungs=(0.5, 0.25, 1.0)), "increasing"),
    (dict(z=-1.0), "z -1.0 is invalid"), (dict(floor=1.5), "floor 1.5 is out of range"),
])
def test_bad_pruning_settings_are_refused(config, message):
    with pytest.raises(RccError, match=message):
        PruningConfig(**config)
