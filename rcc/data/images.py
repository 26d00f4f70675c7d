"""Image lists: in-memory arrays and files on disk, both handing out RGB PIL images on demand."""

from __future__ import annotations

import hashlib
import operator
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from rcc.errors import DataError


def _one_line(reason: object) -> str:
    # Error messages must stay on one line; OS and PIL reasons sometimes carry newlines.
    return " ".join(str(reason).split())


def _check_index(index: int, length: int) -> int:
    i = operator.index(index)
    if i < 0:
        i += length
    if not 0 <= i < length:
        # IndexError (not DataError) so that plain iteration over the list stops here.
        raise IndexError(f"image index {index} out of range for {length} images")
    return i


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        # Floats are taken as intensities in [0, 1], as torchvision's ToTensor produces them.
        return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    raise DataError(f"image array dtype {array.dtype} is not supported; allowed: uint8, float (0-1)")


class ArrayImages:
    """Images held in one numpy array of shape (N, H, W) or (N, H, W, 1 | 3).

    uint8 is used as is; floats are read as 0-1 and scaled to 0-255. The identity is a hash of
    the uint8 bytes and the shape, so equal pixels give equal cache keys wherever they came from.
    """

    def __init__(self, array: np.ndarray):
        array = np.asarray(array)
        if array.ndim == 4 and array.shape[-1] == 1:
            array = array[..., 0]
        if not (array.ndim == 3 or (array.ndim == 4 and array.shape[-1] == 3)):
            raise DataError(
                f"image array shape {array.shape} is not supported; allowed: (N, H, W), (N, H, W, 1), (N, H, W, 3)"
            )
        self.array = np.ascontiguousarray(_as_uint8(array))
        digest = hashlib.blake2b(digest_size=8)
        digest.update(repr((self.array.shape, str(self.array.dtype))).encode())
        digest.update(memoryview(self.array).cast("B"))
        self.identity = f"array-{digest.hexdigest()}"

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, index: int) -> Image.Image:
        pixels = self.array[_check_index(index, len(self))]
        return Image.fromarray(pixels).convert("RGB")


class FileImages:
    """Images stored as files, opened with PIL only when asked for and converted to RGB.

    The identity hashes each path with its size and modification time: renaming, replacing
    or touching a file gives new cache keys, without reading every image up front.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]]):
        self.paths: tuple[Path, ...] = tuple(Path(p) for p in paths)
        digest = hashlib.blake2b(digest_size=8)
        for path in self.paths:
            try:
                stat = path.stat()
            except OSError as error:
                raise DataError(f"cannot read image '{path}': {_one_line(error.strerror or error)}") from None
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        self.identity = f"files-{digest.hexdigest()}"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:
        return read_image(self.paths[_check_index(index, len(self))])


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open one image file fully and return it as RGB; any failure is a DataError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            # Palette images with a transparent colour convert cleanly only through RGBA.
            if image.mode == "P" and "transparency" in image.info:
                return image.convert("RGBA").convert("RGB")
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        reason = getattr(error, "strerror", None) or error
        raise DataError(f"cannot read image '{path}': {_one_line(reason)}") from None
