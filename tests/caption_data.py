"""A tiny Karpathy-style caption dataset (Flickr30k layout), written offline for tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

_NOUNS = ("cat", "dog", "bird", "car", "truck", "plane", "ship", "horse", "deer", "frog")
_COLOURS = ("red", "green", "blue", "black", "white")


def caption_for(index: int, variant: int) -> str:
    noun, colour = _NOUNS[index % len(_NOUNS)], _COLOURS[index % len(_COLOURS)]
    return (f"a photo of a {colour} {noun}", f"two {noun}s sitting on the {colour} car")[variant % 2]


def save_tiny_karpathy(directory: str | Path, counts: dict[str, int] | None = None, seed: int = 0) -> Path:
    """``flickr30k-karpathy`` JSON plus random RGB images: per split the given number of images
    (default train 8, val 4, test 4), two captions each from the tiny tokenizer's words."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    index = 0
    for split, count in (counts or {"train": 8, "val": 4, "test": 4}).items():
        for _ in range(count):
            name = f"img{index:03d}.png"
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(directory / name)
            sentences = [{"raw": caption_for(index, v), "tokens": caption_for(index, v).split()} for v in range(2)]
            records.append({"filename": name, "split": split, "sentences": sentences})
            index += 1
    path = directory / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": records, "dataset": "flickr30k"}))
    return path
