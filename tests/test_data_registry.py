"""load_dataset: the spec grammar, per-kind options and splits, and its error messages."""

import json

import numpy as np
import pytest
from PIL import Image

from rcc.data import DATASET_FORMS, dataset_splits, load_dataset, parse_dataset_spec
from rcc.data.types import CaptionDataset, ClassificationDataset
from rcc.errors import DataError, RccError


def test_forms_list_every_kind():
    assert DATASET_FORMS == (
        "digits",
        "imagefolder:DIR[?classnames=FILE&split=0.7,0.1,0.2&seed=0]",
        "cifar10:DIR[?val=0.1&seed=0]",
        "cifar100:DIR[?val=0.1&seed=0]",
        "coco-karpathy:JSON[?root=DIR]",
        "flickr30k-karpathy:JSON[?root=DIR]",
        "captions-csv:FILE[?root=DIR&split=0.7,0.1,0.2&seed=0]",
    )


def test_parse_spec():
    spec = parse_dataset_spec(" imagefolder:/data/val?classnames=/x/names.txt ")
    assert (spec.kind, spec.path, spec.options) == ("imagefolder", "/data/val", (("classnames", "/x/names.txt"),))
    assert parse_dataset_spec("digits").path is None
    assert dataset_splits("cifar10:/x") == ("train", "val", "test")
    assert dataset_splits("coco-karpathy:/x.json?root=/imgs") == ("train", "val", "test")
    assert dataset_splits("digits") == ("train", "val", "test")
    assert dataset_splits("imagefolder:/x") == dataset_splits("captions-csv:/x.csv") == ("train", "val", "test", "all")


def test_digits_through_registry():
    data = load_dataset("digits", "val")
    assert isinstance(data, ClassificationDataset) and len(data) == 180 and data.spec == "digits"
    assert load_dataset("digits", "calib").split == "val"  # the old name, from sessions made before


def test_imagefolder_with_classnames_option(tmp_path):
    for cls in ("b", "a"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        Image.new("RGB", (2, 2)).save(tmp_path / "d" / cls / "0.png")
    names = tmp_path / "names.txt"
    names.write_text("apple\nbanana\n")
    data = load_dataset(f"imagefolder:{tmp_path / 'd'}?classnames={names}", "all")
    assert data.classnames == ("apple", "banana") and data.labels == (0, 1)


def test_cifar_through_registry(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    record = bytes([4]) + bytes(range(256)) * 12
    (folder / "test_batch.bin").write_bytes(record)
    (folder / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    data = load_dataset(f"cifar10:{tmp_path}")
    assert data.labels == (4,) and data.classnames[4] == "c4"
    # R plane byte 33 -> row 1, column 1; the G plane starts at byte 1024 (= 0 mod 256).
    assert data.images[0].getpixel((1, 1)) == (33, 33, 33)


def _caption_files(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (2, 2)).save(images / "p.png")
    doc = {"images": [{"filename": "p.png", "split": "test", "sentences": [{"raw": "hi"}]}]}
    (tmp_path / "f.json").write_text(json.dumps(doc))
    (tmp_path / "c.csv").write_text("image,caption\np.png,hi\np.png,hello\n")
    return images


def test_caption_kinds_root_option_and_override(tmp_path):
    images = _caption_files(tmp_path)
    data = load_dataset(f"flickr30k-karpathy:{tmp_path / 'f.json'}?root={images}")
    assert isinstance(data, CaptionDataset) and data.captions == (("hi",),)
    assert load_dataset(f"flickr30k-karpathy:{tmp_path / 'f.json'}", root_override=images).images.paths == (images / "p.png",)
    # The override wins over the option.
    override = load_dataset(f"captions-csv:{tmp_path / 'c.csv'}?root=/nowhere", "all", root_override=images)
    assert override.captions == (("hi", "hello"),)


@pytest.mark.parametrize(
    ("spec", "split", "pattern"),
    [
        ("foo:x", "test", r"^unknown dataset 'foo:x'; allowed: digits, imagefolder:DIR\[\?classnames=FILE&split="),
        ("", "test", r"^unknown dataset ''; allowed: digits"),
        ("digits", "all", r"^unknown split 'all' for dataset 'digits'; allowed: train, val, test$"),
        ("cifar100:/x", "calib", r"^unknown split 'calib' for dataset 'cifar100:/x'; allowed: train, val, test$"),
        ("imagefolder:/x?root=/y", "test", r"^unknown option 'root' in dataset 'imagefolder:/x\?root=/y'; allowed for imagefolder: classnames, split, seed$"),
        ("cifar10:/x?classnames=a", "test", r"^unknown option 'classnames' .*; allowed for cifar10: val, seed$"),
        ("coco-karpathy:/x.json?seed=1", "test", r"^unknown option 'seed' .*; allowed for coco-karpathy: root$"),
        ("coco-karpathy:/x.json?root", "test", r"^malformed option 'root' in dataset .*; expected key=value$"),
        ("coco-karpathy:/x.json?root=a&root=b", "test", r"^option 'root' given twice"),
        ("cifar10", "test", r"^dataset 'cifar10' needs a path; expected cifar10:DIR\[\?val=0\.1&seed=0\]$"),
        ("digits:/x", "test", r"^dataset 'digits:/x' takes no path; expected digits$"),
    ],
)
def test_bad_specs_name_value_and_allowed(spec, split, pattern):
    with pytest.raises(DataError, match=pattern) as info:
        load_dataset(spec, split)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, RccError)


def test_root_override_rejected_where_it_means_nothing():
    with pytest.raises(DataError, match=r"does not apply to dataset 'digits'; it applies to: coco-karpathy, flickr30k-karpathy, captions-csv"):
        load_dataset("digits", root_override="/x")


def test_missing_paths_surface_reader_errors(tmp_path):
    with pytest.raises(DataError, match=r"imagefolder directory '.*/nope' does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match=r"captions file '.*/x\.csv' does not exist"):
        load_dataset(f"captions-csv:{tmp_path / 'x.csv'}")


def test_array_identity_differs_between_splits():
    ids = {load_dataset("digits", s).images.identity for s in ("train", "val", "test")}
    assert len(ids) == 3
    assert np.asarray(load_dataset("digits", "train").images[0]).shape == (8, 8, 3)
