"""What each op does to a session, as one function per op type.

A handler sees its session through ``OpContext`` (rcc.session.op_context), changes the live
model / plan and returns an ``Effect`` saying what to commit; the Session commits it (node,
metrics, head, labels) in one transaction, or, if the handler raises, puts the model and plan
back as they were. Handlers never write the database.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from rcc.compression.plan import CompressionPlan, plan_from_dict, resolve_plan
from rcc.compression.stored_size import size_metrics
from rcc.errors import RccError
from rcc.session import ops as O
from rcc.session.flows import layer_progress, stage_options
from rcc.session.op_context import OpContext
from rcc.session.progress import OpProgress, ProgressFn, phase_progress


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
    op: O.Op | None = None  # the op as logged when the handler filled in a field (a new value: ops are frozen)
    settings: dict[str, str] = field(default_factory=dict)  # session settings to record (load_model's)


Handler = Callable[[OpContext, Any, ProgressFn | None, Callable[[], bool] | None], Effect]
HANDLERS: dict[str, Handler] = {}  # op kind → what applying it does


def handles(op_type: type[O.Op]) -> Callable[[Handler], Handler]:
    """Register the decorated function as what applying an ``op_type`` op does (one handler per op kind)."""

    def register(handler: Handler) -> Handler:
        if op_type.kind in HANDLERS:
            raise ValueError(f"op {op_type.kind!r} has a handler already: {HANDLERS[op_type.kind].__name__}")
        HANDLERS[op_type.kind] = handler
        return handler

    return register


@handles(O.LoadModel)
def load_model(session: OpContext, op: O.LoadModel, progress, cancel) -> Effect:
    from rcc.data.registry import canonical_spec
    from rcc.data.roles import data_roles

    if session.head is not None:
        raise O.OpError("op 'load_model': this session has a model already; allowed: only as the first op "
                        "(start a new session for another model)")
    # Filled in before the op is logged: the log holds every option that decides the splits
    # (held-out size, fractions, seed), so a replay cuts the same splits whatever the defaults become.
    op = replace(op, data=canonical_spec(op.data))
    roles = data_roles(op.data, op.eval_split, op.test_split)
    session.load_workspace(op.model, op.data, roles.eval, roles.test, progress)
    items = {split: len(session.workspace.dataset(split)) for split in (roles.calibration, roles.eval, roles.test)}
    metric = _primary(session, progress, cancel, op.kind)
    splits = {"layout": roles.layout, "items": items}
    return Effect(new_node=True, summary=f"load {op.model} on {op.data}",
                  metrics={**_eval_metric(session, metric), **size_metrics(session.model)},
                  result={"eval_split": roles.eval, "test_split": roles.test, "splits": splits}, op=op,
                  settings={"model": op.model, "data": op.data, "eval_split": roles.eval, "test_split": roles.test,
                            "splits": json.dumps(splits)})


def _primary(session: OpContext, progress, cancel, op: str = "evaluate") -> float:
    """The primary metric on the eval split, its batches reported as phase ``evaluate``."""
    return float(session.workspace.evaluator(cancel, phase_progress(op, "evaluate", progress))(session.model))


def _eval_metric(session: OpContext, metric: float) -> dict[str, float]:
    """A node's eval metric under the key that names its split (``val/primary``)."""
    from rcc.session.metric_keys import metric_key

    return {metric_key(session.workspace.eval_split): metric}


@handles(O.SetPlan)
def set_plan(session: OpContext, op: O.SetPlan, progress, cancel) -> Effect:
    plan = plan_from_dict(dict(op.plan))
    resolve_plan(plan, session.model.layers())  # refuse a plan that does not fit before keeping it
    return Effect(plan=plan)


@handles(O.EditLayers)
def edit_layers(session: OpContext, op: O.EditLayers, progress, cancel) -> Effect:
    from rcc.compression.plan_edits import edited_plan

    names = {layer.name for layer in session.model.layers()}
    unknown = [name for name in op.layers if name not in names]
    if unknown:
        raise RccError(f"layer {unknown[0]!r} is not in the model; allowed: a name from `rcc-tui layers` "
                       f"({len(names)} layers)")
    plan = edited_plan(session.plan, op.layers, op.settings, op.reset, op.budget)
    resolve_plan(plan, session.model.layers())  # locked layers, ranks out of range, N:M that does not divide
    return Effect(plan=plan)


