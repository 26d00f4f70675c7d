"""Class-balanced calibration samples and subset helpers."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcc.data.images import ArrayImages
from rcc.data.sampler import balanced_indices, balanced_subset, first_n, subset
from rcc.data.types import CaptionDataset, ClassificationDataset
from rcc.errors import DataError

labels_strategy = st.lists(st.integers(min_value=0, max_value=6), min_size=0, max_size=80)


@settings(max_examples=150, deadline=None)
@given(labels=labels_strategy, per_class=st.integers(0, 12), seed=st.integers(0, 2**32 - 1))
def test_balanced_counts_sorted_and_deterministic(labels, per_class, seed):
    picked = balanced_indices(labels, per_class, seed)
    assert picked == sorted(set(picked))
    assert all(0 <= i < len(labels) for i in picked)
    sizes = Counter(labels)
    counts = Counter(labels[i] for i in picked)
    assert {c: counts.get(c, 0) for c in sizes} == {c: min(per_class, n) for c, n in sizes.items()}
    assert balanced_indices(labels, per_class, seed) == picked
    assert balanced_indices(np.asarray(labels, dtype=np.int32), per_class, seed) == picked


@settings(max_examples=60, deadline=None)
@given(labels=labels_strategy, per_class=st.integers(1, 5))
def test_different_seeds_differ_when_a_choice_exists(labels, per_class):
    sizes = Counter(labels)
    results = {tuple(balanced_indices(labels, per_class, seed)) for seed in range(24)}
    if any(n > per_class for n in sizes.values()):
        # Each class with more than per_class items has >= 2 possible picks; 24 seeds all agreeing
        # would have probability <= 2**-23.
        assert len(results) > 1
    else:
        assert results == {tuple(range(len(labels)))}


def test_known_example():
    labels = [0, 1, 0, 2, 0, 1, 0]
    picked = balanced_indices(labels, 2, seed=0)
    assert len(picked) == 5
    assert [labels[i] for i in picked].count(0) == 2
    assert {1, 3, 5} <= set(picked)
    assert balanced_indices(labels, 0, seed=0) == []
    assert balanced_indices([], 3, seed=0) == []


def test_negative_size_is_an_error():
    with pytest.raises(DataError, match=r"per-class sample size must be >= 0, got -1"):
        balanced_indices([0, 1], -1, seed=0)


def _dataset():
    pixels = np.arange(6, dtype=np.uint8).reshape(6, 1, 1) * 10
    return ClassificationDataset("toy", "test", ArrayImages(pixels), (0, 0, 1, 1, 2, 2), ("a", "b", "c"))


def test_subset_keeps_images_and_labels_aligned():
    part = subset(_dataset(), [5, 2])
    assert part.labels == (2, 1)
    assert [im.getpixel((0, 0))[0] for im in part.images] == [50, 20]
    assert part.classnames == ("a", "b", "c") and part.spec == "toy"
    with pytest.raises(DataError, match=r"subset index 6 out of range for 6 items of 'toy'"):
        subset(_dataset(), [6])


def test_first_n_and_balanced_subset():
    assert first_n(_dataset(), 4).labels == (0, 0, 1, 1)
    assert len(first_n(_dataset(), 100)) == 6
    balanced = balanced_subset(_dataset(), 1, seed=7)
    assert sorted(balanced.labels) == [0, 1, 2]
    captions = CaptionDataset("c", "test", ArrayImages(np.zeros((3, 1, 1), np.uint8)), (("x",), ("y", "z"), ("w",)))
    assert first_n(captions, 2).captions == (("x",), ("y", "z"))
