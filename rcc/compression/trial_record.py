"""What a search trial stores to be reproducible (its Optuna user attribute ``record``).

The plan, the stage pipeline, the calibration size and seed, the stage options and the node it was
searched from; rcc.session.trial_compress compresses a model as a record says. Torch-free, so the
``apply_trial`` op checks a record without loading torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rcc.compression.plan import CompressionPlan, plan_from_dict, plan_to_dict
from rcc.errors import RccError
from rcc.schema.names import STAGE_NAMES

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
        if not self.stages or any(stage not in STAGE_NAMES for stage in self.stages):
            raise TrialRecordError(f"trial record stages {list(self.stages)} are invalid; "
                                   f"allowed: a non-empty list of {', '.join(STAGE_NAMES)}")
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
