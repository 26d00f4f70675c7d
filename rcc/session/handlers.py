"""What each op does to a session, as one function per op type.

A handler changes the live model / plan and returns an ``Effect`` saying what to commit; the
Session commits it (node, metrics, head, labels) in one transaction, or, if the handler
raises, puts the model and plan back as they were. Handlers never write the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from rcc.compression.plan import CompressionPlan, plan_from_dict, plan_to_dict, resolve_plan
from rcc.errors import RccError
from rcc.session import ops as O
from rcc.session.progress import OpProgress, ProgressFn

if TYPE_CHECKING:
    from rcc.session.session import Session


@dataclass
class Effect:
    new_node: bool = False  # capture the model as a new child of the head
    summary: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # for the new node, else for metrics_node
    metrics_node: int | None = None
    head: int | None = None  # checkout: the node that becomes current
    state: tuple[dict, dict] | None = None  # checkout: (structure, name → hash) now in the model
    label: tuple[int, str, str] | None = None
    plan: CompressionPlan | None = None  # the new working plan, if it changed
    result: dict = field(default_factory=dict)


def size_metrics(model) -> dict[str, float]:
    """Stored numbers and bytes as the compressed export writes them, and all parameters.

    A masked parameter stores its kept values plus one bit per entry (the packed mask);
    every other parameter (factors included) is stored whole. Int8 layers store one byte per
    (kept) value plus their float scales.
    """
    from rcc.compression.layers import masks_by_parameter, stored_tensors

    masks = masks_by_parameter(model.module)
    kept = total = stored = 0
    for param in stored_tensors(model.module):
        total += param.numel()
        mask = masks.get(id(param))
        count = param.numel() if mask is None else int(mask.sum())
        kept += count
        stored += count * param.element_size() + (0 if mask is None else (mask.numel() + 7) // 8)
    return {"size/params": kept, "size/total": total, "size/bytes": stored}


def _layer_progress(op: str, progress: ProgressFn | None):
    if progress is None:
        return None

    def report(stage: str, i: int, total: int, name: str) -> None:
        progress(OpProgress(op=op, phase=stage, done=i + 1, total=total, detail=name))

    return report


def load_model(session: Session, op: O.LoadModel, progress, cancel) -> Effect:
    from rcc.session.workspace import check_split, default_eval_split

    if session.head is not None:
        raise O.OpError("op 'load_model': this session has a model already; allowed: only as the first op "
                        "(start a new session for another model)")
    eval_split = check_split(op.data, op.eval_split or default_eval_split(op.data))
    check_split(op.data, op.test_split)
    session._load_workspace(op.model, op.data, eval_split, op.test_split, progress)
    metric = _primary(session, progress, cancel)
    return Effect(new_node=True, summary=f"load {op.model} on {op.data}",
                  metrics={"eval/primary": metric, **size_metrics(session.model)},
                  result={"eval_split": eval_split})


def _primary(session: Session, progress, cancel) -> float:
    from rcc.eval.suite import primary_metric

    if progress:
        progress(OpProgress(op="evaluate", phase="evaluate", detail=session.workspace.eval_split))
    return primary_metric(session.workspace.evaluate(cancel=cancel))


def set_plan(session: Session, op: O.SetPlan, progress, cancel) -> Effect:
    plan = plan_from_dict(dict(op.plan))
    resolve_plan(plan, session.model.layers())  # refuse a plan that does not fit before keeping it
    return Effect(plan=plan)


def edit_layers(session: Session, op: O.EditLayers, progress, cancel) -> Effect:
    from rcc.compression.plan_rules import normalize_settings, settings_to_json

    names = {layer.name for layer in session.model.layers()}
    unknown = [name for name in op.layers if name not in names]
    if unknown:
        raise RccError(f"layer {unknown[0]!r} is not in the model; allowed: a name from `rcc-tui layers` "
                       f"({len(names)} layers)")
    overrides = {name: dict(settings) for name, settings in session.plan.overrides.items()}
    for name in op.layers:
        if op.reset:
            overrides.pop(name, None)
        if op.settings:
            overrides[name] = {**overrides.get(name, {}), **normalize_settings(op.settings)}
    budget = op.budget if op.budget is not None else session.plan.budget
    plan = replace(session.plan, overrides={n: settings_to_json(s) for n, s in overrides.items()}, budget=budget)
    resolve_plan(plan, session.model.layers())  # locked layers, ranks out of range, N:M that does not divide
    return Effect(plan=plan)


def restricted_plan(plan: CompressionPlan, model, layers: tuple[str, ...]) -> CompressionPlan:
    """The plan limited to ``layers`` (every other layer locked for this run); all layers if empty."""
    if not layers:
        return plan
    names = [layer.name for layer in model.layers()]
    unknown = [name for name in layers if name not in names]
    if unknown:
        raise RccError(f"layer {unknown[0]!r} is not in the model; allowed: a name from `rcc-tui layers`")
    keep = set(layers)
    overrides = {name: dict(settings) for name, settings in plan.overrides.items()}
    for name in names:
        if name not in keep:
            overrides[name] = {**overrides.get(name, {}), "locked": True}
    return replace(plan, overrides=overrides)


def _options(op: O._Compress):
    from rcc.compression.stage_context import StageOptions

    return replace(StageOptions(), whiten=op.whiten, preserve=op.preserve, quant_method=op.quant_method,
                   smooth_alpha=op.smooth_alpha, quant_embeddings=op.quant_embeddings)


def run_stage(session: Session, op: O.RunStage, progress, cancel) -> Effect:
    from rcc.compression.cascade import run_stage as run_one_stage

    plan = restricted_plan(session.plan, session.model, op.layers)
    calibration, preserved = session.workspace.calibration(op.calib_per_class, plan.seed)
    run = run_one_stage(session.model, plan, op.stage, op.fraction, calibration, preserved, _options(op),
                        progress=_layer_progress(op.kind, progress), cancel=cancel)
    if not run.changed:  # a node equal to its parent would only clutter the history
        what = {"dare": "a sparsity > 0", "nullu": "a rank", "alphaedit": "correction on",
                "quant": "bits 8 (or they are int8 already)"}[op.stage]
        raise RccError(f"stage {op.stage!r} changed no layer: the plan gives no selected layer {what}")
    metric = _primary(session, progress, cancel)
    return Effect(new_node=True, summary=f"{op.stage} ×{op.fraction:g}: {run.changed} layers",
                  metrics={"eval/primary": metric, **size_metrics(session.model)},
                  result={"changed": run.changed, "params_before": run.params_before,
                          "params_after": run.params_after, "seconds": run.seconds})


def run_cascade(session: Session, op: O.RunCascade, progress, cancel) -> Effect:
    from rcc.compression.cascade import CascadeConfig
    from rcc.compression.cascade import run_cascade as cascade

    plan = restricted_plan(session.plan, session.model, op.layers)
    config = CascadeConfig(stages=op.stages, threshold=op.threshold, max_attempts=op.max_attempts,
                           schedule=op.schedule, steps=op.steps, options=_options(op))
    calibration, preserved = session.workspace.calibration(op.calib_per_class, plan.seed)

    def on_attempt(attempt) -> None:
        if progress:
            progress(OpProgress(op=op.kind, phase=attempt.stage, detail=f"step {attempt.step} attempt "
                                f"{attempt.attempt}", metric=attempt.metric, params=attempt.params,
                                accepted=attempt.accepted))

    result = cascade(session.model, plan, session.workspace.evaluator(cancel), calibration, preserved, config,
                     progress=_layer_progress(op.kind, progress), cancel=cancel, on_attempt=on_attempt)
    kept = sum(a.accepted for a in result.attempts)
    return Effect(new_node=True, summary=f"cascade {'→'.join(op.stages)} ≥{op.threshold:g}: "
                                         f"{result.removed_fraction:.0%} removed, {kept} attempts kept",
                  metrics={"eval/primary": result.final_metric, **size_metrics(session.model)},
                  result=result.as_dict())


def evaluate(session: Session, op: O.Evaluate, progress, cancel) -> Effect:
    from rcc.eval.suite import primary_metric
    from rcc.session.workspace import check_split

    check_split(session.workspace.data, op.split)
    report = session.workspace.evaluate(op.split, cancel=cancel)
    metrics = {f"{op.split}/{k}": float(v) for k, v in report.metrics.items() if isinstance(v, (int, float))}
    metrics[f"{op.split}/primary"] = primary_metric(report)
    return Effect(metrics=metrics, metrics_node=session.head, result=report.as_dict())


def checkout(session: Session, op: O.Checkout, progress, cancel) -> Effect:
    # The working plan stays: it is the user's draft (roll back, then re-run it gentler); the
    # plan that made the node is kept with the node (NodeState.plan).
    target = session.graph.state(op.node)  # raises for an unknown node
    loaded = session._restore_to(target)
    return Effect(head=op.node, state=(target.structure, target.tensors), result={"bytes_loaded": loaded})


def label(session: Session, op: O.Label, progress, cancel) -> Effect:
    session.graph.node(op.node)  # raises for an unknown node
    return Effect(label=(op.node, op.label, op.note))


def export(session: Session, op: O.Export, progress, cancel) -> Effect:
    from rcc.exports import export_model

    node = op.node or session.head
    out = session.resolve_export_path(op.out)
    target = session.graph.state(node)
    moved = node != session.head
    if moved:
        session._restore_to(target)
    try:
        extra = {"session": str(session.directory), "node": node, "plan": target.plan}
        report = export_model(session.model, op.format, out, extra=extra)
    finally:
        if moved:
            session._restore_to(session.graph.state(session.head))
    return Effect(result={"node": node, "out": str(out), "format": op.format, "total_bytes": report.total_bytes,
                          "dense_bytes": report.dense_bytes, **report.details})


def train(session: Session, op: O.Train, progress, cancel) -> Effect:
    from rcc.training.attention import require_attention_blocks
    from rcc.training.distill import (
        DistillConfig, distill, distill_data, locked_parameter_names, teacher_targets,
    )

    teacher_node = op.teacher or min(node.id for node in session.nodes())
    config = DistillConfig(steps=op.steps, lr=op.lr, batch_size=op.batch_size, temperature=op.temperature,
                           kl_weight=op.kl_weight, cosine_weight=op.cosine_weight, mse_weight=op.mse_weight,
                           attention_weight=op.attention_weight,
                           warmup_steps=op.warmup_steps if op.warmup_steps is not None else min(10, op.steps // 10),
                           schedule=op.schedule, precision=op.precision,
                           eval_every=op.eval_every, patience=op.patience, seed=op.seed)
    config.validate()
    require_attention_blocks(session.model.module, config.attention_weight)  # refuse before any work
    data = distill_data(session.workspace.data)
    if progress:
        progress(OpProgress(op=op.kind, phase="teacher", detail=f"node {teacher_node}"))
    teacher = session.model_at(teacher_node)
    targets = teacher_targets(teacher, data, cancel=cancel, attention=config.attention_weight > 0)
    del teacher
    locked = {name for name, plan in resolve_plan(session.plan, session.model.layers()).items() if plan.locked}
    frozen = locked_parameter_names(session.model, locked)
    evaluate = session.workspace.evaluator(cancel)
    last_step = 0  # the trainer evaluates right after reporting a step: that step is the eval's x

    def on_step(report) -> None:
        nonlocal last_step
        last_step = report.step + 1
        if progress:
            progress(OpProgress(op=op.kind, phase="train", done=last_step, total=report.total,
                                detail=f"loss {report.loss:.4f}", loss=report.loss))

    def evaluate_during_training() -> float:
        metric = float(evaluate(session.model))
        if progress:
            progress(OpProgress(op=op.kind, phase="train", done=last_step, total=op.steps,
                                detail=f"eval at step {last_step}", metric=metric))
        return metric

    result = distill(session.model, data, targets, config, frozen=frozen,
                     evaluate=evaluate_during_training if op.eval_every else None,
                     on_step=on_step, cancel=cancel)
    metric = _primary(session, progress, cancel)
    return Effect(new_node=True, summary=f"train {len(result.losses)} steps from node {teacher_node}: "
                                         f"loss {result.losses[0]:.3f} → {result.losses[-1]:.3f}",
                  metrics={"eval/primary": metric, **size_metrics(session.model)},
                  result={"teacher": teacher_node, "losses": result.losses, "evals": result.evals,
                          "best_step": result.best_step, "params_before": result.params_before,
                          "params_after": result.params_after, "seconds": result.seconds})


HANDLERS = {
    O.LoadModel.kind: load_model, O.SetPlan.kind: set_plan, O.EditLayers.kind: edit_layers,
    O.RunStage.kind: run_stage, O.RunCascade.kind: run_cascade, O.Evaluate.kind: evaluate,
    O.Checkout.kind: checkout, O.Label.kind: label, O.Export.kind: export, O.Train.kind: train,
}


def plan_json(plan: CompressionPlan) -> dict:
    return plan_to_dict(plan)


def apply_trial(session: Session, op: O.ApplyTrial, progress, cancel) -> Effect:
    from rcc.search.record import compress, record_from_dict

    if op.record:
        record = record_from_dict(dict(op.record))
    else:
        from rcc.search.storage import resolve_url
        from rcc.search.trials import load_record

        record = load_record(resolve_url(op.storage, session.directory), op.study, op.trial)
        # Filled in before the op is logged: the log holds the trial itself, so replay never reads the storage.
        object.__setattr__(op, "record", record.as_dict())
    if session.head != record.node:
        raise O.OpError(f"op 'apply_trial': trial {op.trial} of study {op.study!r} was searched from node "
                        f"{record.node}, but the head is node {session.head}; allowed: checkout node {record.node} "
                        f"first (`rcc-tui search apply` does)")
    plan = record.compression_plan()
    resolve_plan(plan, session.model.layers())
    calibration, preserved = session.workspace.calibration(record.calib_per_class, plan.seed)
    result = compress(session.model, record, calibration, preserved, progress=_layer_progress(op.kind, progress),
                      cancel=cancel)
    if result is None:
        raise RccError(f"trial {op.trial} of study {op.study!r} compresses no layer (its plan selects none); "
                       f"allowed: a trial whose plan gives some layer a sparsity, a rank or bits 8")
    metric = _primary(session, progress, cancel)
    return Effect(new_node=True, summary=f"search trial {op.trial} of {op.study}: {'→'.join(record.stages)}, "
                                         f"{result.removed_fraction:.0%} removed",
                  metrics={"eval/primary": metric, **size_metrics(session.model)}, plan=plan,
                  result={"study": op.study, "trial": op.trial, "record": record.as_dict(),
                          "params_before": result.params_before, "params_after": result.params_after,
                          "removed_fraction": result.removed_fraction, "seconds": result.seconds})


HANDLERS[O.ApplyTrial.kind] = apply_trial
