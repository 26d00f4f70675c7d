"""Karpathy split JSON for COCO (root/filepath/filename) and Flickr30k (root/filename)."""

import json

import pytest
from PIL import Image

from rcc.data.karpathy import load_karpathy
from rcc.errors import DataError


def _img(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (3, 3), color).save(path)


def _sentences(*raws):
    return [{"raw": raw, "tokens": raw.lower().split()} for raw in raws]


@pytest.fixture
def coco(tmp_path):
    records = [
        {"filepath": "val2014", "filename": "a.jpg", "split": "test", "sentences": _sentences("A cat.", " Two cats. ")},
        {"filepath": "train2014", "filename": "b.jpg", "split": "train", "sentences": _sentences("A dog.")},
        {"filepath": "val2014", "filename": "c.jpg", "split": "restval", "sentences": _sentences("A bird.")},
        {"filepath": "val2014", "filename": "d.jpg", "split": "val", "sentences": _sentences("A cow.")},
        {"filepath": "val2014", "filename": "e.jpg", "split": "test", "sentences": _sentences("A fox.")},
    ]
    colors = {"a.jpg": (255, 0, 0), "b.jpg": (0, 255, 0), "c.jpg": (0, 0, 255), "d.jpg": (9, 9, 9), "e.jpg": (1, 2, 3)}
    for record in records:
        _img(tmp_path / record["filepath"] / record["filename"], colors[record["filename"]])
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": records, "dataset": "coco"}))
    return path


def test_coco_test_split(coco):
    data = load_karpathy("coco", coco)
    assert data.split == "test" and len(data) == 2
    assert data.captions == (("A cat.", "Two cats."), ("A fox.",))
    assert [str(p.relative_to(coco.parent)) for p in data.images.paths] == ["val2014/a.jpg", "val2014/e.jpg"]
    assert data.images[0].getpixel((1, 1))[0] > 200  # the red JPEG


def test_coco_train_includes_restval_and_val_is_separate(coco):
    train = load_karpathy("coco", coco, "train")
    assert train.captions == (("A dog.",), ("A bird.",))
    assert [p.name for p in train.images.paths] == ["b.jpg", "c.jpg"]
    assert load_karpathy("coco", coco, "val").captions == (("A cow.",),)


def test_image_root_override(coco, tmp_path):
    other = tmp_path / "elsewhere"
    _img(other / "val2014" / "a.jpg", (0, 0, 0))
    _img(other / "val2014" / "e.jpg", (0, 0, 0))
    data = load_karpathy("coco", coco, image_root=other)
    assert data.images.paths[1] == other / "val2014" / "e.jpg"


def test_flickr_layout_ignores_filepath(tmp_path):
    images = tmp_path / "flickr30k-images"
    _img(images / "1000.jpg", (10, 10, 10))
    _img(images / "2000.jpg", (20, 20, 20))
    doc = {"images": [
        {"filename": "1000.jpg", "split": "test", "sentences": _sentences("One.", "Uno.", "Eins.", "Un.", "Yksi.")},
        {"filename": "2000.jpg", "split": "train", "sentences": _sentences("Two.")},
    ]}
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps(doc))
    data = load_karpathy("flickr30k", path, image_root=images)
    assert data.images.paths == (images / "1000.jpg",)
    assert data.captions == (("One.", "Uno.", "Eins.", "Un.", "Yksi."),)
    assert data.spec == f"flickr30k-karpathy:{path}"


def test_malformed_json_names_file_and_position(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [\n  {"filename": }\n]}')
    with pytest.raises(DataError, match=r"malformed JSON in '.*bad\.json': Expecting value at line 2 column 16"):
        load_karpathy("coco", path)


def test_missing_keys_name_file_and_record(tmp_path):
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"images": [
        {"filename": "a.jpg", "split": "test", "sentences": _sentences("x")},
        {"split": "test", "sentences": _sentences("y")},
    ]}))
    with pytest.raises(DataError, match=r"'.*k\.json' image record 1 has no 'filename'"):
        load_karpathy("flickr30k", path)
    path.write_text(json.dumps({"images": [{"filename": "a.jpg", "sentences": []}]}))
    with pytest.raises(DataError, match=r"image record 0 has no 'split'"):
        load_karpathy("flickr30k", path)
    path.write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"tokens": []}]}]}))
    with pytest.raises(DataError, match=r"image record 0 has a sentence without a 'raw' string"):
        load_karpathy("flickr30k", path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match=r"'.*k\.json' has no 'images' list"):
        load_karpathy("flickr30k", path)


def test_empty_split_missing_file_and_missing_image(coco, tmp_path):
    path = tmp_path / "only_train.json"
    path.write_text(json.dumps({"images": [{"filename": "b.jpg", "split": "train", "sentences": _sentences("x")}]}))
    with pytest.raises(DataError, match=r"'.*only_train\.json' has no images in split 'test'"):
        load_karpathy("flickr30k", path)
    with pytest.raises(DataError, match=r"caption file '.*absent\.json' does not exist"):
        load_karpathy("coco", tmp_path / "absent.json")
    (tmp_path / "val2014" / "e.jpg").unlink()
    with pytest.raises(DataError, match=r"cannot read image '.*val2014/e\.jpg'.*set \?root=DIR"):
        load_karpathy("coco", coco)


def test_bad_split(coco):
    with pytest.raises(DataError, match=r"unknown split 'restval' for coco-karpathy; allowed: train, val, test"):
        load_karpathy("coco", coco, "restval")
