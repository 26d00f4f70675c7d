"""The compression and evaluation flows on a workspace, shared by session ops and the Python API.

A session's ``run_cascade`` and ``evaluate`` handlers and ``rcc.Cascade.run`` / ``rcc.evaluate``
without a session do the same work on the same objects (a model, its data roles, calibration
sets); this is the one place that work is written.
"""

from __future__ import annotations

from rcc.compression.plan import CompressionPlan
from rcc.session import ops as O
from rcc.session.progress import OpProgress, ProgressFn


def layer_progress(op: str, progress: ProgressFn | None):
    """A stage's per-layer callback reporting as ``OpProgress`` of ``op`` (None without ``progress``)."""
    if progress is None:
        return None

    def report(stage: str, i: int, total: int, name: str) -> None:
        progress(OpProgress(op=op, phase=stage, done=i + 1, total=total, detail=name))

    return report


def stage_options(op: O.RunStage | O.RunCascade):
    """The stages' numerical options a compression op records (activation-aware SVD, preservation)."""
    from dataclasses import replace

    from rcc.compression.stage_context import StageOptions

    return replace(StageOptions(), whiten=op.whiten, preserve=op.preserve)


def cascade_on(workspace, plan: CompressionPlan, op: O.RunCascade, progress: ProgressFn | None = None,
               cancel=None):
    """Run the RCC cascade of ``op`` on the workspace's model following ``plan``: calibration from the
    train split, every stage checked (and backed off) on the eval split. Returns the CascadeResult."""
    from rcc.compression.cascade import CascadeConfig, run_cascade

    config = CascadeConfig(stages=op.stages, threshold=op.threshold, max_attempts=op.max_attempts,
                           schedule=op.schedule, steps=op.steps, options=stage_options(op))
    calibration, preserved = workspace.calibration(op.calib_per_class, plan.seed)

    def on_attempt(attempt) -> None:
        if progress:
            progress(OpProgress(op=op.kind, phase=attempt.stage, detail=f"step {attempt.step} attempt "
                                f"{attempt.attempt}", metric=attempt.metric, params=attempt.params,
                                accepted=attempt.accepted))

    return run_cascade(workspace.model, plan, workspace.evaluator(cancel), calibration, preserved, config,
                       progress=layer_progress(op.kind, progress), cancel=cancel, on_attempt=on_attempt)


def evaluate_on(workspace, split: str, cancel=None):
    """(metrics named by their split — ``test/top1``, ``test/primary`` —, the full EvalReport) of the
    workspace's model as it is now on ``split``."""
    from rcc.eval.suite import primary_metric
    from rcc.session.metric_keys import metric_key
    from rcc.session.workspace import check_split

    split = check_split(workspace.data, split)
    report = workspace.evaluate(split, cancel=cancel)
    metrics = {metric_key(split, k): float(v) for k, v in report.metrics.items() if isinstance(v, (int, float))}
    metrics[metric_key(split)] = primary_metric(report)
    return metrics, report
