"""CIFAR-10 / CIFAR-100 from the official binary releases (no pickle is ever loaded).

The official test batch is the test split. The eval split ``val`` is a class-balanced slice
held out of the train batches (``?val=`` a fraction or a count, ``?seed=``; default 10 %,
seed 0: 5,000 of the 50,000), and ``train`` is the rest, so calibration, eval and test are
disjoint. Class names come from the release's own meta file (``batches.meta.txt``,
``fine_label_names.txt``), which spells them as CLIP_benchmark does once ``_`` is a space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rcc.data.holdout import DEFAULT_SEED, DEFAULT_VAL_FRACTION, held_out
from rcc.data.images import ArrayImages
from rcc.data.types import ClassificationDataset, indices_subset
from rcc.errors import DataError

CIFAR_SPLITS = ("train", "val", "test")
_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its files and how its records are laid out."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    names_file: str
    label_bytes: int  # bytes before the pixels; the label we use is the last of them
    num_classes: int

    @property
    def record_size(self) -> int:
        return self.label_bytes + _PIXELS


CIFAR10 = CifarLayout(
    name="cifar10",
    folder="cifar-10-batches-bin",
    train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    test_files=("test_batch.bin",),
    names_file="batches.meta.txt",
    label_bytes=1,
    num_classes=10,
)
# CIFAR-100 records are <coarse label><fine label><pixels>; rcc classifies the 100 fine labels.
CIFAR100 = CifarLayout(
    name="cifar100",
    folder="cifar-100-binary",
    train_files=("train.bin",),
    test_files=("test.bin",),
    names_file="fine_label_names.txt",
    label_bytes=2,
    num_classes=100,
)
CIFAR_LAYOUTS = {layout.name: layout for layout in (CIFAR10, CIFAR100)}


def find_cifar_folder(root: Path, layout: CifarLayout) -> Path:
    """The folder holding the .bin files: ROOT itself if it has them, else ROOT/<official folder name>."""
    if (root / layout.train_files[0]).is_file() or (root / layout.test_files[0]).is_file():
        return root
    if (root / layout.folder).is_dir():
        return root / layout.folder
    if root.is_dir() and root.name == layout.folder:
        return root
    if not root.exists():
        raise DataError(f"{layout.name} folder '{root}' does not exist")
    raise DataError(
        f"no {layout.name} binary files in '{root}'; expected {layout.folder}/ or its files "
        f"({layout.train_files[0]}, {layout.test_files[0]}, {layout.names_file})"
    )


def read_records(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) and HWC uint8 pixels (N, 32, 32, 3) from one binary batch file."""
    if not path.is_file():
        raise DataError(f"{layout.name} file '{path}' does not exist")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % layout.record_size:
        raise DataError(
            f"{layout.name} file '{path}' has {raw.size} bytes, not a positive multiple of the "
            f"{layout.record_size}-byte record"
        )
    records = raw.reshape(-1, layout.record_size)
    labels = records[:, layout.label_bytes - 1].astype(np.int64)
    # Each record stores the R plane, then G, then B, each 32x32 row-major; PIL wants HWC.
    pixels = records[:, layout.label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    bad = np.flatnonzero(labels >= layout.num_classes)
    if bad.size:
        raise DataError(
            f"{layout.name} file '{path}' record {int(bad[0])} has label {int(labels[bad[0]])}; "
            f"allowed: 0-{layout.num_classes - 1}"
        )
    return labels, pixels


def read_cifar_classnames(path: Path, layout: CifarLayout) -> tuple[str, ...]:
    """Class names from the release's text meta file (one per line, underscores become spaces)."""
    if not path.is_file():
        raise DataError(f"{layout.name} file '{path}' does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {layout.name} file '{path}': {error}") from None
    names = tuple(line.strip().replace("_", " ") for line in lines if line.strip())
    if len(names) != layout.num_classes:
        raise DataError(
            f"{layout.name} file '{path}' has {len(names)} class names; expected {layout.num_classes}"
        )
    return names


def load_cifar(
    kind: str, root: str | os.PathLike[str], split: str = "test", spec: str | None = None,
    val: float | int = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SEED,
) -> ClassificationDataset:
    """One split of CIFAR-10 ("cifar10") or CIFAR-100 ("cifar100"): the test batch (10,000 images),
    ``val`` (held out of the train batches, see the module docstring) or the train batches less val.

    Train and val images are views of all train images (``indices_subset``), so a read names its source.
    """
    if kind not in CIFAR_LAYOUTS:
        raise DataError(f"unknown CIFAR variant '{kind}'; allowed: {', '.join(CIFAR_LAYOUTS)}")
    layout = CIFAR_LAYOUTS[kind]
    if split not in CIFAR_SPLITS:
        raise DataError(f"unknown split '{split}' for {kind}; allowed: {', '.join(CIFAR_SPLITS)}")
    folder = find_cifar_folder(Path(root).expanduser(), layout)
    names = read_cifar_classnames(folder / layout.names_file, layout)
    files = layout.test_files if split == "test" else layout.train_files
    parts = [read_records(folder / name, layout) for name in files]
    labels = np.concatenate([labels for labels, _ in parts])
    images = ArrayImages(np.concatenate([pixels for _, pixels in parts]))
    if split != "test":
        chosen = held_out(labels.tolist(), val, seed, f"{kind} '{root}'")[split]
        images, labels = indices_subset(images, chosen), labels[list(chosen)]
    return ClassificationDataset(
        spec=spec or f"{kind}:{root}",
        split=split,
        images=images,
        labels=tuple(int(v) for v in labels),
        classnames=names,
    )
