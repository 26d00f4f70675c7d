"""ImageNet-val style folders: DIR/<class>/<image>, label ids from the sorted class folder names.

One folder is one collection, cut once into train / val / test (``?split=TRAIN,VAL,TEST``
fractions, default 0.7,0.1,0.2; ``?seed=``, default 0; val and test stratified by class, see
``rcc.data.holdout``), so calibration, eval and test never share an image. ``all`` is the whole
folder, for reports on a folder that is a test set in itself (``rcc-tui eval --split all``).

Class names: ``?classnames=FILE``, else DIR/classnames.txt, else ImageNet's names when the
folders are WordNet IDs (``rcc.data.imagenet_classes``), else the folder names.
"""

from __future__ import annotations

import os
from pathlib import Path

from rcc.data.holdout import DEFAULT_FRACTIONS, DEFAULT_SEED, three_way
from rcc.data.imagenet_classes import imagenet_folder_names
from rcc.data.images import FileImages
from rcc.data.types import ClassificationDataset
from rcc.errors import DataError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
CLASSNAMES_FILE = "classnames.txt"
IMAGEFOLDER_SPLITS = ("train", "val", "test", "all")


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _class_images(folder: Path) -> list[Path]:
    # Recursive like torchvision's ImageFolder, sorted so label order and image order are stable.
    found = []
    for current, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(current) / name)
    return found


def read_classnames(path: Path, expected: int, root: Path) -> tuple[str, ...]:
    """Class names from a text file, one per line in sorted folder order; blank lines are ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read classnames file '{path}': {error}") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != expected:
        raise DataError(
            f"classnames file '{path}' has {len(names)} names but '{root}' has {expected} class folders"
        )
    return names


def load_imagefolder(
    root: str | os.PathLike[str],
    classnames_file: str | os.PathLike[str] | None = None,
    split: str = "test",
    spec: str | None = None,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = DEFAULT_SEED,
) -> ClassificationDataset:
    """The images of one split under DIR/<class>/, labelled by the class folder's rank in sorted order."""
    if split not in IMAGEFOLDER_SPLITS:
        raise DataError(f"unknown split '{split}' for imagefolder; allowed: {', '.join(IMAGEFOLDER_SPLITS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"imagefolder directory '{root}' does not exist")
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not _is_hidden(p)), key=lambda p: p.name)
    if not class_dirs:
        raise DataError(f"no class folders in '{root}'; expected one sub-folder of images per class")

    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(class_dirs):
        images = _class_images(folder)
        if not images:
            raise DataError(
                f"class folder '{folder}' has no images; allowed extensions: {', '.join(IMAGE_EXTENSIONS)}"
            )
        paths.extend(images)
        labels.extend([label] * len(images))

    if classnames_file is not None:
        names = read_classnames(Path(classnames_file).expanduser(), len(class_dirs), root)
    elif (root / CLASSNAMES_FILE).is_file():
        names = read_classnames(root / CLASSNAMES_FILE, len(class_dirs), root)
    else:
        folders = [p.name for p in class_dirs]
        names = imagenet_folder_names(folders, root) or tuple(name.replace("_", " ") for name in folders)

    if split != "all":
        chosen = three_way(labels, fractions, seed, f"imagefolder '{root}'")[split]
        paths, labels = [paths[i] for i in chosen], [labels[i] for i in chosen]
    return ClassificationDataset(
        spec=spec or f"imagefolder:{root}",
        split=split,
        images=FileImages(paths),
        labels=tuple(labels),
        classnames=names,
    )
