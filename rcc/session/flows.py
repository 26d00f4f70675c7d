"""The compression and evaluation flows on a workspace, shared by session ops and the Python API.

A session's ``run_cascade`` and ``evaluate`` handlers and ``rcc.Cascade.run`` / ``rcc.evaluate``
without a session do the same work on the same objects (a model, its data roles, calibration
sets); this is the one place that work is written.
"""

from __future__ import annotations

from rcc.compression.plan import CompressionPlan
from rcc.session import ops as O
from rcc.session.progress import OpProgress, ProgressFn, phase_progress


def layer_progress(op: str, progress: ProgressFn | None):
    """A stage's per-layer callback reporting as ``OpProgress`` of ``op`` (None without ``progress``)."""
    if progress is None:
        return None

    def report(stage: str, i: int, total: int, name: str) -> None:
        progress(OpProgress(op=op, phase=stage, done=i + 1, total=total, detail=name))

    return report


def stage_options(op: O.RunStage | O.RunCascade):
    """The stages' numerical options a compression op records (activation-aware SVD, preservation,
    how structured removal is shared among a tower's groups, the quant stage's rounding, SmoothQuant
    strength and embedding tables)."""
    from dataclasses import replace

    from rcc.compression.stage_context import StageOptions

    return replace(StageOptions(), whiten=op.whiten, preserve=op.preserve, allocation=op.allocation,
                   quant_method=op.quant_method, smooth_alpha=op.smooth_alpha, quant_embeddings=op.quant_embeddings)


def cascade_on(workspace, plan: CompressionPlan, op: O.RunCascade, progress: ProgressFn | None = None,
               cancel=None):
    """Run the RCC cascade of ``op`` on the workspace's model following ``plan``: calibration from the
    train split, every stage checked (and backed off) on the eval split. Returns the CascadeResult.

    ``progress`` hears every phase from its start: calibration and each stage's layers (through the
    layer progress), each evaluation's batches (phase ``evaluate``), and each attempt with its metric
    and, when kept, the bytes the whole model stores then.
    """
    from rcc.compression.cascade import CascadeConfig, run_cascade
    from rcc.compression.stored_size import size_metrics

    config = CascadeConfig(stages=op.stages, threshold=op.threshold, max_attempts=op.max_attempts,
                           schedule=op.schedule, steps=op.steps, options=stage_options(op))
    calibration, preserved = workspace.calibration(op.calib_per_class, plan.seed)

    def on_attempt(attempt) -> None:
        if progress:  # the model's stored bytes now: after a back-off, the state it was restored to
            progress(OpProgress(op=op.kind, phase=attempt.stage, detail=f"step {attempt.step} attempt "
                                f"{attempt.attempt}", metric=attempt.metric, params=attempt.params,
                                accepted=attempt.accepted,
                                stored_bytes=size_metrics(workspace.model)["size/bytes"] if attempt.accepted
                                else None))

    evaluate = workspace.evaluator(cancel, phase_progress(op.kind, "evaluate", progress))
    return run_cascade(workspace.model, plan, evaluate, calibration, preserved, config,
                       progress=layer_progress(op.kind, progress), cancel=cancel, on_attempt=on_attempt)


def evaluate_on(workspace, split: str, cancel=None, progress: ProgressFn | None = None, op: str = "evaluate"):
    """(metrics named by their split — ``test/top1``, ``test/primary`` —, the full EvalReport) of the
    workspace's model as it is now on ``split``; ``progress`` hears phase ``evaluate`` of ``op`` from
    its start (0 of the split's images) and after every batch."""
    from rcc.eval.suite import primary_metric
    from rcc.session.metric_keys import metric_key
    from rcc.session.workspace import check_split

    split = check_split(workspace.data, split)
    evaluating = phase_progress(op, "evaluate", progress)
    if evaluating:
        evaluating(0, len(workspace.dataset(split)), "images")
    report = workspace.evaluate(split, cancel=cancel, progress=evaluating)
    metrics = {metric_key(split, k): float(v) for k, v in report.metrics.items() if isinstance(v, (int, float))}
    metrics[metric_key(split)] = primary_metric(report)
    return metrics, report
