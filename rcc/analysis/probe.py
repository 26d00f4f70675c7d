"""A probe: model → per-example outcomes on one dataset split, reusing unchanged towers' features.

Analyses evaluate the same model many times with one layer (or stage) changed; the tower that
did not change gives the same features every time. The feature cache is keyed by the tower's
weight fingerprint (``rcc.eval.zeroshot``), so a private in-memory cache makes each re-evaluation
cost only the changed tower, and can never return features of other weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rcc.data.types import Dataset
from rcc.eval.per_example import ExampleOutcomes, example_outcomes, primary_from_outcomes
from rcc.models.adapter import VLModel

Probe = Callable[[VLModel], ExampleOutcomes]


class MemoryFeatureCache:
    """``FeatureCache``'s get/put in memory, bounded to the last ``limit`` entries (FIFO)."""

    def __init__(self, limit: int = 8):
        self.limit = limit
        self.entries: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> torch.Tensor | None:
        found = self.entries.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: str, features: torch.Tensor) -> None:
        self.entries[key] = features
        while len(self.entries) > self.limit:
            self.entries.pop(next(iter(self.entries)))


def outcome_probe(dataset: Dataset, templates: Sequence[str] | None = None, k: int = 1) -> Probe:
    """A probe of ``dataset`` with its own feature cache (zero-shot: classifier and image features)."""
    cache = MemoryFeatureCache()

    def probe(model: VLModel) -> ExampleOutcomes:
        return example_outcomes(model, dataset, templates=templates, cache=cache, k=k)

    return probe


def metric_of(probe: Probe) -> Callable[[VLModel], float]:
    """The primary metric through a probe (what the cascade's back-off checks)."""
    return lambda model: primary_from_outcomes(probe(model))
