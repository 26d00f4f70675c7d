"""Deterministic held-out splits: a class-balanced slice of train, or one collection cut in three.

Both are the same operation: draw parts of given sizes from N items, each part stratified by
class. A part of size k takes from class c (size n_c) its share k · n_c / N, rounded by the
largest-remainder rule (ties to the lower label), so the part's size is exactly k and every
class keeps its proportion. Within a class, members are permuted by one
``numpy.random.Generator(seed)`` visited in ascending label order; the parts take consecutive
runs of that permutation, and whatever no part takes stays in the remainder (train).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rcc.errors import DataError

# One folder or one captions file becomes train / val / test in these fractions unless told.
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
# CIFAR keeps its official test batch; this fraction of its train batches becomes val.
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_SEED = 0


def largest_remainder(total: int, weights: Sequence[int]) -> list[int]:
    """Integers summing to ``total`` proportional to ``weights`` (floor, then +1 by largest remainder)."""
    weight_sum = sum(weights)
    if weight_sum == 0:
        return [0] * len(weights)
    exact = [total * w / weight_sum for w in weights]
    counts = [int(np.floor(x)) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def stratified_parts(labels: Sequence[int], sizes: Mapping[str, int], seed: int) -> dict[str, tuple[int, ...]]:
    """Sorted indices of each part in ``sizes`` (in its order) and of the ``rest``; see the module docstring."""
    array = np.asarray(labels, dtype=np.int64)
    if sum(sizes.values()) > len(array):
        raise DataError(f"cannot draw {sum(sizes.values())} items from {len(array)}")
    classes = np.unique(array)
    members = [np.flatnonzero(array == label) for label in classes]
    quotas = {name: largest_remainder(size, [len(m) for m in members]) for name, size in sizes.items()}
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {name: [] for name in (*sizes, "rest")}
    for c, group in enumerate(members):
        order = rng.permutation(group)
        start = 0
        for name in sizes:
            take = min(quotas[name][c], len(order) - start)
            parts[name].extend(int(i) for i in order[start:start + take])
            start += take
        parts["rest"].extend(int(i) for i in order[start:])
    return {name: tuple(sorted(indices)) for name, indices in parts.items()}


def parse_fractions(text: str, spec: str) -> tuple[float, float, float]:
    """``TRAIN,VAL,TEST`` fractions of a ``?split=`` option: three numbers > 0 summing to 1."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0 or abs(sum(values) - 1) > 1e-6:
        raise DataError(f"split={text!r} in dataset '{spec}' is invalid; allowed: train,val,test fractions, "
                        f"each > 0, summing to 1 (e.g. split=0.7,0.1,0.2)")
    return values  # type: ignore[return-value]


def parse_val_size(text: str, spec: str) -> float | int:
    """A ``?val=`` option: a fraction of train in (0, 1), or a count of images ≥ 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if 0 < value < 1:
        return value
    if value >= 1 and value == int(value):
        return int(value)
    raise DataError(f"val={text!r} in dataset '{spec}' is invalid; allowed: a fraction of train in (0, 1) "
                    f"or a count of images ≥ 1")


def parse_seed(text: str, spec: str) -> int:
    if not text.isdigit():
        raise DataError(f"seed={text!r} in dataset '{spec}' is invalid; allowed: an integer ≥ 0")
    return int(text)


def three_way(labels: Sequence[int], fractions: tuple[float, float, float], seed: int,
              what: str) -> dict[str, tuple[int, ...]]:
    """train / val / test indices of one collection cut in ``fractions`` (val and test stratified)."""
    total = len(labels)
    _, val_size, test_size = largest_remainder(total, [round(f * 10**6) for f in fractions])
    parts = stratified_parts(labels, {"val": val_size, "test": test_size}, seed)
    split = {"train": parts["rest"], "val": parts["val"], "test": parts["test"]}
    empty = [name for name, indices in split.items() if not indices]
    if empty:
        raise DataError(f"{what} has {total} items: split {','.join(f'{f:g}' for f in fractions)} leaves "
                        f"{empty[0]} empty; allowed: more items, or fractions giving every split one (?split=)")
    return split


def held_out(labels: Sequence[int], size: float | int, seed: int, what: str) -> dict[str, tuple[int, ...]]:
    """train / val indices of a train collection with a class-balanced ``size`` (fraction or count) held out."""
    total = len(labels)
    count = round(size * total) if isinstance(size, float) else size
    if not 1 <= count < total:
        raise DataError(f"{what} has {total} train items: val={size:g} would hold out {count}; allowed: "
                        f"between 1 and {total - 1} (?val=)")
    parts = stratified_parts(labels, {"val": count}, seed)
    return {"train": parts["rest"], "val": parts["val"]}
