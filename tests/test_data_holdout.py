"""Held-out splits (rcc.data.holdout), the split options of dataset specs, and the data roles."""

import pytest

from rcc.data.holdout import largest_remainder, stratified_parts
from rcc.data.registry import canonical_spec, load_dataset, split_layout
from rcc.data.roles import data_roles, eval_split_of, split_reported_as_test
from rcc.errors import DataError


def test_largest_remainder_sums_exactly_and_breaks_ties_to_the_first():
    assert largest_remainder(6, [20, 10, 30]) == [2, 1, 3]
    assert largest_remainder(5, [1, 1, 1, 1]) == [2, 1, 1, 1]  # remainders tie: the lowest index gets it
    assert largest_remainder(7, [5, 3]) == [4, 3]  # 4.375 / 2.625: the larger remainder rounds up
    assert sum(largest_remainder(101, [7, 13, 29, 51])) == 101
    assert largest_remainder(3, [0, 0]) == [0, 0]


def test_stratified_parts_are_disjoint_exact_and_proportional():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    parts = stratified_parts(labels, {"val": 10, "test": 20}, seed=0)
    assert len(parts["val"]) == 10 and len(parts["test"]) == 20 and len(parts["rest"]) == 70
    assert sorted(parts["val"] + parts["test"] + parts["rest"]) == list(range(100))
    assert [sum(labels[i] == c for i in parts["val"]) for c in range(3)] == [5, 3, 2]
    assert [sum(labels[i] == c for i in parts["test"]) for c in range(3)] == [10, 6, 4]
    assert stratified_parts(labels, {"val": 10, "test": 20}, seed=0) == parts
    assert stratified_parts(labels, {"val": 10, "test": 20}, seed=1)["val"] != parts["val"]
    with pytest.raises(DataError, match=r"cannot draw 101 items from 100"):
        stratified_parts(labels, {"val": 101}, seed=0)


@pytest.mark.parametrize(("spec", "pattern"), [
    ("cifar10:/x?val=0", r"^val='0' in dataset 'cifar10:/x\?val=0' is invalid; allowed: a fraction of train in \(0, 1\) "
                         r"or a count of images ≥ 1$"),
    ("cifar10:/x?val=2.5", r"^val='2\.5' .* is invalid"),
    ("cifar100:/x?seed=-1", r"^seed='-1' in dataset 'cifar100:/x\?seed=-1' is invalid; allowed: an integer ≥ 0$"),
    ("imagefolder:/x?split=0.8,0.2", r"^split='0\.8,0\.2' in dataset .* is invalid; allowed: train,val,test fractions, "
                                     r"each > 0, summing to 1 \(e\.g\. split=0\.7,0\.1,0\.2\)$"),
    ("captions-csv:/x.csv?split=0.5,0.5,0", r"^split='0\.5,0\.5,0' .* is invalid"),
    ("imagefolder:/x?split=a,b,c", r"^split='a,b,c' .* is invalid"),
])
def test_bad_split_options_are_refused_in_one_line(spec, pattern):
    with pytest.raises(DataError, match=pattern):
        canonical_spec(spec)


def test_canonical_spec_writes_out_every_option_that_decides_the_splits():
    assert canonical_spec("cifar10:/x") == "cifar10:/x?val=0.1&seed=0"
    assert canonical_spec("cifar100:/x?seed=4&val=5000") == "cifar100:/x?val=5000&seed=4"
    assert canonical_spec("imagefolder:/d?classnames=/n.txt") == "imagefolder:/d?classnames=/n.txt&split=0.7,0.1,0.2&seed=0"
    assert canonical_spec("captions-csv:/c.csv?split=0.6,0.2,0.2") == "captions-csv:/c.csv?split=0.6,0.2,0.2&seed=0"
    assert canonical_spec("digits") == "digits"
    assert canonical_spec("coco-karpathy:/k.json?root=/i") == "coco-karpathy:/k.json?root=/i"
    assert canonical_spec(canonical_spec("cifar10:/x")) == canonical_spec("cifar10:/x")  # a fixed point


def test_layouts_name_sizes_and_seeds():
    assert split_layout("digits") == ("train 70 % / val 10 % / test 20 % of scikit-learn's 1,797 digits "
                                      "(stratified, seed 0)")
    assert split_layout("cifar10:/x?val=5000&seed=2") == ("val: 5,000 images of the train batches held out "
                                                          "(class-balanced, seed 2); train: the rest; test: the test batch")
    assert split_layout("imagefolder:/d?split=0.8,0.1,0.1") == ("train 80 % / val 10 % / test 10 % of the folder "
                                                                "(stratified, seed 0)")
    assert split_layout("flickr30k-karpathy:/f.json") == "Karpathy's train (with restval) / val / test images"


def test_roles_are_train_val_test_and_nothing_else():
    roles = data_roles("cifar10:/x")
    assert (roles.calibration, roles.eval, roles.test) == ("train", "val", "test")
    assert eval_split_of("digits", "calib") == "val"  # an old digits session's eval split
    with pytest.raises(DataError, match=r"^split 'test' cannot be the eval split of 'cifar10:/x': it is the split "
                                        r"reported as test; allowed: val$"):
        eval_split_of("cifar10:/x", "test")
    with pytest.raises(DataError, match=r"^split 'train' cannot be the eval split of 'digits': calibration and "
                                        r"training read it; allowed: val$"):
        eval_split_of("digits", "train")
    with pytest.raises(DataError, match=r"^split 'all' cannot be the test split of 'imagefolder:/d': it holds every "
                                        r"split; allowed: test$"):
        split_reported_as_test("imagefolder:/d", "all")
    with pytest.raises(DataError, match=r"^unknown split 'dev' for dataset 'digits'"):
        data_roles("digits", "dev")


def test_options_reach_the_loaders(tmp_path):
    from PIL import Image

    for c in range(2):
        for i in range(10):
            (tmp_path / f"c{c}").mkdir(exist_ok=True)
            Image.new("RGB", (2, 2), (c, i, 0)).save(tmp_path / f"c{c}" / f"{i}.png")
    spec = f"imagefolder:{tmp_path}?split=0.5,0.2,0.3&seed=5"
    sizes = {split: len(load_dataset(spec, split)) for split in ("train", "val", "test", "all")}
    assert sizes == {"train": 10, "val": 4, "test": 6, "all": 20}
    assert load_dataset(spec, "val").images.paths != load_dataset(spec.replace("seed=5", "seed=6"), "val").images.paths
