"""Recursive Cascade Compression: stages in order, each evaluated, backed off when it costs too much.

For each step of the schedule and each stage (default DARE → Nullu → AlphaEdit → quant):
  1. snapshot the selected layers; run the stage at strength f (the schedule's next fraction);
  2. evaluate; if metric ≥ threshold · dense metric, accept and go on;
  3. else restore the snapshot and retry half-way back towards the stage's previous strength,
     f ← f_prev + (f − f_prev)/2, up to ``max_attempts`` tries; then skip the stage for this
     step and record why.
A failure or a cancel (checked between layers) restores every selected layer to how it was
before the run, so a model is never left half-compressed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from rcc.compression.calibration import CalibrationData, collect_input_stats
from rcc.compression.correction_stage import run_correction_stage
from rcc.compression.groups import is_structured, partners
from rcc.compression.layers import LayerSnapshot, dense_weight, stored_parameters, unfuse
from rcc.compression.lowrank_stage import run_lowrank_stage
from rcc.compression.plan import CompressionPlan, resolve_plan
from rcc.compression.prune_stage import run_prune_stage
from rcc.compression.quant_stage import embedding_paths, run_quant_stage
from rcc.compression.schedule import MAX_ATTEMPTS, check_schedule, next_fraction
from rcc.compression.stage_context import LayerProgress, StageContext, StageOptions
from rcc.errors import RccError
from rcc.eval.encode import CancelCheck, check_cancel
from rcc.models.adapter import VLModel
from rcc.schema.names import QUANT_METHODS, STAGE_NAMES

STAGES = dict(zip(STAGE_NAMES, (run_prune_stage, run_lowrank_stage, run_correction_stage, run_quant_stage),
                  strict=True))
DEFAULT_STAGES = STAGE_NAMES  # a stage with nothing planned (no correction, no bits) changes nothing
CALIBRATION_PHASE = "calibration"  # the layer progress's phase while the calibration batches run
Evaluator = Callable[[VLModel], float]


@dataclass(frozen=True)
class CascadeConfig:
    stages: tuple[str, ...] = DEFAULT_STAGES
    threshold: float = 0.95
    max_attempts: int = 3
    schedule: str = "linear"
    steps: int = 1
    options: StageOptions = field(default_factory=StageOptions)

    def validate(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise RccError(f"stages {list(self.stages)} are invalid; allowed: a non-empty sequence of {', '.join(STAGES)}")
        if not 0.0 <= self.threshold <= 1.0:  # NaN fails too
            raise RccError(f"threshold {self.threshold} is out of range; allowed: 0 ≤ threshold ≤ 1 (of the dense metric)")
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise RccError(f"max_attempts {self.max_attempts} is invalid; allowed: an integer ≥ 1 and ≤ {MAX_ATTEMPTS}")
        check_schedule(self.schedule, self.steps)
        if self.options.quant_method not in QUANT_METHODS:
            raise RccError(f"quant method {self.options.quant_method!r} is unknown; allowed: {', '.join(QUANT_METHODS)}")
        if not 0.0 <= self.options.smooth_alpha < 1.0:
            raise RccError(f"smooth_alpha {self.options.smooth_alpha} is out of range; allowed: 0 ≤ α < 1 (0: off)")


@dataclass(frozen=True)
class Attempt:
    step: int
    stage: str
    attempt: int
    fraction: float
    metric: float
    accepted: bool
    params: int  # numbers stored by the selected layers after the attempt
    seconds: float
    changed: int  # layers the attempt changed


@dataclass
class CascadeResult:
    dense_metric: float
    threshold: float
    final_metric: float = float("nan")
    attempts: list[Attempt] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    params_before: int = 0  # selected layers, dense
    params_after: int = 0
    model_params_before: int = 0
    model_params_after: int = 0
    seconds: float = 0.0

    @property
    def removed_fraction(self) -> float:
        return 1 - self.params_after / self.params_before if self.params_before else 0.0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["removed_fraction"] = self.removed_fraction
        return out


def run_cascade(
    model: VLModel, plan: CompressionPlan, evaluate: Evaluator, calibration: CalibrationData,
    preserved: CalibrationData | None = None, config: CascadeConfig = CascadeConfig(),
    progress: LayerProgress | None = None, cancel: CancelCheck | None = None,
    on_attempt: Callable[[Attempt], None] | None = None, base: VLModel | None = None,
) -> CascadeResult:
    """Compress ``model`` in place following ``plan``; see the module docstring for the recursion.

    ``base`` (same architecture, e.g. the pretrained checkpoint a model was fine-tuned from)
    makes DARE act on the deltas: θ_base + DARE(θ − θ_base).
    """
    config.validate()
    start = time.perf_counter()
    plans = run_plans(model, plan)
    module = model.module
    index = model.layer_index
    before_run = LayerSnapshot(module, [index[name] for name in plans], _tables(model, plans, config))
    model_params_before = model.num_parameters()
    try:
        unfuse(module, [index[name] for name in plans])
        ctx = _context(model, plans, plan, calibration, preserved, config, progress, cancel)
        ctx.base = None if base is None else _base_weights(base, list(plans))
        result = CascadeResult(dense_metric=float(evaluate(model)), threshold=config.threshold,
                               params_before=sum(layer.params for layer in ctx.layers()),
                               model_params_before=model_params_before)
        _run_steps(ctx, evaluate, config, result, on_attempt)
    except BaseException:
        before_run.restore(module)
        raise
    result.final_metric = _last_metric(result)
    result.params_after = sum(stored_parameters(module, layer) for layer in ctx.layers())
    result.model_params_after = model.num_parameters()
    result.seconds = time.perf_counter() - start
    return result


@dataclass(frozen=True)
class StageRun:
    """What one stage run without back-off did."""

    stage: str
    fraction: float
    changed: int
    params_before: int  # selected layers, as stored before the run
    params_after: int
    seconds: float


def run_stage(
    model: VLModel, plan: CompressionPlan, stage: str, fraction: float, calibration: CalibrationData,
    preserved: CalibrationData | None = None, options: StageOptions = StageOptions(),
    progress: LayerProgress | None = None, cancel: CancelCheck | None = None, base: VLModel | None = None,
) -> StageRun:
    """One stage at strength ``fraction`` of the plan, no evaluation, no back-off (a manual step).

    Like the cascade, a failure or cancel puts every selected layer back as it was.
    """
    if stage not in STAGES:
        raise RccError(f"stage {stage!r} is unknown; allowed: {', '.join(STAGES)}")
    if not 0 < fraction <= 1:
        raise RccError(f"fraction {fraction} is out of range; allowed: 0 < fraction ≤ 1")
    start = time.perf_counter()
    plans = run_plans(model, plan)
    module, index = model.module, model.layer_index
    config = CascadeConfig(stages=(stage,), options=options)
    before_run = LayerSnapshot(module, [index[name] for name in plans], _tables(model, plans, config))
    try:
        unfuse(module, [index[name] for name in plans])
        ctx = _context(model, plans, plan, calibration, preserved, config, progress, cancel)
        ctx.base = None if base is None else _base_weights(base, list(plans))
        params_before = sum(stored_parameters(module, layer) for layer in ctx.layers())
        changes = STAGES[stage](ctx, fraction)
    except BaseException:
        before_run.restore(module)
        raise
    return StageRun(stage=stage, fraction=fraction, changed=len(changes), params_before=params_before,
                    params_after=sum(stored_parameters(module, layer) for layer in ctx.layers()),
                    seconds=time.perf_counter() - start)


def _tables(model: VLModel, plans, config: CascadeConfig) -> list[str]:
    """Embedding tables the quant stage may replace (kept by snapshots like the selected layers)."""
    if "quant" not in config.stages or not config.options.quant_embeddings:
        return []
    index = model.layer_index
    return embedding_paths(model, {index[name].tower for name, p in plans.items() if p.bits is not None})


def _selected(p) -> bool:
    return not p.locked and (p.sparsity > 0 or p.rank is not None or p.correction or p.bits is not None)


def run_plans(model: VLModel, plan: CompressionPlan) -> dict:
    """The layers a run may change, in inventory order: the selected ones, and the partners their
    structured patterns narrow with them (an mlp_out whose hidden units go, k / v / out of a head group)."""
    layers = model.layers()
    resolved = resolve_plan(plan, layers)
    plans = {name: p for name, p in resolved.items() if _selected(p)}
    if not plans:
        raise RccError("the plan selects no layer: give some layer a sparsity > 0, a rank or bits 8")
    extra = partners(layers, resolved)
    return {layer.name: resolved[layer.name] for layer in layers if layer.name in plans or layer.name in extra}


def _context(model, plans, plan, calibration, preserved, config, progress, cancel) -> StageContext:
    index = model.layer_index  # a property that walks the model: once, not per layer
    layers = [index[name] for name in plans]
    needs_gram = ("alphaedit" in config.stages or (config.options.whiten and any(p.rank for p in plans.values()))
                  or ("quant" in config.stages and any(p.bits for p in plans.values())))
    # Structured removal collects its own statistics as it goes: a layer only it touches needs none here.
    measured = [layer for layer in layers if _uses_run_stats(plans[layer.name], config.stages)]
    # Calibration is a phase of its own (tens of seconds on a large model): reported through the
    # layer progress as phase "calibration", its units the images and texts run so far.
    calibrating = None if progress is None else (
        lambda done, total, what: progress(CALIBRATION_PHASE, done - 1, total, what))
    stats = collect_input_stats(model, measured, calibration, gram=needs_gram, progress=calibrating,
                                cancel=cancel) if measured else {}
    kept = {}
    if preserved is not None and "alphaedit" in config.stages and config.options.preserve:
        wanted = [layer for layer in layers if plans[layer.name].correction]
        kept = collect_input_stats(model, wanted, preserved, gram=True, progress=calibrating, cancel=cancel)
    dense = {layer.name: dense_weight(model.module, layer).detach().clone() for layer in layers}
    return StageContext(model=model, plans=plans, stats=stats, preserved=kept, dense=dense, seed=plan.seed,
                        budget=plan.budget if plan.budget is not None else 1.0, options=config.options,
                        calibration=calibration, progress=progress, cancel=cancel,
                        preserved_data=preserved if config.options.preserve else None)


def _uses_run_stats(plan, stages) -> bool:
    """Whether a stage reads the run's calibration statistics of a layer with this plan."""
    pruned = plan.sparsity > 0 and not is_structured(plan.pattern)
    quantised = plan.bits is not None and "quant" in stages  # GPTQ's Gram, SmoothQuant's ranges
    return pruned or plan.rank is not None or (plan.correction and "alphaedit" in stages) or quantised


