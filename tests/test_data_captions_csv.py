"""captions-csv:FILE — one image per distinct path, all its captions in first-seen order, cut in three."""

import pytest
from PIL import Image

from rcc.data.captions_csv import load_captions_csv
from rcc.errors import DataError


@pytest.fixture
def table(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name, color in (("a.png", (1, 1, 1)), ("b.png", (2, 2, 2))):
        Image.new("RGB", (2, 2), color).save(tmp_path / "imgs" / name)
    absolute = tmp_path / "abs.png"
    Image.new("RGB", (2, 2), (3, 3, 3)).save(absolute)
    path = tmp_path / "cc.csv"
    path.write_text(
        "\ufeffid,caption,image\n"
        '1,"a red, round ball",imgs/a.png\n'
        "2,a blue cube,imgs/b.png\n"
        "\n"
        "3,a ball on grass,imgs/a.png\n"
        f"4,an absolute one,{absolute}\n"
    )
    return path


def test_repeated_image_groups_captions(table):
    data = load_captions_csv(table, split="all")
    assert len(data) == 3
    assert data.captions == (("a red, round ball", "a ball on grass"), ("a blue cube",), ("an absolute one",))
    assert data.images.paths[0] == table.parent / "imgs" / "a.png"
    assert data.images.paths[2] == table.parent / "abs.png"
    assert [im.getpixel((0, 0)) for im in data.images] == [(1, 1, 1), (2, 2, 2), (3, 3, 3)]
    assert data.split == "all" and data.spec == f"captions-csv:{table}"


def test_tsv_and_image_root(tmp_path):
    root = tmp_path / "pics"
    root.mkdir()
    Image.new("RGB", (2, 2)).save(root / "x.jpg")
    path = tmp_path / "t.tsv"
    path.write_text("caption\timage\nsome, text\tx.jpg\n")
    data = load_captions_csv(path, split="all", image_root=root)
    assert data.captions == (("some, text",),)
    assert data.images.paths == (root / "x.jpg",)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"captions file '.*none\.csv' does not exist"):
        load_captions_csv(tmp_path / "none.csv")


def test_missing_columns(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("url,text\nx.png,hello\n")
    with pytest.raises(DataError, match=r"captions file '.*c\.csv' has columns 'url', 'text'; missing 'image', 'caption'"):
        load_captions_csv(path)


def test_empty_file_and_header_only(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("")
    with pytest.raises(DataError, match=r"captions file '.*e\.csv' is empty"):
        load_captions_csv(path)
    path.write_text("image,caption\n")
    with pytest.raises(DataError, match=r"captions file '.*e\.csv' has a header but no rows"):
        load_captions_csv(path)


def test_short_or_blank_row_names_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("image,caption\na.png,ok\nb.png\n")
    with pytest.raises(DataError, match=r"'.*r\.csv' line 3 has 1 fields; expected 2"):
        load_captions_csv(path)
    path.write_text("image,caption\na.png,\n")
    with pytest.raises(DataError, match=r"line 2 has an empty image or caption"):
        load_captions_csv(path)


def test_missing_image_is_named(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("image,caption\ngone.png,hello\n")
    with pytest.raises(DataError, match=r"cannot read image '.*gone\.png'"):
        load_captions_csv(path, split="all")


def test_one_file_is_cut_once_by_image_into_disjoint_splits(tmp_path):
    rows = []
    for i in range(20):
        Image.new("RGB", (2, 2), (i, 0, 0)).save(tmp_path / f"{i}.png")
        rows += [f"{i}.png,picture {i}", f"{i}.png,another caption of {i}"]  # two captions per image
    path = tmp_path / "pairs.csv"
    path.write_text("image,caption\n" + "\n".join(rows) + "\n")
    parts = {split: load_captions_csv(path, split) for split in ("train", "val", "test")}
    assert {split: len(data) for split, data in parts.items()} == {"train": 14, "val": 2, "test": 4}
    seen = [set(data.images.paths) for data in parts.values()]
    assert len(set().union(*seen)) == 20 == sum(map(len, seen))  # an image and its captions sit in one split
    for data in parts.values():
        for image, captions in zip(data.images.paths, data.captions):
            assert captions == (f"picture {image.stem}", f"another caption of {image.stem}")
    assert load_captions_csv(path, "val", seed=3).images.paths != parts["val"].images.paths
    assert len(load_captions_csv(path, "val", fractions=(0.5, 0.25, 0.25))) == 5
