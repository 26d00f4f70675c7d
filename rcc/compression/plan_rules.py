"""The vocabulary of a compression plan: ranks, per-layer settings, rules, and their checks.

Every check raises `PlanError` with one line that says what is wrong and what is allowed.
Low-level checks leave out *where* (which rule, layer or file); callers add it with
`context(...)`, so the same check reads right whether it came from Python, JSON or the CLI.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from fnmatch import fnmatchcase
from typing import Any, Literal

from rcc.errors import RccError
from rcc.schema.names import PRUNE_METHODS, STRUCTURED_METHODS
from rcc.schema.layers import LAYER_KINDS, TOWERS, LayerInfo

RankMode = Literal["fixed", "energy", "auto"]
RANK_MODES: tuple[RankMode, ...] = ("fixed", "energy", "auto")
PATTERNS_ALLOWED = ("'unstructured', 'row', 'N:M' with 0 < N < M (e.g. '2:4'), 'channel' (MLP hidden units, "
                    "on mlp_in) or 'head' (attention heads, on attn_q)")
# Structured patterns remove whole units (rcc.compression.groups); the amount sits on the leader.
STRUCTURED_PATTERNS: tuple[str, ...] = ("channel", "head")
LEADER_KIND: dict[str, str] = {"channel": "mlp_in", "head": "attn_q"}
RANK_ALLOWED = "an integer ≥ 1, 'energy:F' with 0 < F ≤ 1, or 'auto'"
SPARSITY_ALLOWED = "0 ≤ sparsity < 1"
BITS: tuple[int, ...] = (8,)  # weight bits of the quant stage; None keeps the float weights
BITS_ALLOWED = "8, or null (none) to keep the float weights"
_NM = re.compile(r"(\d+):(\d+)")
_BLOCK_RANGE = re.compile(r"(\d+)-(\d+)")


class PlanError(RccError):
    """A compression plan (or one of its rules, overrides or files) that cannot be used."""


@contextmanager
def context(where: str) -> Iterator[None]:
    """Prefix any PlanError raised inside with ``where: `` (e.g. ``rules[2]``)."""
    try:
        yield
    except PlanError as error:
        raise PlanError(f"{where}: {error}") from None


def _is_number(value: Any) -> bool:
    # bool is an int subclass; `"sparsity": true` in a JSON plan is a mistake, not 1.0.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class RankSpec:
    """How a layer's rank is chosen: a fixed integer, an energy fraction, or `auto` (budget)."""

    mode: RankMode
    value: int | float | None = None

    def __post_init__(self) -> None:
        if self.mode not in RANK_MODES:
            raise PlanError(f"rank mode {self.mode!r} is unknown; allowed: {', '.join(RANK_MODES)}")
        if self.mode == "fixed":
            if not isinstance(self.value, int) or isinstance(self.value, bool) or self.value < 1:
                raise PlanError(f"rank {self.value!r} is out of range; allowed: rank ≥ 1")
        elif self.mode == "energy":
            if not _is_number(self.value) or not 0 < self.value <= 1:
                raise PlanError(f"energy {self.value!r} is out of range; allowed: 0 < energy ≤ 1")
            object.__setattr__(self, "value", float(self.value))
        elif self.value is not None:
            raise PlanError(f"rank 'auto' takes no value, got {self.value!r}; allowed: None")

    def __str__(self) -> str:
        if self.mode == "fixed":
            return str(self.value)
        # repr of a float round-trips exactly, so "energy:0.9" parses back to the same spec.
        return f"energy:{self.value!r}" if self.mode == "energy" else "auto"