def restricted_plan(plan: CompressionPlan, model, layers: tuple[str, ...]) -> CompressionPlan:
    """The plan limited to ``layers`` (every other layer locked for this run); all layers if empty.

    A targeted leader of a channel / head group brings its group along: its partners narrow with it.
    """
    if not layers:
        return plan
    from rcc.compression.groups import planned_groups

    inventory = model.layers()
    names = [layer.name for layer in inventory]
    unknown = [name for name in layers if name not in names]
    if unknown:
        raise RccError(f"layer {unknown[0]!r} is not in the model; allowed: a name from `rcc-tui layers`")
    keep = set(layers)
    keep.update(name for group, _ in planned_groups(inventory, resolve_plan(plan, inventory))
                if group.leader in keep for name in group.members)
    overrides = {name: dict(settings) for name, settings in plan.overrides.items()}
    for name in names:
        if name not in keep:
            overrides[name] = {**overrides.get(name, {}), "locked": True}
    return replace(plan, overrides=overrides)


@handles(O.RunStage)
def run_stage(session: OpContext, op: O.RunStage, progress, cancel) -> Effect:
    from rcc.compression.cascade import run_stage as run_one_stage

    plan = restricted_plan(session.plan, session.model, op.layers)
    calibration, preserved = session.workspace.calibration(op.calib_per_class, plan.seed)
    run = run_one_stage(session.model, plan, op.stage, op.fraction, calibration, preserved, stage_options(op),
                        progress=layer_progress(op.kind, progress), cancel=cancel)
    if not run.changed:  # a node equal to its parent would only clutter the history
        what = {"dare": "a sparsity > 0", "nullu": "a rank", "alphaedit": "correction on",
                "quant": "bits 8 (or they are int8 already)"}[op.stage]
        raise RccError(f"stage {op.stage!r} changed no layer: the plan gives no selected layer {what}")
    metric = _primary(session, progress, cancel, op.kind)
    return Effect(new_node=True, summary=f"{op.stage} ×{op.fraction:g}: {run.changed} layers",
                  metrics={**_eval_metric(session, metric), **size_metrics(session.model)},
                  result={"changed": run.changed, "params_before": run.params_before,
                          "params_after": run.params_after, "seconds": run.seconds})


@handles(O.RunCascade)
def run_cascade(session: OpContext, op: O.RunCascade, progress, cancel) -> Effect:
    from rcc.session.flows import cascade_on

    plan = restricted_plan(session.plan, session.model, op.layers)
    result = cascade_on(session.workspace, plan, op, progress, cancel)
    kept = sum(a.accepted for a in result.attempts)
    return Effect(new_node=True, summary=f"cascade {'→'.join(op.stages)} ≥{op.threshold:g}: "
                                         f"{result.removed_fraction:.0%} removed, {kept} attempts kept",
                  metrics={**_eval_metric(session, result.final_metric), **size_metrics(session.model)},
                  result=result.as_dict())


@handles(O.Evaluate)
def evaluate(session: OpContext, op: O.Evaluate, progress, cancel) -> Effect:
    from rcc.session.flows import evaluate_on

    metrics, report = evaluate_on(session.workspace, op.split, cancel, progress, op.kind)
    return Effect(metrics=metrics, metrics_node=session.head, result=report.as_dict())


@handles(O.Checkout)
def checkout(session: OpContext, op: O.Checkout, progress, cancel) -> Effect:
    # The working plan stays: it is the user's draft (roll back, then re-run it gentler); the
    # plan that made the node is kept with the node (NodeState.plan).
    target = session.graph.state(op.node)  # raises for an unknown node
    loaded = session.restore_to(target, progress, op.kind)
    return Effect(head=op.node, state=(target.structure, target.tensors), result={"bytes_loaded": loaded})


@handles(O.Label)
def label(session: OpContext, op: O.Label, progress, cancel) -> Effect:
    session.graph.node(op.node)  # raises for an unknown node
    return Effect(label=(op.node, op.label, op.note))


