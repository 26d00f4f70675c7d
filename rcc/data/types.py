"""What a dataset is to the rest of rcc: images (loaded lazily) plus labels or captions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image


class ImageList(Protocol):
    """A random-access sequence of PIL images, loaded on demand.

    ``identity`` is a short stable string for cache keys (e.g. a hash of the paths and sizes),
    so cached image features are reused only for the very same images.
    """

    identity: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Image.Image: ...


@dataclass(frozen=True)
class ClassificationDataset:
    """Images with one integer label each and a name per class (used to build prompts)."""

    spec: str
    split: str
    images: ImageList
    labels: tuple[int, ...]
    classnames: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class CaptionDataset:
    """Images with one or more reference captions each (retrieval and captioning)."""

    spec: str
    split: str
    images: ImageList
    captions: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return len(self.captions)


Dataset = ClassificationDataset | CaptionDataset


def indices_subset(images: ImageList, indices: Sequence[int]) -> ImageList:
    """A view of some images of a list, with an identity that names the subset."""
    return _SubsetImages(images, tuple(int(i) for i in indices))


class _SubsetImages:
    def __init__(self, base: ImageList, indices: tuple[int, ...]):
        import hashlib

        self.base = base
        self.indices = indices
        digest = hashlib.blake2b(repr(indices).encode(), digest_size=8).hexdigest()
        self.identity = f"{base.identity}[{digest}]"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Image.Image:
        return self.base[self.indices[index]]