def parse_rank(text: str) -> RankSpec:
    """Parse the string form of a rank: ``"64"``, ``"energy:0.9"`` or ``"auto"``."""
    if not isinstance(text, str):
        raise PlanError(f"rank {text!r} is not a string; allowed: {RANK_ALLOWED}")
    clean = text.strip().lower()
    if clean == "auto":
        return RankSpec("auto")
    if clean.isdigit():
        return RankSpec("fixed", int(clean))
    if clean.startswith("energy:"):
        try:
            return RankSpec("energy", float(clean.removeprefix("energy:")))
        except ValueError:
            pass
    raise PlanError(f"rank {text!r} is not understood; allowed: {RANK_ALLOWED}")


def coerce_rank(value: Any) -> RankSpec | None:
    """A rank from a settings value: a RankSpec, its string form, a bare int, or None."""
    if value is None or isinstance(value, RankSpec):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return RankSpec("fixed", value)
    if isinstance(value, str):
        return parse_rank(value)
    raise PlanError(f"rank {value!r} has type {type(value).__name__}; allowed: {RANK_ALLOWED}")


def parse_nm(pattern: str) -> tuple[int, int] | None:
    """``(N, M)`` for an N:M pattern (keep N of every M inputs), None for the other patterns."""
    found = _NM.fullmatch(pattern)
    return (int(found.group(1)), int(found.group(2))) if found else None


def check_pattern(pattern: Any) -> str:
    """The pattern itself when it is one rcc knows, else PlanError."""
    if not isinstance(pattern, str):
        raise PlanError(f"pattern {pattern!r} is not a string; allowed: {PATTERNS_ALLOWED}")
    if pattern in ("unstructured", "row", *STRUCTURED_PATTERNS):
        return pattern
    nm = parse_nm(pattern)
    if nm is None or not 0 < nm[0] < nm[1]:
        raise PlanError(f"pattern {pattern!r} is unknown; allowed: {PATTERNS_ALLOWED}")
    return pattern


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise PlanError(f"{name} {value!r} is not a boolean; allowed: true, false")
    return value


def _check_sparsity(value: Any) -> float:
    if not _is_number(value):
        raise PlanError(f"sparsity {value!r} is not a number; allowed: {SPARSITY_ALLOWED}")
    if not 0 <= value < 1:  # NaN fails both comparisons: refused
        raise PlanError(f"sparsity {value!r} is out of range; allowed: {SPARSITY_ALLOWED}")
    return float(value)


def check_bits(value: Any) -> int | None:
    """8 or None (the float weights stay); the CLI's "none" / "8" strings are accepted too."""
    if isinstance(value, str) and value.strip().lower() in ("none", "null", "float", ""):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value in BITS):
        return value
    raise PlanError(f"bits {value!r} is not supported; allowed: {BITS_ALLOWED}")


def _check_method(value: Any) -> str:
    if value not in PRUNE_METHODS:
        raise PlanError(f"method {value!r} is unknown; allowed: {', '.join(PRUNE_METHODS)}")
    return value


@dataclass(frozen=True)
class LayerPlan:
    """The concrete compression setting of one layer.

    ``locked`` layers are never touched, whatever else they say; a layer is *selected*
    when it is not locked and has a sparsity above zero, a rank or int8 ``bits``.
    """

    sparsity: float = 0.0
    method: str = "magnitude"
    pattern: str = "unstructured"
    rank: RankSpec | None = None
    correction: bool = False  # AlphaEdit after pruning / factorising
    locked: bool = False
    bits: int | None = None  # 8: the quant stage stores the weights (or both factors) in int8

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", _check_sparsity(self.sparsity))
        _check_method(self.method)
        check_pattern(self.pattern)
        if self.rank is not None and not isinstance(self.rank, RankSpec):
            raise PlanError(f"rank {self.rank!r} is not a RankSpec; use parse_rank() or coerce_rank()")
        _check_flag("correction", self.correction)
        _check_flag("locked", self.locked)
        object.__setattr__(self, "bits", check_bits(self.bits))

    @property
    def selected(self) -> bool:
        return not self.locked and (self.sparsity > 0 or self.rank is not None or self.bits is not None)


