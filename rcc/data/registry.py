"""Dataset specs (`KIND[:PATH][?key=value&...]`) and the one entry point that loads them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from rcc.data.captions_csv import CAPTIONS_CSV_SPLITS, load_captions_csv
from rcc.data.cifar import CIFAR_SPLITS, load_cifar
from rcc.data.digits import DIGITS_LAYOUT, DIGITS_SPLIT_ALIASES, DIGITS_SPLITS, load_digits_split
from rcc.data.holdout import (
    DEFAULT_FRACTIONS, DEFAULT_SEED, DEFAULT_VAL_FRACTION, parse_fractions, parse_seed, parse_val_size,
)
from rcc.data.imagefolder import IMAGEFOLDER_SPLITS, load_imagefolder
from rcc.data.karpathy import KARPATHY_LAYOUT, KARPATHY_SPLITS, load_karpathy
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
    """What one kind of dataset accepts: path or not, which options, which splits, how they are made."""

    name: str
    form: str
    takes_path: bool
    options: tuple[str, ...]
    splits: tuple[str, ...]
    takes_root: bool  # whether root_override (the image root of caption datasets) applies
    load: Loader
    # How the splits are made, in words, with every size and seed (shown with a session's data).
    layout: Callable[[DatasetSpec], str]
    # Options that decide the splits, with their defaults (written out by ``canonical_spec``).
    split_defaults: tuple[tuple[str, str], ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()  # old split name -> split name


def _path(spec: DatasetSpec) -> Path:
    assert spec.path is not None
    return Path(spec.path)


def _root(spec: DatasetSpec, root_override: str | None) -> str | None:
    return root_override if root_override is not None else spec.option("root")


def _seed(spec: DatasetSpec) -> int:
    return parse_seed(spec.option("seed") or str(DEFAULT_SEED), spec.text)


def _fractions(spec: DatasetSpec) -> tuple[float, float, float]:
    text = spec.option("split")
    return DEFAULT_FRACTIONS if text is None else parse_fractions(text, spec.text)


def _val(spec: DatasetSpec) -> float | int:
    text = spec.option("val")
    return DEFAULT_VAL_FRACTION if text is None else parse_val_size(text, spec.text)


def _cut_layout(what: str, how: str):
    def layout(spec: DatasetSpec) -> str:
        train, val, test = (f"{f * 100:g} %" for f in _fractions(spec))
        return f"train {train} / val {val} / test {test} of {what} ({how}seed {_seed(spec)})"
    return layout


def _cifar_layout(spec: DatasetSpec) -> str:
    size = _val(spec)
    held = f"{size * 100:g} %" if isinstance(size, float) else f"{size:,} images"
    return f"val: {held} of the train batches held out (class-balanced, seed {_seed(spec)}); train: the rest; " \
           f"test: the test batch"


_CUT_DEFAULTS = (("split", ",".join(f"{f:g}" for f in DEFAULT_FRACTIONS)), ("seed", str(DEFAULT_SEED)))
_KINDS = (
    DatasetKind("digits", "digits", False, (), DIGITS_SPLITS, False,
                lambda s, split, _: load_digits_split(split, spec=s.text), lambda s: DIGITS_LAYOUT,
                aliases=tuple(DIGITS_SPLIT_ALIASES.items())),
    DatasetKind("imagefolder", "imagefolder:DIR[?classnames=FILE&split=0.7,0.1,0.2&seed=0]", True,
                ("classnames", "split", "seed"), IMAGEFOLDER_SPLITS, False,
                lambda s, split, _: load_imagefolder(_path(s), s.option("classnames"), split, spec=s.text,
                                                     fractions=_fractions(s), seed=_seed(s)),
                _cut_layout("the folder", "stratified, "), _CUT_DEFAULTS),
    DatasetKind("cifar10", "cifar10:DIR[?val=0.1&seed=0]", True, ("val", "seed"), CIFAR_SPLITS, False,
                lambda s, split, _: load_cifar("cifar10", _path(s), split, spec=s.text, val=_val(s), seed=_seed(s)),
                _cifar_layout, (("val", f"{DEFAULT_VAL_FRACTION:g}"), ("seed", str(DEFAULT_SEED)))),
    DatasetKind("cifar100", "cifar100:DIR[?val=0.1&seed=0]", True, ("val", "seed"), CIFAR_SPLITS, False,
                lambda s, split, _: load_cifar("cifar100", _path(s), split, spec=s.text, val=_val(s), seed=_seed(s)),
                _cifar_layout, (("val", f"{DEFAULT_VAL_FRACTION:g}"), ("seed", str(DEFAULT_SEED)))),
    DatasetKind("coco-karpathy", "coco-karpathy:JSON[?root=DIR]", True, ("root",), KARPATHY_SPLITS, True,
                lambda s, split, root: load_karpathy("coco", _path(s), split, _root(s, root), spec=s.text),
                lambda s: KARPATHY_LAYOUT),
    DatasetKind("flickr30k-karpathy", "flickr30k-karpathy:JSON[?root=DIR]", True, ("root",), KARPATHY_SPLITS, True,
                lambda s, split, root: load_karpathy("flickr30k", _path(s), split, _root(s, root), spec=s.text),
                lambda s: KARPATHY_LAYOUT),
    DatasetKind("captions-csv", "captions-csv:FILE[?root=DIR&split=0.7,0.1,0.2&seed=0]", True,
                ("root", "split", "seed"), CAPTIONS_CSV_SPLITS, True,
                lambda s, split, root: load_captions_csv(_path(s), split, _root(s, root), spec=s.text,
                                                         fractions=_fractions(s), seed=_seed(s)),
                _cut_layout("the file's images", ""), _CUT_DEFAULTS),
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


def canonical_split(spec: str, split: str) -> str:
    """``split`` by its current name (digits' old ``calib`` is ``val``); an unknown split is refused."""
    kind = DATASET_KINDS[parse_dataset_spec(spec).kind]
    split = dict(kind.aliases).get(split, split)
    if split not in kind.splits:
        raise DataError(f"unknown split '{split}' for dataset '{spec}'; allowed: {', '.join(kind.splits)}")
    return split


def canonical_spec(spec: str) -> str:
    """The spec with every option that decides its splits written out (defaults included), checked.

    What a session records, so that its splits never depend on a default that may change.
    """
    parsed = parse_dataset_spec(spec)
    kind = DATASET_KINDS[parsed.kind]
    if not kind.split_defaults:
        return parsed.text
    options = dict(kind.split_defaults) | dict(parsed.options)
    kind.layout(replace(parsed, options=tuple(options.items())))  # parses (and so checks) every value
    query = "&".join(f"{key}={options[key]}" for key in kind.options if key in options)
    return f"{parsed.kind}:{parsed.path}?{query}"


def split_layout(spec: str) -> str:
    """How the dataset's train / val / test splits are made, with their sizes and seed, in words."""
    parsed = parse_dataset_spec(spec)
    return DATASET_KINDS[parsed.kind].layout(parsed)


def load_dataset(
    spec: str, split: str = "test", root_override: str | os.PathLike[str] | None = None
) -> Dataset:
    """Load one split of the dataset named by ``spec`` (see ``DATASET_FORMS``).

    ``root_override`` is the folder that relative image paths of caption datasets resolve
    against; it wins over a ``?root=`` option in the spec.
    """
    parsed = parse_dataset_spec(spec)
    kind = DATASET_KINDS[parsed.kind]
    split = canonical_split(spec, split)
    if root_override is not None and not kind.takes_root:
        allowed = ", ".join(k.name for k in _KINDS if k.takes_root)
        raise DataError(f"an image root override does not apply to dataset '{spec}'; it applies to: {allowed}")
    return kind.load(parsed, split, None if root_override is None else os.fspath(root_override))