def _base_weights(base: VLModel, names: list[str]) -> dict[str, torch.Tensor]:
    """The base model's (out, in) weights of the selected layers, by the compressed model's names."""
    unfuse(base.module, [base.layer_index[name] for name in names if name in base.layer_index])
    index = base.layer_index
    missing = [name for name in names if name not in index]
    if missing:
        raise RccError(f"base model {base.spec!r} has no layer {missing[0]!r}; it must share the architecture")
    return {name: dense_weight(base.module, index[name]).detach().clone() for name in names}


def _run_steps(ctx: StageContext, evaluate: Evaluator, config: CascadeConfig, result: CascadeResult,
               on_attempt) -> None:
    reached = {stage: 0.0 for stage in config.stages}
    history: list[tuple[float, float]] = []
    step = 0
    while (target := next_fraction(config.schedule, config.steps, history, config.threshold)) is not None:
        step += 1
        for stage in config.stages:
            accepted = _run_stage_with_backoff(ctx, evaluate, config, result, stage, step,
                                               reached[stage], target, on_attempt)
            if accepted is not None:
                reached[stage] = accepted
        last = [a for a in result.attempts if a.accepted]
        metric = last[-1].metric if last else result.dense_metric
        history.append((target, metric / result.dense_metric if result.dense_metric else 1.0))


