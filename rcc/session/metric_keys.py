"""Metric keys name their split: ``<split>/<metric>`` (``val/primary``, ``test/top1``), sizes ``size/…``.

A node's ``val/primary`` (its eval split's primary metric: top-1, mean recall@1 or CIDEr) is
what the cascade, search and training compare; ``test/…`` appears once the ``evaluate`` op has
reported on the test split. Sessions and recipes written before the data roles used
``eval/primary`` and, on the digits, the split name ``calib``: ``modern_metrics`` renames them.
"""

from __future__ import annotations

from collections.abc import Mapping

PRIMARY = "primary"
LEGACY_EVAL_KEY = "eval/primary"


def metric_key(split: str, metric: str = PRIMARY) -> str:
    return f"{split}/{metric}"


def split_of(key: str) -> str | None:
    """The split a metric key names (``val/primary`` → ``val``); None for sizes and other keys."""
    head, slash, _ = key.partition("/")
    return head if slash and head != "size" else None


def modern_split(data: str | None, split: str | None) -> str | None:
    """``split`` by its current name for ``data`` (digits' ``calib`` is ``val``), or as it is if unknown."""
    if not data or not split:
        return split
    from rcc.data.registry import DATASET_KINDS, parse_dataset_spec
    from rcc.errors import DataError

    try:
        kind = DATASET_KINDS[parse_dataset_spec(data).kind]
    except DataError:
        return split
    return dict(kind.aliases).get(split, split)


def modern_metrics(metrics: Mapping[str, float], data: str | None, eval_split: str | None) -> dict[str, float]:
    """``metrics`` with legacy keys renamed: ``eval/primary`` → ``<eval split>/primary``, old split names → new."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key == LEGACY_EVAL_KEY and eval_split:
            key = metric_key(eval_split)
        split = split_of(key)
        if split is not None:
            key = metric_key(modern_split(data, split) or split, key.partition("/")[2])
        out.setdefault(key, value)
    return out


def legacy_eval_split(data: str, eval_split: str | None) -> str:
    """The eval split a recipe's ``load_model`` used before the data roles: the one it names, else
    the old default (digits' ``calib``, now ``val``; every other kind's ``test``)."""
    from rcc.data.registry import parse_dataset_spec

    default = "calib" if parse_dataset_spec(data).kind == "digits" else "test"
    return modern_split(data, eval_split or default) or default
