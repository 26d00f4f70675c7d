"""scikit-learn's bundled handwritten digits (1,797 real 8x8 images) with a fixed 3-way split.

train 70 % (calibration and training read it), val 10 % (the eval split: what the cascade,
backoff, search and sensitivity check), test 20 % (reports only); stratified, seed 0. Sessions
made before the split was called ``val`` name it ``calib``: the same images, accepted as an alias.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from rcc.data.images import ArrayImages
from rcc.data.types import ClassificationDataset, indices_subset
from rcc.errors import DataError

DIGIT_CLASSNAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_SPLITS = ("train", "val", "test")
DIGITS_SPLIT_ALIASES = {"calib": "val"}
DIGITS_LAYOUT = "train 70 % / val 10 % / test 20 % of scikit-learn's 1,797 digits (stratified, seed 0)"

# Fractions of all 1,797 images; the seed is fixed so every run, machine and replay sees the same split.
_VAL_FRACTION = 0.1
_TEST_FRACTION = 0.2
_SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16; x * 255 / 16 maps them onto the full 8-bit range (16 -> 255).
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


@lru_cache(maxsize=1)
def digits_split_indices() -> dict[str, tuple[int, ...]]:
    """Sorted image indices of each split: test 20 %, val 10 %, train the rest; stratified, seed 0."""
    from sklearn.model_selection import train_test_split

    _, labels = _digits_arrays()
    everything = np.arange(len(labels))
    rest, test = train_test_split(
        everything, test_size=_TEST_FRACTION, stratify=labels, random_state=_SPLIT_SEED
    )
    val_size = int(round(_VAL_FRACTION * len(labels)))
    train, val = train_test_split(
        rest, test_size=val_size, stratify=labels[rest], random_state=_SPLIT_SEED
    )
    return {name: tuple(int(i) for i in np.sort(part)) for name, part in
            (("train", train), ("val", val), ("test", test))}


@lru_cache(maxsize=1)
def _all_digits() -> ArrayImages:
    return ArrayImages(_digits_arrays()[0])


def load_digits_split(split: str, spec: str = "digits") -> ClassificationDataset:
    """One split ("train", "val" or "test") of the digits as 8x8 RGB images with labels 0-9.

    The images are a view of all 1,797 (``indices_subset``), so a read names its source image.
    """
    split = DIGITS_SPLIT_ALIASES.get(split, split)
    if split not in DIGITS_SPLITS:
        raise DataError(f"unknown split '{split}' for digits; allowed: {', '.join(DIGITS_SPLITS)}")
    _, labels = _digits_arrays()
    indices = np.asarray(digits_split_indices()[split], dtype=np.int64)
    return ClassificationDataset(
        spec=spec,
        split=split,
        images=indices_subset(_all_digits(), indices.tolist()),
        labels=tuple(int(v) for v in labels[indices]),
        classnames=DIGIT_CLASSNAMES,
    )
