"""Image-caption pairs from a CSV (Conceptual-Captions style): columns `image` and `caption`.

One file is one collection, cut once by image into train / val / test (``?split=TRAIN,VAL,TEST``
fractions, default 0.7,0.1,0.2; ``?seed=``, default 0), so calibration, eval and test never
share an image; ``all`` is every image, for reports on a file that is a test set in itself.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from rcc.data.holdout import DEFAULT_FRACTIONS, DEFAULT_SEED, three_way
from rcc.data.images import FileImages
from rcc.data.types import CaptionDataset
from rcc.errors import DataError

CAPTIONS_CSV_SPLITS = ("train", "val", "test", "all")
REQUIRED_COLUMNS = ("image", "caption")


def read_caption_rows(path: Path) -> list[tuple[str, str]]:
    """(image, caption) per data row; a .tsv file is read tab-separated, anything else comma-separated."""
    if not path.is_file():
        raise DataError(f"captions file '{path}' does not exist")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark that would rename 'image'.
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise DataError(f"captions file '{path}' is empty")
            columns = [name.strip().lower() for name in header]
            missing = [name for name in REQUIRED_COLUMNS if name not in columns]
            if missing:
                raise DataError(
                    f"captions file '{path}' has columns {', '.join(repr(c) for c in header)}; "
                    f"missing {', '.join(repr(m) for m in missing)} (needs 'image' and 'caption')"
                )
            image_at, caption_at = columns.index("image"), columns.index("caption")
            rows = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                line = reader.line_num
                if len(row) <= max(image_at, caption_at):
                    raise DataError(f"captions file '{path}' line {line} has {len(row)} fields; expected {len(header)}")
                image, caption = row[image_at].strip(), row[caption_at].strip()
                if not image or not caption:
                    raise DataError(f"captions file '{path}' line {line} has an empty image or caption")
                rows.append((image, caption))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read captions file '{path}': {error}") from None
    if not rows:
        raise DataError(f"captions file '{path}' has a header but no rows")
    return rows


def load_captions_csv(
    csv_path: str | os.PathLike[str],
    split: str = "test",
    image_root: str | os.PathLike[str] | None = None,
    spec: str | None = None,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = DEFAULT_SEED,
) -> CaptionDataset:
    """One image per distinct path (first-seen order), with all of its captions in file order,
    of one split (see the module docstring).

    Relative image paths resolve against ``image_root``, else the CSV file's folder.
    """
    if split not in CAPTIONS_CSV_SPLITS:
        raise DataError(f"unknown split '{split}' for captions-csv; allowed: {', '.join(CAPTIONS_CSV_SPLITS)}")
    path = Path(csv_path).expanduser()
    root = Path(image_root).expanduser() if image_root is not None else path.parent
    grouped: dict[str, list[str]] = {}
    for image, caption in read_caption_rows(path):
        grouped.setdefault(image, []).append(caption)
    # Path / absolute keeps absolute paths as they are.
    paths = [root / Path(image).expanduser() for image in grouped]
    captions = [tuple(texts) for texts in grouped.values()]
    if split != "all":
        chosen = three_way([0] * len(paths), fractions, seed, f"captions file '{path}'")[split]
        paths, captions = [paths[i] for i in chosen], [captions[i] for i in chosen]
    return CaptionDataset(
        spec=spec or f"captions-csv:{path}",
        split=split,
        images=FileImages(paths),
        captions=tuple(captions),
    )
