"""Deterministic subsets of datasets: class-balanced calibration samples and first-N slices."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from rcc.data.types import CaptionDataset, ClassificationDataset, Dataset, indices_subset
from rcc.errors import DataError


def balanced_indices(labels: Sequence[int], per_class: int, seed: int) -> list[int]:
    """Sorted indices holding min(per_class, size of c) items of every class c, drawn without replacement.

    Classes are visited in ascending label order with one ``numpy.random.Generator(seed)``,
    so the result depends only on (labels, per_class, seed).
    """
    if per_class < 0:
        raise DataError(f"per-class sample size must be >= 0, got {per_class}")
    array = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for label in np.unique(array):
        members = np.flatnonzero(array == label)
        if len(members) <= per_class:
            chosen.append(members)
        else:
            chosen.append(rng.choice(members, size=per_class, replace=False))
    if not chosen:
        return []
    return sorted(int(i) for i in np.concatenate(chosen))


def subset(dataset: Dataset, indices: Sequence[int]) -> Dataset:
    """The same dataset restricted to ``indices`` (in the given order); images stay lazy."""
    picked = tuple(int(i) for i in indices)
    for i in picked:
        if not 0 <= i < len(dataset):
            raise DataError(f"subset index {i} out of range for {len(dataset)} items of '{dataset.spec}'")
    images = indices_subset(dataset.images, picked)
    if isinstance(dataset, ClassificationDataset):
        return replace(dataset, images=images, labels=tuple(dataset.labels[i] for i in picked))
    if isinstance(dataset, CaptionDataset):
        return replace(dataset, images=images, captions=tuple(dataset.captions[i] for i in picked))
    raise TypeError(f"not a dataset: {type(dataset).__name__}")


def first_n(dataset: Dataset, n: int) -> Dataset:
    """The first ``n`` items (all of them when the dataset is smaller)."""
    if n < 0:
        raise DataError(f"item count must be >= 0, got {n}")
    return subset(dataset, range(min(n, len(dataset))))


def balanced_subset(dataset: ClassificationDataset, per_class: int, seed: int) -> ClassificationDataset:
    """A class-balanced sample of a classification dataset, see ``balanced_indices``."""
    picked = subset(dataset, balanced_indices(dataset.labels, per_class, seed))
    assert isinstance(picked, ClassificationDataset)
    return picked
