"""The fixed, stratified split of scikit-learn's digits."""

from collections import Counter

import numpy as np
import pytest
from sklearn.datasets import load_digits

from rcc.data.digits import DIGIT_CLASSNAMES, digits_split_indices, load_digits_split
from rcc.errors import DataError


def test_split_sizes_cover_everything_once():
    parts = digits_split_indices()
    assert {name: len(ix) for name, ix in parts.items()} == {"train": 1257, "val": 180, "test": 360}
    union = set(parts["train"]) | set(parts["val"]) | set(parts["test"])
    assert len(union) == 1797 == sum(len(ix) for ix in parts.values())
    assert union == set(range(1797))


def test_split_is_identical_on_every_call():
    first = {s: load_digits_split(s) for s in ("train", "val", "test")}
    digits_split_indices.cache_clear()
    again = digits_split_indices()
    for split, dataset in first.items():
        assert again[split] == tuple(sorted(again[split]))
        other = load_digits_split(split)
        assert other.labels == dataset.labels
        assert other.images.identity == dataset.images.identity


def test_split_is_stratified():
    target = load_digits().target
    overall = Counter(target.tolist())
    for split, share in (("test", 0.2), ("val", 0.1)):
        counts = Counter(load_digits_split(split).labels)
        assert sorted(counts) == list(range(10))  # every class in every held-out split
        for label, total in overall.items():
            assert abs(counts[label] - share * total) <= 1.5


def test_images_labels_and_classnames():
    test = load_digits_split("test")
    bunch = load_digits()
    index = digits_split_indices()["test"][0]
    image = test.images[0]
    assert image.mode == "RGB" and image.size == (8, 8)
    expected = np.rint(bunch.images[index] * 255 / 16).astype(np.uint8)
    assert np.array_equal(np.asarray(image)[..., 0], expected)
    assert np.asarray(image).max() <= 255 and expected.max() == 255
    assert test.labels[0] == int(bunch.target[index])
    assert test.classnames == DIGIT_CLASSNAMES and test.classnames[9] == "nine"
    assert test.split == "test" and test.spec == "digits"


def test_bad_split_names_value_and_allowed():
    with pytest.raises(DataError, match=r"unknown split 'eval' for digits; allowed: train, val, test"):
        load_digits_split("eval")


def test_old_name_calib_is_val_and_the_split_has_not_moved():
    # Sessions made before the data roles call the eval split "calib": the very same images.
    old = load_digits_split("calib")
    assert old.split == "val" and old.labels == load_digits_split("val").labels
    assert old.images.identity == load_digits_split("val").images.identity
    # The demo's figures stay put: these are the val (formerly calib) and test indices it always had.
    parts = digits_split_indices()
    assert parts["val"][:6] == (5, 15, 29, 31, 41, 54) and sum(parts["val"]) == 162620
    assert parts["test"][:4] == (21, 24, 28, 34) and sum(parts["test"]) == 337944