SETTING_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(LayerPlan))
_COERCE = {
    "sparsity": _check_sparsity, "method": _check_method, "pattern": check_pattern,
    "rank": coerce_rank, "correction": lambda v: _check_flag("correction", v),
    "locked": lambda v: _check_flag("locked", v), "bits": check_bits,
}


def normalize_settings(settings: Any) -> dict[str, Any]:
    """A checked copy of a partial LayerPlan (``{"sparsity": 0.5, "rank": "auto"}``), ranks as RankSpec."""
    if not isinstance(settings, Mapping):
        raise PlanError(f"settings {settings!r} are not a mapping; allowed keys: {', '.join(SETTING_FIELDS)}")
    clean: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in _COERCE:
            raise PlanError(f"setting {key!r} is unknown; allowed: {', '.join(SETTING_FIELDS)}")
        clean[key] = _COERCE[key](value)
    return clean


def settings_to_json(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings with ranks in their string form, ready for ``json.dumps``."""
    return {k: (str(v) if isinstance(v, RankSpec) else v) for k, v in settings.items()}


def _check_block(block: Any) -> int | str | None:
    if block is None or (isinstance(block, int) and not isinstance(block, bool) and block >= 0):
        return block
    if isinstance(block, str):
        if block.isdigit():
            return int(block)
        found = _BLOCK_RANGE.fullmatch(block)
        if found and int(found.group(1)) <= int(found.group(2)):
            return block
    raise PlanError(f"block {block!r} is not understood; allowed: an integer ≥ 0 or a range 'a-b' with a ≤ b")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise PlanError(f"{name} {value!r} is unknown; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class Rule:
    """Settings for every layer that all given matchers accept (None matches anything).

    ``name`` is an fnmatch glob over the whole inventory name (``*`` also crosses dots);
    ``block`` is one block index or an inclusive range ``"a-b"``.
    """

    name: str | None = None
    tower: str | None = None
    block: int | str | None = None
    kind: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name is not None and not isinstance(self.name, str):
            raise PlanError(f"name {self.name!r} is not a string; allowed: an fnmatch glob such as 'visual.*'")
        _check_choice("tower", self.tower, TOWERS)
        _check_choice("kind", self.kind, LAYER_KINDS)
        object.__setattr__(self, "block", _check_block(self.block))
        # A private, checked copy: the caller's dict can change later without changing the rule.
        object.__setattr__(self, "settings", normalize_settings(self.settings))

    def matchers(self) -> dict[str, Any]:
        return {k: v for k, v in (("name", self.name), ("tower", self.tower),
                                  ("block", self.block), ("kind", self.kind)) if v is not None}


def rule_matches(rule: Rule, layer: LayerInfo) -> bool:
    """Whether every matcher the rule gives accepts the layer."""
    if rule.name is not None and not fnmatchcase(layer.name, rule.name):
        return False
    if rule.tower is not None and layer.tower != rule.tower:
        return False
    if rule.kind is not None and layer.kind != rule.kind:
        return False
    if rule.block is None:
        return True
    if layer.block is None:
        return False
    if isinstance(rule.block, int):
        return layer.block == rule.block
    low, high = (int(part) for part in rule.block.split("-"))
    return low <= layer.block <= high


def describe_rule(index: int, rule: Rule) -> str:
    """``rules[2] (name='visual.*', kind='mlp_in')``: the 0-based index in the plan's rule list."""
    shown = ", ".join(f"{k}={v!r}" for k, v in rule.matchers().items()) or "any layer"
    return f"rules[{index}] ({shown})"


def apply_settings(current: LayerPlan, origins: dict[str, str], settings: Mapping[str, Any],
                   layer: str, source: str, label: str, may_unlock: bool) -> LayerPlan:
    """``current`` with ``settings`` applied, refusing any change to a locked layer.

    ``source`` names the rule or override in messages, ``label`` is what ``origins`` records.
    Only an override may unlock (``{"locked": false}``): a broad rule that happens to cover
    a layer the user locked must not silently undo that choice.
    """
    if current.locked:
        unlocking = settings.get("locked") is False
        if unlocking and not may_unlock:
            bad: str | None = "locked"
        else:
            bad = None if unlocking else next((k for k in settings if k != "locked"), None)
        if bad is not None:
            fix = ('add "locked": false to this override' if may_unlock
                   else 'narrow the rule so it skips the layer, or unlock it with an override {"locked": false}')
            raise PlanError(f"{source} would change {bad} of layer {layer!r}, locked by {origins['locked']}; "
                            f"allowed: {fix}")
    for key in settings:
        origins[key] = label
    return LayerPlan(**{**{f: getattr(current, f) for f in SETTING_FIELDS}, **settings})


def check_layer(layer: LayerInfo, plan: LayerPlan, origins: Mapping[str, str], budget: float | None) -> None:
    """Refuse settings this layer's shape or storage cannot take (only for selected layers)."""
    if not plan.selected:
        return
    out_f, in_f = layer.shape
    nm = parse_nm(plan.pattern)
    where = f"layer {layer.name!r}"
    if plan.pattern in STRUCTURED_PATTERNS and plan.sparsity > 0:
        leader = LEADER_KIND[plan.pattern]
        if layer.kind != leader:
            raise PlanError(f"{where}: pattern {plan.pattern} is set on its group's {leader} layer, not on a "
                            f"{layer.kind} (set by {origins['pattern']}); allowed: 'unstructured', 'row' or N:M on "
                            f"this layer (the {leader} of its block takes '{plan.pattern}')")
        if plan.method not in STRUCTURED_METHODS:
            raise PlanError(f"{where}: method {plan.method} has no structured form for pattern {plan.pattern} "
                            f"(set by {origins['method']}); allowed: {', '.join(STRUCTURED_METHODS)} "
                            f"(group magnitude, or activation-aware scores)")
    if plan.sparsity > 0 and nm is not None:
        n, m = nm
        if in_f % m:
            raise PlanError(f"{where}: pattern {plan.pattern} needs in_features divisible by {m}, got {in_f} "
                            f"(set by {origins['pattern']}); "
                            f"allowed: an N:M whose M divides {in_f}, 'unstructured' or 'row'")
        if not math.isclose(plan.sparsity, 1 - n / m, abs_tol=5e-3):
            raise PlanError(f"{where}: pattern {plan.pattern} keeps {n} of every {m} weights, so sparsity "
                            f"{plan.sparsity!r} cannot hold (set by {origins['sparsity']}); "
                            f"allowed: sparsity {1 - n / m!r} or 0")
    if plan.bits is not None and layer.transposed:
        raise PlanError(f"{where}: bits {plan.bits} cannot apply to a bare parameter used as x @ W "
                        f"(set by {origins['bits']}); allowed: bits null for this layer")
    if plan.rank is None:
        return
    if layer.transposed:
        raise PlanError(f"{where}: rank {plan.rank} cannot apply to a bare parameter used as x @ W "
                        f"(set by {origins['rank']}); allowed: sparsity only")
    if plan.sparsity > 0 and nm is not None:
        raise PlanError(f"{where}: pattern {plan.pattern} cannot prune low-rank factors "
                        f"(set by {origins['pattern']}); allowed with a rank: 'unstructured' or 'row'")
    if plan.rank.mode == "fixed" and plan.rank.value > min(out_f, in_f):
        raise PlanError(f"{where}: rank {plan.rank.value} is out of range for shape {out_f}×{in_f} "
                        f"(set by {origins['rank']}); allowed: 1 ≤ rank ≤ {min(out_f, in_f)}")
    if plan.rank.mode == "auto" and budget is None:
        raise PlanError(f"{where}: rank 'auto' needs the plan's budget, which is not set "
                        f"(rank set by {origins['rank']}); allowed: a budget with 0 < budget < 1")
