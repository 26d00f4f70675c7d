"""Session operations: every state change as a small, frozen, validated, JSON-ready record.

An op holds everything needed to redo it (parameters and seeds), never live objects, so a
session's op log is a recipe: ``op_to_dict`` / ``op_from_dict`` round-trip it, and loading
refuses an unknown op type, an unknown or missing field, or a value out of range, with a
one-line error, before anything runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from rcc.compression.schedule import MAX_ATTEMPTS, MAX_STEPS
from rcc.errors import RccError
from rcc.schema.names import QUANT_METHODS, STAGE_NAMES

ALLOCATIONS = ("uniform", "global")  # rcc.compression.unit_allocation (this module imports no torch)
SCHEDULES = ("linear", "cosine", "exponential", "adaptive")
EXPORT_FORMATS = ("compressed", "dense", "onnx", "hf-compressed")
TRAIN_SCHEDULES = ("cosine", "linear", "constant")
PRECISION_NAMES = ("fp32", "bf16", "fp16")


class OpError(RccError):
    """An operation that cannot be loaded or applied as given."""


def _fail(op: str, name: str, value: Any, allowed: str) -> OpError:
    return OpError(f"op {op!r}: {name} {value!r} is invalid; allowed: {allowed}")


# SQLite stores integers in 64 bits: larger node ids would overflow before they could be refused.
MAX_INT = 2**63 - 1


def _int(op: str, name: str, value: Any, low: int | None = None, high: int | None = MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low) \
            or (high is not None and value > high):
        bounds = " and".join(part for part in (f" ≥ {low}" if low is not None else "",
                                                f" ≤ {high}" if high is not None else "") if part)
        bounds = f"an integer{bounds}"
        raise _fail(op, name, value, bounds)
    return value


def _float(op: str, name: str, value: Any, low: float, high: float, high_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and low <= value and (value < high if high_open else value <= high)
    if not ok:
        raise _fail(op, name, value, f"a number {low} ≤ x {'<' if high_open else '≤'} {high}")
    return float(value)


def _text(op: str, name: str, value: Any, empty: bool = False, limit: int = 4096) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()) or len(value) > limit:
        raise _fail(op, name, value, f"a {'' if empty else 'non-empty '}string of at most {limit} characters")
    return value


def _flag(op: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(op, name, value, "true or false")
    return value


def _names(op: str, name: str, value: Any, empty: bool = True) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v
                                                                                 for v in value):
        raise _fail(op, name, value, "a list of layer names")
    if not empty and not value:
        raise _fail(op, name, value, "a non-empty list of layer names")
    return tuple(value)


def _choice(op: str, name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise _fail(op, name, value, ", ".join(allowed))
    return value


OP_TYPES: dict[str, type[Op]] = {}  # op kind → its class, in the order they are defined


def op_type(cls: type[Op]) -> type[Op]:
    """Register an op class under its ``kind`` (what ``op_from_dict`` reads); its handler registers
    itself with ``rcc.session.handlers.handles``."""
    if cls.kind in OP_TYPES:
        raise ValueError(f"op kind {cls.kind!r} is taken by {OP_TYPES[cls.kind].__name__}")
    OP_TYPES[cls.kind] = cls
    return cls


@dataclass(frozen=True)
class Op:
    """Base of every operation; ``kind`` is its name in the op log."""

    kind: ClassVar[str] = ""
    changes_model: ClassVar[bool] = False  # whether applying it may change weights (and makes a node)
    # What the session must know before and after running it (rcc.session.session.Session.apply):
    starts_session: ClassVar[bool] = False  # it may be (and only it may be) the first op: it loads the model
    needs_model: ClassVar[bool] = True  # it reads the live model (a session opened without it loads it first)
    moves_head: ClassVar[bool] = False  # it brings the model to a node itself (so only the base is loaded for it)
    visits_nodes: ClassVar[bool] = False  # it may leave the live model at another node midway (put back on failure)

    def validate(self) -> None:  # overridden; called by __post_init__
        pass

    def __post_init__(self) -> None:
        self.validate()


@op_type
@dataclass(frozen=True)
class LoadModel(Op):
    """Load the base model and the dataset; the first op of every session (makes the root node)."""

    kind: ClassVar[str] = "load_model"
    changes_model: ClassVar[bool] = True
    starts_session: ClassVar[bool] = True
    model: str = "rcc-mini"
    data: str = "digits"
    # The data roles (rcc.data.roles): eval reads val, test reads test; both fields may only name
    # those (digits' old name calib is val) and stay for recipes that wrote them out.
    eval_split: str | None = None
    test_split: str = "test"

    def validate(self) -> None:
        _text(self.kind, "model", self.model)
        _text(self.kind, "data", self.data)
        if self.eval_split is not None:
            _text(self.kind, "eval_split", self.eval_split)
        _text(self.kind, "test_split", self.test_split)


@op_type
@dataclass(frozen=True)
class SetPlan(Op):
    """Replace the whole compression plan (its JSON form, as ``plan_to_dict`` writes it)."""

    kind: ClassVar[str] = "set_plan"
    plan: dict = field(default_factory=dict)

    def validate(self) -> None:
        from rcc.compression.plan import plan_from_dict

        if not isinstance(self.plan, Mapping):
            raise _fail(self.kind, "plan", self.plan, "a plan object (see `rcc-tui plan --help`)")
        try:
            plan_from_dict(dict(self.plan))
        except RccError as exc:
            raise OpError(f"op {self.kind!r}: {exc}") from exc


@op_type
@dataclass(frozen=True)
class EditLayers(Op):
    """Set (or with ``reset`` remove) per-layer overrides of the plan for some layers.

    ``budget`` also sets the plan's global budget (the fraction of the ``auto``-ranked layers'
    parameters kept), so that giving layers ``rank: auto`` and the budget it needs is one step.
    """

    kind: ClassVar[str] = "edit_layers"
    layers: tuple[str, ...] = ()
    settings: dict = field(default_factory=dict)
    reset: bool = False
    budget: float | None = None

    def validate(self) -> None:
        from rcc.compression.plan_rules import normalize_settings

        object.__setattr__(self, "layers", _names(self.kind, "layers", self.layers, empty=False))
        _flag(self.kind, "reset", self.reset)
        try:
            normalize_settings(self.settings)
        except RccError as exc:
            raise OpError(f"op {self.kind!r}: {exc}") from exc
        if self.budget is not None:
            ok = isinstance(self.budget, (int, float)) and not isinstance(self.budget, bool) \
                and 0 < self.budget < 1  # NaN fails too
            if not ok:
                raise _fail(self.kind, "budget", self.budget,
                            "a number 0 < budget < 1 (the fraction of the auto-ranked layers' parameters kept)")
            object.__setattr__(self, "budget", float(self.budget))
        if not self.reset and not self.settings and self.budget is None:
            raise _fail(self.kind, "settings", self.settings, "at least one setting, a budget, or reset: true")


@dataclass(frozen=True)
class _Compress(Op):
    """Fields shared by one-stage runs and cascades."""

    changes_model: ClassVar[bool] = True
    layers: tuple[str, ...] = ()  # empty: every layer the plan selects
    calib_per_class: int = 16
    whiten: bool = True
    preserve: bool = False
    allocation: str = "uniform"  # structured patterns: planned share per group, or "global" per tower
    quant_method: str = "gptq"  # the quant stage's rounding (absent in old recipes: they quantise nothing)
    smooth_alpha: float = 0.0  # the quant stage's SmoothQuant strength (0: off)
    quant_embeddings: bool = True  # the quant stage also stores the embedding tables of its towers in int8

    def validate(self) -> None:
        object.__setattr__(self, "layers", _names(self.kind, "layers", self.layers))
        _int(self.kind, "calib_per_class", self.calib_per_class, 1, 10_000)
        _flag(self.kind, "whiten", self.whiten)
        _flag(self.kind, "preserve", self.preserve)
        _choice(self.kind, "allocation", self.allocation, ALLOCATIONS)
        _choice(self.kind, "quant_method", self.quant_method, QUANT_METHODS)
        _flag(self.kind, "quant_embeddings", self.quant_embeddings)
        object.__setattr__(self, "smooth_alpha", _float(self.kind, "smooth_alpha", self.smooth_alpha, 0.0, 1.0,
                                                        high_open=True))


@op_type
@dataclass(frozen=True)
class RunStage(_Compress):
    """Run one stage at a strength (a fraction of the plan's target), without back-off."""

    kind: ClassVar[str] = "run_stage"
    stage: str = "dare"
    fraction: float = 1.0

    def validate(self) -> None:
        super().validate()
        _choice(self.kind, "stage", self.stage, STAGE_NAMES)
        ok = isinstance(self.fraction, (int, float)) and not isinstance(self.fraction, bool) \
            and math.isfinite(self.fraction) and 0 < self.fraction <= 1
        if not ok:
            raise _fail(self.kind, "fraction", self.fraction, "a number 0 < x ≤ 1")
        object.__setattr__(self, "fraction", float(self.fraction))


@op_type
@dataclass(frozen=True)
class RunCascade(_Compress):
    """The RCC cascade: stages in order, each evaluated and backed off below the threshold."""

    kind: ClassVar[str] = "run_cascade"
    stages: tuple[str, ...] = STAGE_NAMES
    threshold: float = 0.95
    max_attempts: int = 3
    schedule: str = "linear"
    steps: int = 1

    def validate(self) -> None:
        super().validate()
        stages = self.stages
        if isinstance(stages, str) or not isinstance(stages, (list, tuple)) or not stages \
                or any(stage not in STAGE_NAMES for stage in stages):
            raise _fail(self.kind, "stages", stages, f"a non-empty list of {', '.join(STAGE_NAMES)}")
        object.__setattr__(self, "stages", tuple(stages))
        object.__setattr__(self, "threshold", _float(self.kind, "threshold", self.threshold, 0.0, 1.0))
        _int(self.kind, "max_attempts", self.max_attempts, 1, MAX_ATTEMPTS)
        _choice(self.kind, "schedule", self.schedule, SCHEDULES)
        _int(self.kind, "steps", self.steps, 1, MAX_STEPS)


@op_type
@dataclass(frozen=True)
class Evaluate(Op):
    """Evaluate the current node on a split; the metrics are added to that node."""

    kind: ClassVar[str] = "evaluate"
    split: str = "test"

    def validate(self) -> None:
        _text(self.kind, "split", self.split)


@op_type
@dataclass(frozen=True)
class Checkout(Op):
    """Make an earlier node current (rollback); the next model-changing op branches from it."""

    kind: ClassVar[str] = "checkout"
    moves_head: ClassVar[bool] = True
    visits_nodes: ClassVar[bool] = True
    node: int

    def validate(self) -> None:
        _int(self.kind, "node", self.node, 1)


@op_type
@dataclass(frozen=True)
class Label(Op):
    """Name a node and attach a note (an empty label removes it)."""

    kind: ClassVar[str] = "label"
    needs_model: ClassVar[bool] = False
    node: int
    label: str = ""
    note: str = ""

    def validate(self) -> None:
        _int(self.kind, "node", self.node, 1)
        _text(self.kind, "label", self.label, empty=True, limit=80)
        _text(self.kind, "note", self.note, empty=True)


@op_type
@dataclass(frozen=True)
class Export(Op):
    """Write a node as a compressed (factors, packed masks, int8), dense (original architecture), onnx
    (image and text encoders for onnxruntime) or hf-compressed (compressed-tensors for transformers) model."""

    kind: ClassVar[str] = "export"
    visits_nodes: ClassVar[bool] = True
    format: str = "compressed"
    out: str = "export"
    node: int | None = None  # default: the current node

    def validate(self) -> None:
        _choice(self.kind, "format", self.format, EXPORT_FORMATS)
        _text(self.kind, "out", self.out)
        if self.node is not None:
            _int(self.kind, "node", self.node, 1)


@op_type
@dataclass(frozen=True)
class Train(Op):
    """Recovery training: distil the teacher node into the current node, keeping its structure."""

    kind: ClassVar[str] = "train"
    changes_model: ClassVar[bool] = True
    teacher: int | None = None  # default: the root node (the dense model)
    steps: int = 100
    lr: float = 5e-5
    batch_size: int = 32
    temperature: float = 1.0
    kl_weight: float = 1.0
    cosine_weight: float = 1.0
    mse_weight: float = 0.0
    attention_weight: float = 0.0  # attention transfer, OpenCLIP ViT vision towers only (absent in old recipes)
    warmup_steps: int | None = None  # default: min(10, steps // 10)
    schedule: str = "cosine"
    precision: str = "fp32"
    eval_every: int | None = None
    patience: int | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.teacher is not None:
            _int(self.kind, "teacher", self.teacher, 1)
        _int(self.kind, "steps", self.steps, 1, 1_000_000)
        object.__setattr__(self, "lr", _float(self.kind, "lr", self.lr, 1e-12, 1.0))
        _int(self.kind, "batch_size", self.batch_size, 2, 65_536)
        object.__setattr__(self, "temperature", _float(self.kind, "temperature", self.temperature, 1e-3, 100.0))
        for name in ("kl_weight", "cosine_weight", "mse_weight", "attention_weight"):
            object.__setattr__(self, name, _float(self.kind, name, getattr(self, name), 0.0, 1000.0))
        if self.kl_weight + self.cosine_weight + self.mse_weight + self.attention_weight == 0:
            raise _fail(self.kind, "kl_weight", self.kl_weight, "loss weights ≥ 0, not all zero")
        if self.warmup_steps is not None:
            _int(self.kind, "warmup_steps", self.warmup_steps, 0, self.steps)
        _choice(self.kind, "schedule", self.schedule, TRAIN_SCHEDULES)
        _choice(self.kind, "precision", self.precision, PRECISION_NAMES)
        if self.eval_every is not None:
            _int(self.kind, "eval_every", self.eval_every, 1)
        if self.patience is not None:
            _int(self.kind, "patience", self.patience, 1)
        _int(self.kind, "seed", self.seed)


def op_to_dict(op: Op) -> dict[str, Any]:
    """``{"op": kind, field: value, ...}`` with tuples as lists: ready for ``json.dumps``."""
    out: dict[str, Any] = {"op": op.kind}
    for f in fields(op):
        value = getattr(op, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def op_from_dict(data: Any) -> Op:
    """The op a dict describes, validated; refuses unknown op types and fields."""
    if not isinstance(data, Mapping):
        raise OpError(f"operation {data!r} is not an object; allowed: {{\"op\": KIND, ...fields}}")
    kind = data.get("op")
    if kind not in OP_TYPES:
        raise OpError(f"operation type {kind!r} is unknown; allowed: {', '.join(OP_TYPES)}")
    cls = OP_TYPES[kind]
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key != "op" and key not in known:
            raise OpError(f"op {kind!r}: field {key!r} is unknown; allowed: {', '.join(known) or 'none'}")
    missing = [name for name, f in known.items() if name not in data
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise OpError(f"op {kind!r}: field {missing[0]!r} is missing")
    kwargs = {key: value for key, value in data.items() if key != "op"}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise OpError(f"op {kind!r}: {exc}") from exc


def _has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password is not None
    except Exception:
        return False


@op_type
@dataclass(frozen=True)
class ApplyTrial(Op):
    """Apply a search trial: set its stored plan as the plan and run the compression it ran (a node).

    ``record`` is the trial's stored record (rcc.session.trial_compress: plan, stages, calibration,
    node searched from); the session refuses the op without it. The front ends fill it from the
    study's storage (``storage`` None: the session's own search.db) before applying the op
    (rcc.services.search.with_trial_record), so the op log always holds the trial itself:
    replay re-runs the record and never opens a storage, and ``study``, ``trial`` and
    ``storage`` stay in the recipe as provenance only. A storage
    URL with a password is refused (recipes are shared): use PGPASSWORD or ~/.pgpass.
    """

    kind: ClassVar[str] = "apply_trial"
    changes_model: ClassVar[bool] = True
    study: str = "search"  # the default study name of `rcc-tui search`
    trial: int = 0
    storage: str | None = None
    record: dict = field(default_factory=dict)

    def validate(self) -> None:
        _text(self.kind, "study", self.study, limit=512)
        _int(self.kind, "trial", self.trial, 0)
        if self.storage is not None:
            _text(self.kind, "storage", self.storage)
            if _has_password(self.storage):
                raise _fail(self.kind, "storage", "(a URL with a password)",
                            "a URL without one (the op log is shared); give the password via PGPASSWORD or ~/.pgpass")
        if not isinstance(self.record, Mapping):
            raise _fail(self.kind, "record", self.record, "a trial record object, or none to read it from storage")
        if self.record:
            from rcc.compression.trial_record import record_from_dict

            try:
                record_from_dict(dict(self.record))
            except RccError as exc:
                raise OpError(f"op {self.kind!r}: {exc}") from exc
