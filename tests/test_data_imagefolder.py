"""imagefolder:DIR — label ids from sorted class folders, classnames, and bad layouts."""

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
    data = load_imagefolder(folder)
    assert data.classnames == ("n01 tabby cat", "n02 golden retriever", "zebra")
    assert data.labels == (0, 0, 1, 1, 2)
    names = [p.name for p in data.images.paths]
    assert names == ["x.bmp", "y.png", "a.jpg", "b.PNG", "z.gif"]  # a folder's files, then its sub-folders
    assert data.images[3].getpixel((0, 0)) == (0, 255, 0)
    assert data.images[4].getpixel((2, 2)) == (0, 0, 255)
    assert data.split == "test" and data.spec == f"imagefolder:{folder}"


def test_classnames_file_in_folder_is_used(folder):
    (folder / "classnames.txt").write_text("tabby cat\ngolden retriever\nzebra\n\n")
    assert load_imagefolder(folder).classnames == ("tabby cat", "golden retriever", "zebra")


def test_explicit_classnames_file(folder, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nzebra")
    assert load_imagefolder(folder, classnames_file=names).classnames == ("cat", "dog", "zebra")


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
    with pytest.raises(DataError, match=r"unknown split 'train' for imagefolder.*allowed: test"):
        load_imagefolder(folder, split="train")
