"""imagefolder:DIR — label ids from sorted class folders, classnames, the three-way split, and bad layouts."""

import pytest
from PIL import Image

from rcc.data.imagefolder import load_imagefolder
from rcc.errors import DataError


def _save(path, color, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (5, 4), color).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "val"
    _save(root / "n02_golden_retriever" / "b.PNG", (0, 255, 0), fmt="PNG")
    _save(root / "n02_golden_retriever" / "a.jpg", (0, 250, 0), fmt="JPEG")
    _save(root / "n01_tabby_cat" / "x.bmp", (255, 0, 0))
    _save(root / "n01_tabby_cat" / "nested" / "y.png", (200, 0, 0))
    (root / "n01_tabby_cat" / "notes.txt").write_text("not an image")
    (root / "n01_tabby_cat" / ".hidden.png").write_bytes(b"")
    _save(root / "zebra" / "z.gif", (0, 0, 255))
    return root


def test_labels_follow_sorted_folders_and_images_sorted(folder):
    data = load_imagefolder(folder, split="all")
    assert data.classnames == ("n01 tabby cat", "n02 golden retriever", "zebra")
    assert data.labels == (0, 0, 1, 1, 2)
    names = [p.name for p in data.images.paths]
    assert names == ["x.bmp", "y.png", "a.jpg", "b.PNG", "z.gif"]  # a folder's files, then its sub-folders
    assert data.images[3].getpixel((0, 0)) == (0, 255, 0)
    assert data.images[4].getpixel((2, 2)) == (0, 0, 255)
    assert data.split == "all" and data.spec == f"imagefolder:{folder}"


def test_classnames_file_in_folder_is_used(folder):
    (folder / "classnames.txt").write_text("tabby cat\ngolden retriever\nzebra\n\n")
    assert load_imagefolder(folder, split="all").classnames == ("tabby cat", "golden retriever", "zebra")


def test_explicit_classnames_file(folder, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nzebra")
    assert load_imagefolder(folder, classnames_file=names, split="all").classnames == ("cat", "dog", "zebra")


def test_classnames_wrong_count_names_file(folder, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    with pytest.raises(DataError, match=r"classnames file '.*names\.txt' has 2 names but '.*val' has 3 class folders"):
        load_imagefolder(folder, classnames_file=names)


def test_missing_dir(tmp_path):
    with pytest.raises(DataError, match=r"imagefolder directory '.*/absent' does not exist"):
        load_imagefolder(tmp_path / "absent")


def test_no_class_folders(tmp_path):
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(DataError, match=rf"no class folders in '{tmp_path}'"):
        load_imagefolder(tmp_path)


def test_class_folder_without_images(folder):
    (folder / "empty_class").mkdir()
    (folder / "empty_class" / "readme.md").write_text("nothing")
    with pytest.raises(DataError, match=r"class folder '.*empty_class' has no images; allowed extensions: .*\.jpg"):
        load_imagefolder(folder)


def test_bad_split(folder):
    with pytest.raises(DataError, match=r"^unknown split 'calib' for imagefolder; allowed: train, val, test, all$"):
        load_imagefolder(folder, split="calib")


def _grid(root, per_class):
    """A folder of classes c0, c1, … with per_class[c] distinct 2×2 images each; returns all paths."""
    paths = []
    for c, count in enumerate(per_class):
        for i in range(count):
            path = root / f"c{c}" / f"{i:03d}.png"
            _save(path, (c, i, 7))
            paths.append(path)
    return paths


def test_one_folder_is_cut_once_into_disjoint_stratified_splits(tmp_path):
    paths = _grid(tmp_path / "d", [20, 10, 30])  # 60 images, three classes of different sizes
    parts = {split: load_imagefolder(tmp_path / "d", split=split) for split in ("train", "val", "test")}
    sizes = {split: len(data) for split, data in parts.items()}
    assert sizes == {"train": 42, "val": 6, "test": 12}  # 70 / 10 / 20 % of 60
    seen = [set(data.images.paths) for data in parts.values()]
    assert set().union(*seen) == set(paths) and sum(map(len, seen)) == 60  # every image in exactly one split
    # Stratified: each class keeps its share (val 10 %: 2, 1, 3; test 20 %: 4, 2, 6).
    assert [parts["val"].labels.count(c) for c in range(3)] == [2, 1, 3]
    assert [parts["test"].labels.count(c) for c in range(3)] == [4, 2, 6]
    # Deterministic, and the seed decides which images go where.
    assert load_imagefolder(tmp_path / "d", split="val").images.paths == parts["val"].images.paths
    other = load_imagefolder(tmp_path / "d", split="val", seed=1)
    assert len(other) == 6 and other.images.paths != parts["val"].images.paths
    half = load_imagefolder(tmp_path / "d", split="test", fractions=(0.25, 0.25, 0.5))
    assert len(half) == 30


def test_too_small_a_folder_is_refused_naming_the_empty_split(folder):
    with pytest.raises(DataError, match=r"^imagefolder '.*val' has 5 items: split 0\.7,0\.1,0\.2 leaves val empty; "
                                        r"allowed: more items, or fractions giving every split one \(\?split=\)$"):
        load_imagefolder(folder, split="train")
