"""ImageNet-val style folders: DIR/<class>/<image>, label ids from the sorted class folder names."""

from __future__ import annotations

import os
from pathlib import Path

from rcc.data.images import FileImages
from rcc.data.types import ClassificationDataset
from rcc.errors import DataError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
CLASSNAMES_FILE = "classnames.txt"
# One folder is one split: the folder the user pointed at is what gets evaluated.
IMAGEFOLDER_SPLITS = ("test",)


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
) -> ClassificationDataset:
    """Every image under DIR/<class>/, labelled by the class folder's rank in sorted order."""
    if split not in IMAGEFOLDER_SPLITS:
        raise DataError(
            f"unknown split '{split}' for imagefolder (one folder is one split); "
            f"allowed: {', '.join(IMAGEFOLDER_SPLITS)}"
        )
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
        names = tuple(p.name.replace("_", " ") for p in class_dirs)

    return ClassificationDataset(
        spec=spec or f"imagefolder:{root}",
        split=split,
        images=FileImages(paths),
        labels=tuple(labels),
        classnames=names,
    )
