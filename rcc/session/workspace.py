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
        """model → primary metric on the eval split (what the cascade checks after each stage)."""
        from rcc.eval.suite import evaluator

        return evaluator(self.dataset(self.eval_split), cancel=cancel, progress=progress)

    def calibration(self, per_class: int, seed: int):
        from rcc.compression.calibration_sets import calibration_sets

        key = (per_class, seed)
        if key not in self._calibration:
            self._calibration[key] = calibration_sets(self.data, per_class=per_class, seed=seed)
        return self._calibration[key]


def default_eval_split(data: str) -> str:
    """``calib`` when the dataset has one (held out from test), else its last split."""
    from rcc.data.registry import dataset_splits

    splits = dataset_splits(data)
    return "calib" if "calib" in splits else splits[-1]


def check_split(data: str, split: str) -> str:
    from rcc.data.registry import dataset_splits
    from rcc.errors import DataError

    splits = dataset_splits(data)
    if split not in splits:
        raise DataError(f"split {split!r} is not a split of {data!r}; allowed: {', '.join(splits)}")
    return split
