"""ImageNet class names for image folders named by WordNet ID (or ImageNet-V2's class index).

The 1,000 WordNet IDs in ImageNet-1k's label order come from timm (``timm.data.ImageNetInfo``,
the synset list timm's ImageNet classifiers use; timm is a dependency of open_clip), and the
class names from open_clip's ``IMAGENET_CLASSNAMES`` (the names of OpenAI's CLIP notebook), so
a folder ``n01440764`` is "tench". ImageNet, ImageNet-Sketch, -R and -A keep one folder per
WordNet ID (-R and -A a 200-class subset); ImageNet-V2's release names its 1,000 folders by class
index, ``0`` to ``999``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from rcc.errors import DataError

WORDNET_ID = re.compile(r"^n\d{8}$")


@lru_cache(maxsize=1)
def imagenet_wordnet_ids() -> dict[str, int]:
    """WordNet ID → ImageNet-1k label index (0-999)."""
    from timm.data import ImageNetInfo

    return {wnid: index for index, wnid in enumerate(ImageNetInfo("imagenet-1k").label_names())}


def imagenet_classnames() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return tuple(IMAGENET_CLASSNAMES)


def imagenet_folder_names(folders: Sequence[str], root: object) -> tuple[str, ...] | None:
    """Class names of ImageNet-style folders (in the given order), or None when they are not ImageNet's.

    Folders count as ImageNet's when any is a WordNet ID (then every one must be an ImageNet-1k
    ID: an unknown one is refused) or when they are exactly ``0`` … ``999`` (ImageNet-V2).
    """
    if sorted(folders) == sorted(str(i) for i in range(1000)):
        names = imagenet_classnames()
        return tuple(names[int(folder)] for folder in folders)
    if not any(WORDNET_ID.match(folder) for folder in folders):
        return None
    known = imagenet_wordnet_ids()
    for folder in folders:
        if folder not in known:
            raise DataError(f"class folder '{folder}' in '{root}' is not an ImageNet-1k WordNet ID (its siblings "
                            f"are); allowed: the 1,000 IDs n01440764 … n15075141, or name the classes with "
                            f"?classnames=FILE")
    names = imagenet_classnames()
    return tuple(names[known[folder]] for folder in folders)
