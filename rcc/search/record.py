"""What a trial stores to be reproducible, and the compression that record describes.

A trial's record (its Optuna user attribute ``record``) holds the plan, the stage pipeline,
the calibration size and seed, the stage options and the node it was searched from. The
trial and ``ApplyTrial`` both call ``compress`` with it, so the node an applied trial makes
holds the very weights the trial measured.

The pipeline is the RCC cascade at threshold 0: every stage runs at full strength and is
kept, so a trial stores exactly the size its plan says (back-off would blur the size axis).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from rcc.compression.cascade import STAGES, CascadeConfig, CascadeResult, run_cascade
from rcc.compression.plan import CompressionPlan, plan_from_dict, plan_to_dict
from rcc.compression.stage_context import StageOptions
from rcc.errors import RccError

RECORD_VERSION = 1


class TrialRecordError(RccError):
    """A stored trial record that cannot be used."""


@dataclass(frozen=True)
class TrialRecord:
    plan: dict  # plan_to_dict form; the plan's seed seeds DARE and the calibration sample
    stages: tuple[str, ...] = ("dare",)
    calib_per_class: int = 16
    whiten: bool = True
    preserve: bool = False
    node: int = 1  # the session node the trial compressed a copy of
    version: int = RECORD_VERSION
    extra: dict = field(default_factory=dict)  # sampler seed, worker, origin: provenance only

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        if self.version != RECORD_VERSION:
            raise TrialRecordError(f"trial record version {self.version!r} is not supported; "
                                   f"allowed: {RECORD_VERSION}")
        if not self.stages or any(stage not in STAGES for stage in self.stages):
            raise TrialRecordError(f"trial record stages {list(self.stages)} are invalid; "
                                   f"allowed: a non-empty list of {', '.join(STAGES)}")
        for name in ("calib_per_class", "node"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrialRecordError(f"trial record {name} {value!r} is invalid; allowed: an integer ≥ 1")
        for name in ("whiten", "preserve"):
            if not isinstance(getattr(self, name), bool):
                raise TrialRecordError(f"trial record {name} {getattr(self, name)!r} is invalid; "
                                       f"allowed: true or false")
        self.compression_plan()  # refuses a plan that does not parse

    def compression_plan(self) -> CompressionPlan:
        if not isinstance(self.plan, Mapping):
            raise TrialRecordError(f"trial record plan {self.plan!r} is not a plan object")
        try:
            return plan_from_dict(dict(self.plan))
        except RccError as exc:
            raise TrialRecordError(f"trial record plan: {exc}") from exc

    def options(self) -> StageOptions:
        return replace(StageOptions(), whiten=self.whiten, preserve=self.preserve)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["stages"] = list(self.stages)
        return out


def record_from_dict(data: Any) -> TrialRecord:
    """A checked TrialRecord from its stored form; unknown keys are refused."""
    if not isinstance(data, Mapping):
        raise TrialRecordError(f"trial record {data!r} is not an object")
    known = set(TrialRecord.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise TrialRecordError(f"trial record key {unknown[0]!r} is unknown; allowed: {', '.join(sorted(known))}")
    if "plan" not in data:
        raise TrialRecordError("trial record has no plan")
    return TrialRecord(**dict(data))


def make_record(plan: CompressionPlan, stages, calib_per_class: int, whiten: bool, preserve: bool,
                node: int, **extra) -> TrialRecord:
    return TrialRecord(plan=plan_to_dict(plan), stages=tuple(stages), calib_per_class=calib_per_class,
                       whiten=whiten, preserve=preserve, node=node, extra=dict(extra))


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
    config = CascadeConfig(stages=record.stages, threshold=0.0, max_attempts=1, options=record.options())
    return run_cascade(model, plan, lambda _model: 0.0, calibration, preserved, config, progress=progress,
                       cancel=cancel)
