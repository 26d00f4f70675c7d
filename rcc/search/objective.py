"""What a trial measures: compress a fresh copy of the model with the trial's plan, then size and accuracy.

Objectives:

    pareto     minimise size, maximise accuracy (two objectives; NSGA-II or TPE)
    min-size   minimise size subject to accuracy ≥ threshold × dense (one objective, the
               accuracy bound as an Optuna constraint: c = threshold · dense − accuracy ≤ 0)

Size is the number of stored values (``size/params``: kept entries of masked weights plus
every other parameter) or the bytes the compressed export writes (``size/bytes``), as the
session measures nodes. Accuracy is the evaluation suite's primary metric (zero-shot top-1
on digits) on the session's eval split; "dense" is the model the search starts from.

Each trial deep-copies the base model (the session's model is never touched), compresses
the copy (rcc.session.trial_compress.compress) and measures it in rungs (rcc.search.pruning).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from rcc.compression.cascade import STAGES
from rcc.search.pruning import (
    MemoryFeatureCache, PruningConfig, RungLog, bounded_metric, dominated_reason, nested_subsets, wilson_upper,
)
from rcc.session.trial_compress import compress
from rcc.compression.trial_record import make_record
from rcc.search.space import SearchError, SearchSpace, plan_from_params, suggest

MODES = ("pareto", "min-size")
SIZES = ("params", "bytes")
SAMPLERS = ("tpe", "nsga2")


@dataclass(frozen=True)
class ObjectiveConfig:
    mode: str = "pareto"
    size: str = "params"
    threshold: float = 0.95  # min-size: accuracy ≥ threshold × dense
    stages: tuple[str, ...] = ("dare",)
    calib_per_class: int = 16
    whiten: bool = True
    preserve: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        if self.mode not in MODES:
            raise SearchError(f"objective {self.mode!r} is unknown; allowed: {', '.join(MODES)}")
        if self.size not in SIZES:
            raise SearchError(f"size measure {self.size!r} is unknown; allowed: {', '.join(SIZES)}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0 <= self.threshold <= 1:
            raise SearchError(f"threshold {self.threshold!r} is out of range; allowed: 0 ≤ threshold ≤ 1 "
                              f"(of the dense accuracy)")
        if not self.stages or any(stage not in STAGES for stage in self.stages):
            raise SearchError(f"stages {list(self.stages)} are invalid; allowed: a non-empty list of "
                              f"{', '.join(STAGES)}")
        if isinstance(self.calib_per_class, bool) or not isinstance(self.calib_per_class, int) \
                or not 1 <= self.calib_per_class <= 10_000:
            raise SearchError(f"calibration size {self.calib_per_class!r} is invalid; allowed: 1 to 10000 per class")

    @property
    def directions(self) -> list[str]:
        return ["minimize", "maximize"] if self.mode == "pareto" else ["minimize"]

    def as_dict(self) -> dict:
        out = asdict(self)
        out["stages"] = list(self.stages)
        return out


@dataclass
class SearchContext:
    """The live objects one worker needs; built once per process (rcc.search.study.load_context)."""

    model: object  # VLModel at the searched node; never mutated
    space: SearchSpace
    objective: ObjectiveConfig
    pruning: PruningConfig
    eval_data: object  # the full eval split
    calibration: object
    preserved: object
    dense_accuracy: float
    node: int
    task: str
    worker: int = 0
    sampler_seed: int = 0
    rung_data: list = field(default_factory=list)
    cache: MemoryFeatureCache = field(default_factory=MemoryFeatureCache)

    def __post_init__(self) -> None:
        if not self.rung_data:
            self.rung_data = nested_subsets(self.eval_data, self.pruning.rungs, self.pruning.seed)

    @property
    def floor(self) -> float:
        """Accuracy a min-size trial must reach: threshold × dense."""
        return self.objective.threshold * self.dense_accuracy


def size_of(model) -> dict[str, float]:
    """``size/params``, ``size/bytes``, ``size/total`` as the session measures nodes."""
    from rcc.compression.stored_size import size_metrics

    return {key: float(value) for key, value in size_metrics(model).items()}


def measure_accuracy(model, ctx: SearchContext, trial, size: float,
                     completed: Callable[[], list[tuple[int, float, float]]] | None = None,
                     cancel: Callable[[], bool] | None = None) -> tuple[float, RungLog]:
    """Accuracy on the full eval split, measured rung by rung; raises optuna.TrialPruned when hopeless."""
    import optuna

    from rcc.eval.suite import primary_metric, run_eval

    log = RungLog()
    last = len(ctx.rung_data) - 1
    accuracy = float("nan")
    for i, data in enumerate(ctx.rung_data):
        accuracy = primary_metric(run_eval(model, data, task=ctx.task, cache=ctx.cache, cancel=cancel))
        log.rungs.append((len(data), accuracy))
        trial.set_user_attr("rungs", [list(r) for r in log.rungs])
        if i == last or not ctx.pruning.enabled or not bounded_metric(ctx.task):
            continue
        upper = wilson_upper(accuracy, len(data), ctx.pruning.z)
        if ctx.objective.mode == "min-size":
            trial.report(ctx.floor - upper, step=len(data))
            if trial.should_prune():
                log.reason = (f"accuracy {accuracy:.4f} on {len(data)} items: even {upper:.4f} is below "
                              f"{ctx.floor:.4f} (threshold × dense)")
        else:
            if upper < ctx.pruning.floor * ctx.dense_accuracy:
                log.reason = (f"accuracy {accuracy:.4f} on {len(data)} items: even {upper:.4f} is below "
                              f"{ctx.pruning.floor * ctx.dense_accuracy:.4f} (floor × dense)")
            elif completed is not None:
                log.reason = dominated_reason(size, upper, completed())
        if log.reason:
            trial.set_user_attr("pruned", log.reason)
            if ctx.objective.mode == "min-size":
                _set_constraint(trial, ctx.floor - upper)
            raise optuna.TrialPruned(log.reason)
    return accuracy, log


def _set_constraint(trial, value: float) -> None:
    """c ≤ 0 is feasible. Optuna ≥ 5 stores it with ``set_constraint``; older ones read the user attribute."""
    trial.set_user_attr("constraint", float(value))
    if hasattr(trial, "set_constraint"):
        trial.set_constraint("accuracy", float(value))


def completed_points(study, mode: str) -> Callable[[], list[tuple[int, float, float]]]:
    """A function returning (number, size, accuracy) of the study's completed trials (read at call time)."""
    from optuna.trial import TrialState

    def read() -> list[tuple[int, float, float]]:
        out = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if mode == "pareto" and t.values is not None and len(t.values) == 2:
                out.append((t.number, float(t.values[0]), float(t.values[1])))
        return out

    return read


