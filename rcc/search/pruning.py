"""Early stopping inside a trial: evaluate on growing subsets, cut the hopeless ones.

The eval split is measured in rungs: nested, class-balanced subsets (25 %, 50 %, then all
of it, by default). After every rung but the last, the accuracy p̂ on n items gives an
optimistic bound, the Wilson score upper limit

    u = (p̂ + z²/2n + z·√(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n)

and the trial is pruned when even u cannot make it worth finishing:

- min-size (one objective): each rung reports the optimistic shortfall ``floor − u`` with
  ``trial.report``; Optuna's ``ThresholdPruner(upper=0)`` prunes once it is positive, i.e.
  once the trial cannot meet ``accuracy ≥ threshold × dense`` even optimistically.
- pareto (two objectives): Optuna refuses ``report`` / ``should_prune`` for multi-objective
  studies, so the same bound is checked here: a trial is pruned when a completed trial
  that stores no more (size ≤) is more accurate than u (the trial cannot reach the front),
  or when u is below ``floor × dense``.

Either way the objective raises ``optuna.TrialPruned``, so Optuna records the trial as
PRUNED, with its rung accuracies in the user attribute ``rungs``. The last rung is the
whole split (the very dataset object), so a completed trial's accuracy is exactly what
the session measures on that split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from rcc.data.sampler import subset
from rcc.data.types import ClassificationDataset, Dataset
from rcc.errors import RccError


@dataclass(frozen=True)
class PruningConfig:
    rungs: tuple[float, ...] = (0.25, 0.5, 1.0)  # fractions of the eval split, the last one 1
    z: float = 2.0  # confidence of the optimistic bound
    floor: float = 0.0  # pareto: prune trials clearly below floor × dense accuracy (0: only dominated ones)
    enabled: bool = True
    seed: int = 0  # which items the smaller rungs hold

    def __post_init__(self) -> None:
        rungs = tuple(float(r) for r in self.rungs)
        object.__setattr__(self, "rungs", rungs)
        if not rungs or rungs[-1] != 1.0 or any(not 0 < r <= 1 for r in rungs) or list(rungs) != sorted(set(rungs)):
            raise RccError(f"rungs {list(rungs)} are invalid; allowed: increasing fractions 0 < r ≤ 1 ending with 1")
        if not (math.isfinite(self.z) and self.z >= 0):
            raise RccError(f"z {self.z!r} is invalid; allowed: a number ≥ 0")
        if not 0 <= self.floor <= 1:
            raise RccError(f"floor {self.floor!r} is out of range; allowed: 0 ≤ floor ≤ 1 (of the dense accuracy)")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["rungs"] = list(self.rungs)
        return out


def wilson_upper(p: float, n: int, z: float) -> float:
    """The Wilson score upper limit of a proportion p̂ = p measured on n items (see the module docstring)."""
    if n <= 0:
        return 1.0
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z2 / n))


def nested_subsets(dataset: Dataset, fractions: Sequence[float], seed: int) -> list[Dataset]:
    """One dataset per fraction, each holding the previous; the last (fraction 1) is ``dataset`` itself.

    Classification data is shuffled within each class (one numpy Generator(seed)) and every
    rung takes ⌈f·n_c⌉ items of class c, so small rungs stay balanced.
    """
    rng = np.random.default_rng(seed)
    if isinstance(dataset, ClassificationDataset):
        labels = np.asarray(dataset.labels)
        per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]

        def pick(fraction: float) -> list[int]:
            return sorted(int(i) for members in per_class for i in members[:math.ceil(fraction * len(members))])
    else:
        order = rng.permutation(len(dataset))

        def pick(fraction: float) -> list[int]:
            return sorted(int(i) for i in order[:math.ceil(fraction * len(order))])
    return [dataset if fraction >= 1.0 else subset(dataset, pick(fraction)) for fraction in fractions]


class MemoryFeatureCache:
    """The feature cache interface (get / put) in memory, holding the newest ``limit`` entries.

    Keys hash the tower's weights, so an entry is only hit by the very same computation: the
    class prompts are encoded once per trial (not once per rung), and the image features of
    a tower the search leaves alone once per worker.
    """

    def __init__(self, limit: int = 64):
        from collections import OrderedDict

        self.limit = limit
        self._items: OrderedDict[str, object] = OrderedDict()

    def get(self, key: str):
        if key in self._items:
            self._items.move_to_end(key)
        return self._items.get(key)

    def put(self, key: str, features) -> None:
        self._items[key] = features
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)


@dataclass
class RungLog:
    """What the rungs measured: (items, accuracy) pairs, and why the trial stopped early, if it did."""

    rungs: list[tuple[int, float]] = field(default_factory=list)
    reason: str = ""


def dominated_reason(size: float, upper: float, completed: Sequence[tuple[int, float, float]]) -> str:
    """Why a trial of ``size`` whose accuracy is at most ``upper`` cannot reach the front ('' if it can).

    ``completed`` holds (trial number, size, accuracy) of completed trials.
    """
    for number, other_size, other_accuracy in completed:
        if other_size <= size and other_accuracy > upper:
            return (f"dominated by trial {number} ({other_size:,.0f} stored, accuracy {other_accuracy:.4f} > "
                    f"optimistic {upper:.4f})")
    return ""


def bounded_metric(task: str) -> bool:
    """Whether the primary metric is a proportion in [0, 1] (the Wilson bound needs one)."""
    return task in ("zeroshot", "retrieval")