def _run_stage_with_backoff(ctx, evaluate, config, result, stage, step, previous, target, on_attempt):
    layers = ctx.layers()
    tables = _tables(ctx.model, ctx.plans, config) if stage == "quant" else []
    snapshot = LayerSnapshot(ctx.model.module, layers, tables)
    fraction = target
    floor = config.threshold * result.dense_metric
    for attempt in range(1, config.max_attempts + 1):
        check_cancel(ctx.cancel)
        began = time.perf_counter()
        changes = STAGES[stage](ctx, fraction)
        metric = float(evaluate(ctx.model)) if changes else _last_metric(result)
        record = Attempt(step=step, stage=stage, attempt=attempt, fraction=fraction, metric=metric,
                         accepted=metric >= floor, params=sum(stored_parameters(ctx.model.module, layer)
                                                             for layer in ctx.layers()),
                         seconds=time.perf_counter() - began, changed=len(changes))
        result.attempts.append(record)
        if on_attempt:
            on_attempt(record)
        if record.accepted:
            return fraction
        snapshot.restore(ctx.model.module)
        fraction = previous + (fraction - previous) / 2
    result.skipped.append({"step": step, "stage": stage,
                           "reason": f"metric stayed below {floor:.4f} (threshold {config.threshold} × dense "
                                     f"{result.dense_metric:.4f}) after {config.max_attempts} attempts"})
    return None


def _last_metric(result: CascadeResult) -> float:
    accepted = [a for a in result.attempts if a.accepted]
    return accepted[-1].metric if accepted else result.dense_metric