def make_objective(ctx: SearchContext, study, cancel: Callable[[], bool] | None = None) -> Callable:
    """The function Optuna calls per trial: returns (size, accuracy) or size (see the module docstring).

    ``cancel`` is checked between layers and batches; a cancelled trial raises
    ``rcc.errors.Cancelled`` (Optuna records it FAIL) and nothing else is touched.
    """
    completed = completed_points(study, ctx.objective.mode)

    def objective(trial):
        began = time.perf_counter()
        params = suggest(trial, ctx.space)
        plan = plan_from_params(ctx.space, params)
        origin = trial.user_attrs.get("origin", "sampler")
        record = make_record(plan, ctx.objective.stages, ctx.objective.calib_per_class, ctx.objective.whiten,
                             ctx.objective.preserve, ctx.node, sampler_seed=ctx.sampler_seed, worker=ctx.worker,
                             origin=origin)
        # Stored before any work: even a failed or pruned trial says exactly what it was.
        trial.set_user_attr("record", record.as_dict())
        model = copy.deepcopy(ctx.model)
        result = compress(model, record, ctx.calibration, ctx.preserved, cancel=cancel)
        sizes = size_of(model)
        size = sizes[f"size/{ctx.objective.size}"]
        trial.set_user_attr("size", sizes)
        if result is not None:
            trial.set_user_attr("removed", result.removed_fraction)
        accuracy, _ = measure_accuracy(model, ctx, trial, size, completed, cancel)
        trial.set_user_attr("accuracy", accuracy)
        trial.set_user_attr("seconds", time.perf_counter() - began)
        if ctx.objective.mode == "pareto":
            return size, accuracy
        _set_constraint(trial, ctx.floor - accuracy)
        return size

    return objective
