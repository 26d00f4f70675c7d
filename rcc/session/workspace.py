"""The live objects a session works on: the model, its datasets, calibration data and evaluators.

Loaded once per process and cached; none of it is stored (the op log says how to rebuild it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rcc.models.adapter import VLModel


@dataclass
class Workspace:
    model: VLModel
    data: str
    eval_split: str
    test_split: str
    _datasets: dict = field(default_factory=dict)
    _calibration: dict = field(default_factory=dict)

    def dataset(self, split: str):
        from rcc.data.registry import load_dataset

        if split not in self._datasets:
            self._datasets[split] = load_dataset(self.data, split)
        return self._datasets[split]

    def evaluate(self, split: str | None = None, cancel=None, progress=None):
        """The full evaluation report of the model as it is now on ``split`` (default: the eval split)."""
        from rcc.eval.suite import run_eval

        return run_eval(self.model, self.dataset(split or self.eval_split), cancel=cancel, progress=progress)

    def evaluator(self, cancel=None, progress=None):
        """model → primary metric on the eval split (what the cascade, backoff and training's model
        selection check); ``progress(done, total, what)`` hears each evaluation's batches."""
        from rcc.eval.suite import evaluator

        return evaluator(self.dataset(self.eval_split), cancel=cancel, progress=progress)

    def calibration(self, per_class: int, seed: int):
        """(X, K₀) from the train split (``rcc.compression.calibration_sets``), cached per size and seed."""
        from rcc.compression.calibration_sets import calibration_sets
        from rcc.data.roles import CALIBRATION_SPLIT

        key = (per_class, seed)
        if key not in self._calibration:
            self._calibration[key] = calibration_sets(self.data, per_class=per_class, seed=seed,
                                                      train=self.dataset(CALIBRATION_SPLIT))
        return self._calibration[key]


def default_eval_split(data: str) -> str:
    """The split the cascade, backoff, search, sensitivity and training's model selection read: ``val``."""
    from rcc.data.roles import eval_split_of

    return eval_split_of(data)


def check_split(data: str, split: str) -> str:
    """``split`` by its current name (``rcc.data.registry.canonical_split``), refused if ``data`` has no such split."""
    from rcc.data.registry import canonical_split

    return canonical_split(data, split)