@handles(O.Export)
def export(session: OpContext, op: O.Export, progress, cancel) -> Effect:
    from rcc.exports import export_model
    from rcc.output_paths import check_output_dir

    node = op.node or session.head
    out = check_output_dir(session.resolve_export_path(op.out), "export directory")  # before the checkout
    target = session.graph.state(node)
    moved = node != session.head
    if moved:
        session.restore_to(target)
    try:
        extra = {"session": str(session.directory), "node": node, "plan": target.plan}
        report = export_model(session.model, op.format, out, extra=extra)
    finally:
        if moved:
            session.restore_to(session.graph.state(session.head))
    return Effect(result={"node": node, "out": str(out), "format": op.format, "total_bytes": report.total_bytes,
                          "dense_bytes": report.dense_bytes, **report.details})


@handles(O.Train)
def train(session: OpContext, op: O.Train, progress, cancel) -> Effect:
    from rcc.training.attention import require_attention_blocks
    from rcc.training.distill import (
        DistillConfig, distill, distill_data, locked_parameter_names, teacher_targets,
    )
    from rcc.training.grounded_distill import uses_grounded_terms

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
    targets = teacher_targets(teacher, data, cancel=cancel, attention=config.attention_weight > 0,
                              progress=phase_progress(op.kind, "teacher", progress))
    # Grounded terms (BLIP's decoder and fusion layers) need the teacher itself at every step.
    live_teacher = teacher if config.kl_weight and uses_grounded_terms(session.model) else None
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
                     on_step=on_step, cancel=cancel, teacher=live_teacher)
    del live_teacher
    metric = _primary(session, progress, cancel, op.kind)
    return Effect(new_node=True, summary=f"train {len(result.losses)} steps from node {teacher_node}: "
                                         f"loss {result.losses[0]:.3f} → {result.losses[-1]:.3f}",
                  metrics={**_eval_metric(session, metric), **size_metrics(session.model)},
                  result={"teacher": teacher_node, "losses": result.losses, "evals": result.evals,
                          "best_step": result.best_step, "params_before": result.params_before,
                          "params_after": result.params_after, "seconds": result.seconds})


@handles(O.ApplyTrial)
def apply_trial(session: OpContext, op: O.ApplyTrial, progress, cancel) -> Effect:
    from rcc.session.trial_compress import compress
    from rcc.compression.trial_record import record_from_dict

    if not op.record:  # the log must hold the trial itself, so replay never reads the storage
        raise O.OpError(f"op 'apply_trial': trial {op.trial} of study {op.study!r} carries no trial record; allowed: "
                        f"an op with its record (`rcc-tui search apply` and `rcc-tui session apply` read it "
                        f"from the study)")
    record = record_from_dict(dict(op.record))
    if session.head != record.node:
        raise O.OpError(f"op 'apply_trial': trial {op.trial} of study {op.study!r} was searched from node "
                        f"{record.node}, but the head is node {session.head}; allowed: checkout node {record.node} "
                        f"first (`rcc-tui search apply` does)")
    plan = record.compression_plan()
    resolve_plan(plan, session.model.layers())
    calibration, preserved = session.workspace.calibration(record.calib_per_class, plan.seed)
    result = compress(session.model, record, calibration, preserved, progress=layer_progress(op.kind, progress),
                      cancel=cancel)
    if result is None:
        raise RccError(f"trial {op.trial} of study {op.study!r} compresses no layer (its plan selects none); "
                       f"allowed: a trial whose plan gives some layer a sparsity, a rank or bits 8")
    metric = _primary(session, progress, cancel, op.kind)
    return Effect(new_node=True, summary=f"search trial {op.trial} of {op.study}: {'→'.join(record.stages)}, "
                                         f"{result.removed_fraction:.0%} removed",
                  metrics={**_eval_metric(session, metric), **size_metrics(session.model)}, plan=plan,
                  result={"study": op.study, "trial": op.trial, "record": record.as_dict(),
                          "params_before": result.params_before, "params_after": result.params_after,
                          "removed_fraction": result.removed_fraction, "seconds": result.seconds})
