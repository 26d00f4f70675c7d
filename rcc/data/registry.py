"""Dataset specs (`KIND[:PATH][?key=value&...]`) and the one entry point that loads them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rcc.data.captions_csv import CAPTIONS_CSV_SPLITS, load_captions_csv
from rcc.data.cifar import CIFAR_SPLITS, load_cifar
from rcc.data.digits import DIGITS_SPLITS, load_digits_split
from rcc.data.imagefolder import IMAGEFOLDER_SPLITS, load_imagefolder
from rcc.data.karpathy import KARPATHY_SPLITS, load_karpathy
from rcc.data.types import Dataset
from rcc.errors import DataError


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset spec: its kind, its path (if the kind takes one) and its options."""

    text: str
    kind: str
    path: str | None
    options: tuple[tuple[str, str], ...]

    def option(self, key: str) -> str | None:
        return dict(self.options).get(key)


# (parsed spec, split, image root override or None) -> dataset
Loader = Callable[[DatasetSpec, str, str | None], Dataset]


@dataclass(frozen=True)
class DatasetKind:
    """What one kind of dataset accepts: path or not, which options, which splits."""

    name: str
    form: str
    takes_path: bool
    options: tuple[str, ...]
    splits: tuple[str, ...]
    takes_root: bool  # whether root_override (the image root of caption datasets) applies
    load: Loader


def _path(spec: DatasetSpec) -> Path:
    assert spec.path is not None
    return Path(spec.path)


def _root(spec: DatasetSpec, root_override: str | None) -> str | None:
    return root_override if root_override is not None else spec.option("root")


_KINDS = (
    DatasetKind("digits", "digits", False, (), DIGITS_SPLITS, False,
                lambda s, split, _: load_digits_split(split, spec=s.text)),
    DatasetKind("imagefolder", "imagefolder:DIR[?classnames=FILE]", True, ("classnames",), IMAGEFOLDER_SPLITS, False,
                lambda s, split, _: load_imagefolder(_path(s), s.option("classnames"), split, spec=s.text)),
    DatasetKind("cifar10", "cifar10:DIR", True, (), CIFAR_SPLITS, False,
                lambda s, split, _: load_cifar("cifar10", _path(s), split, spec=s.text)),
    DatasetKind("cifar100", "cifar100:DIR", True, (), CIFAR_SPLITS, False,
                lambda s, split, _: load_cifar("cifar100", _path(s), split, spec=s.text)),
    DatasetKind("coco-karpathy", "coco-karpathy:JSON[?root=DIR]", True, ("root",), KARPATHY_SPLITS, True,
                lambda s, split, root: load_karpathy("coco", _path(s), split, _root(s, root), spec=s.text)),
    DatasetKind("flickr30k-karpathy", "flickr30k-karpathy:JSON[?root=DIR]", True, ("root",), KARPATHY_SPLITS, True,
                lambda s, split, root: load_karpathy("flickr30k", _path(s), split, _root(s, root), spec=s.text)),
    DatasetKind("captions-csv", "captions-csv:FILE[?root=DIR]", True, ("root",), CAPTIONS_CSV_SPLITS, True,
                lambda s, split, root: load_captions_csv(_path(s), split, _root(s, root), spec=s.text)),
)
DATASET_KINDS = {kind.name: kind for kind in _KINDS}
# The accepted spec forms, in the order the CLI help and error messages list them.
DATASET_FORMS: tuple[str, ...] = tuple(kind.form for kind in _KINDS)


def _unknown(text: str) -> DataError:
    return DataError(f"unknown dataset '{text}'; allowed: {', '.join(DATASET_FORMS)}")


def parse_dataset_spec(text: str) -> DatasetSpec:
    """Split ``KIND[:PATH][?key=value&key=value]`` and check kind, path and option names."""
    stripped = text.strip()
    head, has_query, query = stripped.partition("?")
    name, has_path, path = head.partition(":")
    kind = DATASET_KINDS.get(name.strip())
    if kind is None:
        raise _unknown(text)
    if kind.takes_path and not path.strip():
        raise DataError(f"dataset '{text}' needs a path; expected {kind.form}")
    if not kind.takes_path and has_path:
        raise DataError(f"dataset '{text}' takes no path; expected {kind.form}")

    options: dict[str, str] = {}
    for item in query.split("&") if has_query else ():
        key, has_value, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not has_value or not key or not value:
            raise DataError(f"malformed option '{item}' in dataset '{text}'; expected key=value")
        if key not in kind.options:
            allowed = ", ".join(kind.options) if kind.options else "none"
            raise DataError(f"unknown option '{key}' in dataset '{text}'; allowed for {kind.name}: {allowed}")
        if key in options:
            raise DataError(f"option '{key}' given twice in dataset '{text}'")
        options[key] = value
    return DatasetSpec(
        text=stripped,
        kind=kind.name,
        path=os.path.expanduser(path.strip()) if kind.takes_path else None,
        options=tuple(options.items()),
    )


def dataset_splits(spec: str) -> tuple[str, ...]:
    """The split names a dataset spec accepts, without reading any data."""
    return DATASET_KINDS[parse_dataset_spec(spec).kind].splits


def load_dataset(
    spec: str, split: str = "test", root_override: str | os.PathLike[str] | None = None
) -> Dataset:
    """Load one split of the dataset named by ``spec`` (see ``DATASET_FORMS``).

    ``root_override`` is the folder that relative image paths of caption datasets resolve
    against; it wins over a ``?root=`` option in the spec.
    """
    parsed = parse_dataset_spec(spec)
    kind = DATASET_KINDS[parsed.kind]
    if split not in kind.splits:
        raise DataError(f"unknown split '{split}' for dataset '{spec}'; allowed: {', '.join(kind.splits)}")
    if root_override is not None and not kind.takes_root:
        allowed = ", ".join(k.name for k in _KINDS if k.takes_root)
        raise DataError(f"an image root override does not apply to dataset '{spec}'; it applies to: {allowed}")
    return kind.load(parsed, split, None if root_override is None else os.fspath(root_override))
