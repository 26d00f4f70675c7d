"""Stage ablation and ordering: the cascade with each stage removed, and in every order of its stages.

Every variant starts from the same model state and runs the same plan, threshold, schedule
and calibration (``rcc.compression.cascade.run_cascade``); only the stage sequence differs.
Variants of stages S = (s_1, …, s_n):
  - ``full``:     S as given;
  - ``without``:  S with s_i removed, for each i (n > 1);
  - ``order``:    every other permutation of S (n! − 1 of them).
Between variants the selected layers are restored from one snapshot taken before the first
(cheaper than copying the model, and exact); the model is as it was when this returns.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

from rcc.analysis.errors import AnalysisError
from rcc.compression.calibration import CalibrationData
from rcc.compression.cascade import STAGES, CascadeConfig, CascadeResult, Evaluator, run_cascade, run_plans
from rcc.compression.layers import LayerSnapshot
from rcc.compression.plan import CompressionPlan, plan_to_dict, resolve_plan
from rcc.eval.encode import CancelCheck, check_cancel
from rcc.models.adapter import VLModel

ARROW = " → "
VariantProgress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class AblationVariant:
    """One stage sequence to run; ``kind`` is ``full``, ``without`` or ``order``."""

    stages: tuple[str, ...]
    kind: str
    removed: str | None = None

    @property
    def name(self) -> str:
        return ARROW.join(self.stages)


@dataclass(frozen=True)
class VariantResult:
    """What one variant achieved: size, metric, time, and what the back-off did."""

    name: str
    kind: str
    stages: tuple[str, ...]
    removed: str | None
    metric: float  # eval split, after the cascade (what its threshold checks)
    test_metric: float | None  # held-out split, when a test evaluator is given
    params_before: int  # the plan's selected layers, dense
    params_after: int
    removed_fraction: float
    model_params_after: int
    seconds: float  # wall clock of the whole cascade (calibration and the dense evaluation included)
    cpu_seconds: float  # this process's CPU time over the same span (all threads): steadier on a shared machine
    stage_seconds: dict[str, float]  # per stage, summed over its attempts (compression + evaluation)
    attempts_kept: int
    attempts_undone: int
    skipped: tuple[str, ...]  # "step k: stage"


@dataclass(frozen=True)
class AblationResult:
    plan: dict
    threshold: float
    schedule: str
    steps: int
    dense_metric: float
    dense_test: float | None
    variants: tuple[VariantResult, ...]
    seconds: float
    eval_split: str = "eval"  # the split ``metric`` is measured on (what the threshold checks)
    test_split: str | None = None  # the split of ``test_metric``

    def as_dict(self) -> dict:
        return asdict(self)

    def best(self) -> VariantResult:
        """The variant with the highest metric; ties go to the one that removed more (to 0.1 %), then the first."""
        return max(self.variants, key=lambda v: (v.metric, round(v.removed_fraction, 3)))


def ablation_from_dict(data: dict) -> AblationResult:
    """Read back ``AblationResult.as_dict()``; anything malformed raises AnalysisError."""
    try:
        variants = tuple(VariantResult(**{**v, "stages": tuple(v["stages"]), "skipped": tuple(v["skipped"]),
                                          "stage_seconds": dict(v["stage_seconds"])}) for v in data["variants"])
        return AblationResult(**{**data, "variants": variants})
    except (KeyError, TypeError, ValueError) as error:
        raise AnalysisError(f"ablation data is malformed ({type(error).__name__}: {error}); "
                            f"allowed: a file written by `rcc-tui analyze ablation`") from None


def ablation_variants(stages: Sequence[str], orders: bool = True, removals: bool = True) -> list[AblationVariant]:
    """The full sequence, then each stage removed, then every other order (see the module docstring)."""
    stages = tuple(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages or len(set(stages)) != len(stages):
        raise AnalysisError(f"stages {list(stages)} are invalid; allowed: distinct names among {', '.join(STAGES)}")
    variants = [AblationVariant(stages, "full")]
    if removals and len(stages) > 1:
        variants += [AblationVariant(tuple(s for s in stages if s != gone), "without", gone) for gone in stages]
    if orders:
        variants += [AblationVariant(order, "order") for order in itertools.permutations(stages) if order != stages]
    return variants


def _variant_result(variant: AblationVariant, result: CascadeResult, test_metric: float | None,
                    cpu_seconds: float) -> VariantResult:
    stage_seconds: dict[str, float] = {stage: 0.0 for stage in variant.stages}
    for attempt in result.attempts:
        stage_seconds[attempt.stage] = stage_seconds.get(attempt.stage, 0.0) + attempt.seconds
    return VariantResult(
        name=variant.name, kind=variant.kind, stages=variant.stages, removed=variant.removed,
        metric=result.final_metric, test_metric=test_metric, params_before=result.params_before,
        params_after=result.params_after, removed_fraction=result.removed_fraction,
        model_params_after=result.model_params_after, seconds=result.seconds, cpu_seconds=cpu_seconds,
        stage_seconds=stage_seconds,
        attempts_kept=sum(a.accepted for a in result.attempts),
        attempts_undone=sum(not a.accepted for a in result.attempts),
        skipped=tuple(f"step {s['step']}: {s['stage']}" for s in result.skipped))


def run_ablation(
    model: VLModel, plan: CompressionPlan, evaluate: Evaluator, calibration: CalibrationData,
    preserved: CalibrationData | None = None, config: CascadeConfig = CascadeConfig(),
    test_evaluate: Evaluator | None = None, variants: Sequence[AblationVariant] | None = None,
    progress: VariantProgress | None = None, cancel: CancelCheck | None = None,
    splits: tuple[str, str | None] = ("eval", None),
) -> AblationResult:
    """Run every variant from the same start; the model is left exactly as it was.

    ``splits``: the names of the splits ``evaluate`` and ``test_evaluate`` read, for the report.
    """
    config.validate()
    start = time.perf_counter()
    variants = list(variants) if variants is not None else ablation_variants(config.stages)
    selected = [name for name, p in resolve_plan(plan, model.layers()).items()
                if not p.locked and (p.sparsity > 0 or p.rank is not None or p.correction)]
    if not selected:
        raise AnalysisError("the plan selects no layer; allowed: a plan that gives some layer a sparsity or a rank")
    index = model.layer_index
    # Every layer a run may change: structured patterns narrow partners the plan does not select.
    snapshot = LayerSnapshot(model.module, [index[name] for name in run_plans(model, plan)])
    dense_test = test_evaluate(model) if test_evaluate else None
    results: list[VariantResult] = []
    dense_metric = float("nan")
    try:
        for i, variant in enumerate(variants):
            check_cancel(cancel)
            if progress:
                progress(i, len(variants), variant.name)
            try:
                cpu = time.process_time()
                outcome = run_cascade(model, plan, evaluate, calibration, preserved,
                                      replace(config, stages=variant.stages), cancel=cancel)
                cpu = time.process_time() - cpu
                dense_metric = outcome.dense_metric
                results.append(_variant_result(variant, outcome, test_evaluate(model) if test_evaluate else None,
                                               cpu))
            finally:
                snapshot.restore(model.module)
        if progress:
            progress(len(variants), len(variants), "done")
    finally:
        snapshot.restore(model.module)
    return AblationResult(plan=plan_to_dict(plan), threshold=config.threshold, schedule=config.schedule,
                          steps=config.steps, dense_metric=dense_metric, dense_test=dense_test,
                          variants=tuple(results), seconds=time.perf_counter() - start, eval_split=splits[0],
                          test_split=splits[1] if test_evaluate else None)
