"""ArrayImages and FileImages: pixels, RGB conversion, identities and one-line errors."""

import os

import numpy as np
import pytest
from PIL import Image

from rcc.data.images import ArrayImages, FileImages, read_image
from rcc.data.types import indices_subset
from rcc.errors import DataError


def test_array_images_gray_uint8_becomes_rgb_with_same_values():
    pixels = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    images = ArrayImages(pixels)
    assert len(images) == 2
    image = images[1]
    assert image.mode == "RGB" and image.size == (5, 4)
    assert image.getpixel((3, 2)) == (33, 33, 33)  # 20 + 2 * 5 + 3
    assert images[-1].getpixel((0, 0)) == (20, 20, 20)


def test_array_images_float_is_read_as_zero_to_one():
    pixels = np.array([[[[0.0, 0.5, 1.0]]]], dtype=np.float32)  # (1, 1, 1, 3)
    assert ArrayImages(pixels)[0].getpixel((0, 0)) == (0, 128, 255)


def test_array_images_rgb_round_trip_and_index_error_ends_iteration():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(3, 6, 7, 3), dtype=np.uint8)
    images = ArrayImages(pixels)
    assert [np.array_equal(np.asarray(im), pixels[i]) for i, im in enumerate(images)] == [True] * 3
    with pytest.raises(IndexError):
        images[3]


def test_array_identity_depends_on_bytes_only():
    a = np.zeros((2, 3, 3), dtype=np.uint8)
    b = a.copy()
    b[1, 2, 2] = 1
    assert ArrayImages(a).identity == ArrayImages(a.copy()).identity
    assert ArrayImages(a).identity != ArrayImages(b).identity
    # Same bytes, different shape: different images.
    assert ArrayImages(a).identity != ArrayImages(a.reshape(2, 9, 1)[..., 0].reshape(2, 1, 9)).identity


def test_array_images_reject_bad_shape():
    with pytest.raises(DataError, match=r"shape \(2, 3\)"):
        ArrayImages(np.zeros((2, 3), dtype=np.uint8))


def _png(path, color, mode="RGB", size=(4, 3)):
    Image.new(mode, size, color).save(path)
    return path


def test_file_images_load_lazily_as_rgb(tmp_path):
    gray = _png(tmp_path / "g.png", 77, mode="L")
    rgba = _png(tmp_path / "a.png", (10, 20, 30, 128), mode="RGBA")
    images = FileImages([gray, rgba])
    assert len(images) == 2
    assert images[0].mode == "RGB" and images[0].getpixel((1, 1)) == (77, 77, 77)
    assert images[1].getpixel((0, 0)) == (10, 20, 30)


def test_file_identity_changes_with_paths_size_and_mtime(tmp_path):
    first = _png(tmp_path / "1.png", (1, 2, 3))
    second = _png(tmp_path / "2.png", (1, 2, 3))
    base = FileImages([first, second]).identity
    assert FileImages([first, second]).identity == base
    assert FileImages([second, first]).identity != base
    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert FileImages([first, second]).identity != base


def test_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "nope" / "y.jpg"
    with pytest.raises(DataError, match=r"^cannot read image '.*nope/y\.jpg': No such file"):
        FileImages([missing])


def test_unreadable_file_raises_one_line_data_error_on_access(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg\nat all")
    images = FileImages([broken])  # stat works; the failure comes when the pixels are needed
    with pytest.raises(DataError) as info:
        images[0]
    message = str(info.value)
    assert message.startswith(f"cannot read image '{broken}': ")
    assert "\n" not in message
    with pytest.raises(DataError, match="broken.jpg"):
        read_image(broken)


def test_subset_view_of_array_images():
    pixels = np.arange(5, dtype=np.uint8).reshape(5, 1, 1)
    view = indices_subset(ArrayImages(pixels), [4, 1])
    assert len(view) == 2
    assert view[0].getpixel((0, 0)) == (4, 4, 4)
    assert view.identity.startswith(ArrayImages(pixels).identity)
