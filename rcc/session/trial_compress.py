"""The compression a trial record (rcc.compression.trial_record) describes.

The and ``ApplyTrial`` both call ``compress`` with it, so the node an applied trial makes
holds the very weights the trial measured.

The pipeline is the RCC cascade at threshold 0: every stage runs at full strength and is
kept, so a trial stores exactly the size its plan says (back-off would blur the size axis).
"""

from __future__ import annotations

from dataclasses import replace

from rcc.compression.cascade import CascadeConfig, CascadeResult, run_cascade
from rcc.compression.plan import CompressionPlan
from rcc.compression.stage_context import StageOptions
from rcc.compression.trial_record import TrialRecord


def selects_anything(plan: CompressionPlan, layers) -> bool:
    from rcc.compression.plan import resolve_plan

    return any(not p.locked and (p.sparsity > 0 or p.rank is not None or p.correction or p.bits is not None)
               for p in resolve_plan(plan, layers).values())


def compress(model, record: TrialRecord, calibration, preserved, progress=None, cancel=None) -> CascadeResult | None:
    """Compress ``model`` in place as the record says; None when its plan selects no layer (kept dense).

    The cascade's own evaluations are skipped (its evaluator returns 0): at threshold 0 every
    attempt is kept whatever it scores, and the search measures accuracy itself.
    """
    plan = record.compression_plan()
    if not selects_anything(plan, model.layers()):
        return None
    config = CascadeConfig(stages=record.stages, threshold=0.0, max_attempts=1, options=record_options(record))
    return run_cascade(model, plan, lambda _model: 0.0, calibration, preserved, config, progress=progress,
                       cancel=cancel)


def record_options(record: TrialRecord) -> StageOptions:
    return replace(StageOptions(), whiten=record.whiten, preserve=record.preserve)
