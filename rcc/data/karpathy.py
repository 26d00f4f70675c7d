"""COCO and Flickr30k captions from Karpathy's split JSON (dataset_coco.json, dataset_flickr30k.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rcc.data.images import FileImages
from rcc.data.types import CaptionDataset
from rcc.errors import DataError

KARPATHY_SPLITS = ("train", "val", "test")
KARPATHY_LAYOUT = "Karpathy's train (with restval) / val / test images"
KARPATHY_KINDS = ("coco", "flickr30k")
# Karpathy's "restval" images are the COCO val2014 images not kept for val/test; the usual
# practice (and the one of the paper) is to train on them, so "train" includes them.
_SPLIT_MEMBERS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}


def read_json(path: Path) -> Any:
    """The parsed JSON file; a syntax error names the file, line and column."""
    if not path.is_file():
        raise DataError(f"caption file '{path}' does not exist")
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(
            f"malformed JSON in '{path}': {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read caption file '{path}': {error}") from None


def _field(record: Any, key: str, path: Path, index: int) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise DataError(f"'{path}' image record {index} has no '{key}'")
    return record[key]


def _captions(record: dict[str, Any], path: Path, index: int) -> tuple[str, ...]:
    sentences = _field(record, "sentences", path, index)
    if not isinstance(sentences, list) or not sentences:
        raise DataError(f"'{path}' image record {index} has no sentences")
    captions = []
    for sentence in sentences:
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if not isinstance(raw, str):
            raise DataError(f"'{path}' image record {index} has a sentence without a 'raw' string")
        captions.append(raw.strip())
    return tuple(captions)


def load_karpathy(
    kind: str,
    json_path: str | os.PathLike[str],
    split: str = "test",
    image_root: str | os.PathLike[str] | None = None,
    spec: str | None = None,
) -> CaptionDataset:
    """Images and reference captions of one Karpathy split; "train" also takes the "restval" images.

    Image paths are ROOT/filepath/filename for COCO and ROOT/filename for Flickr30k, where ROOT
    is ``image_root`` or else the JSON file's folder.
    """
    if kind not in KARPATHY_KINDS:
        raise DataError(f"unknown Karpathy dataset '{kind}'; allowed: {', '.join(KARPATHY_KINDS)}")
    if split not in KARPATHY_SPLITS:
        raise DataError(f"unknown split '{split}' for {kind}-karpathy; allowed: {', '.join(KARPATHY_SPLITS)}")
    path = Path(json_path).expanduser()
    root = Path(image_root).expanduser() if image_root is not None else path.parent
    document = read_json(path)
    records = document.get("images") if isinstance(document, dict) else None
    if not isinstance(records, list):
        raise DataError(f"'{path}' has no 'images' list; expected a Karpathy split JSON")

    members = _SPLIT_MEMBERS[split]
    paths: list[Path] = []
    captions: list[tuple[str, ...]] = []
    for index, record in enumerate(records):
        if _field(record, "split", path, index) not in members:
            continue
        filename = _field(record, "filename", path, index)
        # Flickr30k records carry no filepath; COCO's is the folder (train2014 / val2014).
        folder = record.get("filepath", "") if kind == "coco" else ""
        paths.append(root / folder / filename)
        captions.append(_captions(record, path, index))
    if not paths:
        raise DataError(f"'{path}' has no images in split '{split}'")

    try:
        images = FileImages(paths)
    except DataError as error:
        raise DataError(f"{error} (images are looked up under '{root}'; set ?root=DIR to change)") from None
    return CaptionDataset(
        spec=spec or f"{kind}-karpathy:{path}",
        split=split,
        images=images,
        captions=tuple(captions),
    )
