"""Search spaces over plan fields: which numbers a trial picks, and the plan they make.

Three levels:

    layer    one parameter per layer and field            sparsity[NAME], rank[NAME]
    group    one per group of layers (tower/block/kind)    sparsity[block=3], rank[kind=mlp_in]
    global   one level per field, times a multiplier per group:
                 s_layer = clip(sparsity · sparsity_mult[GROUP], low, high)
             (without groups or multipliers it is the uniform plan at that level)

Rank is searched as the fraction f of a layer's full rank that is kept:
r = max(1, round(f · min(m, n))) for an m×n matrix, and the layer stays dense (rank None)
when f = 1 or r(m + n) ≥ mn (the factors would store more than the matrix).

Bits (``bits=True``) are a choice per layer (level ``layer``) or per group (``group`` and
``global``: int8 on or off for a whole group, no multipliers): a parameter b on the grid {0, 1},
b = 1 giving the layer ``bits: 8`` (the quant stage makes it int8), b = 0 float weights.

Locked layers are never part of a space, and transposed matrices (bare ``x @ W`` parameters)
get no rank. With ``pattern`` ``channel`` or ``head`` the space searches how many MLP hidden
units or attention heads each group loses: its sparsity dimensions cover only the groups'
leaders (mlp_in, attn_q), which take the pattern in every trial's plan. A trial's parameters become the base plan plus one override per searched layer,
so everything else the user set (methods, patterns, corrections, other layers) is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from rcc.compression.groups import is_structured, structured_groups
from rcc.compression.plan import CompressionPlan, resolve_plan
from rcc.compression.plan_rules import PlanError, check_pattern, parse_nm
from rcc.errors import RccError
from rcc.schema.layers import LAYER_KINDS, TOWERS, LayerInfo
from rcc.schema.names import PRUNE_METHODS

LEVELS = ("global", "group", "layer")
GROUP_KEYS = ("tower", "block", "kind")
FIELDS = ("sparsity", "rank", "bits")


class SearchError(RccError):
    """A search setting (space, objective, storage, study) that cannot be used."""


@dataclass(frozen=True)
class Bounds:
    """``low ≤ x ≤ high`` on a grid of ``step`` (None: continuous)."""

    low: float
    high: float
    step: float | None = None

    def check(self, what: str, floor: float, ceiling: float, ceiling_open: bool) -> None:
        top = "<" if ceiling_open else "≤"
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                      for v in (self.low, self.high))
        if not numbers or not (floor <= self.low <= self.high) or not (
                self.high < ceiling if ceiling_open else self.high <= ceiling):
            raise SearchError(f"{what} bounds ({self.low!r}, {self.high!r}) are out of range; "
                              f"allowed: {floor:g} ≤ low ≤ high {top} {ceiling:g}")
        if self.step is None:
            return
        if isinstance(self.step, bool) or not isinstance(self.step, (int, float)) or not self.step > 0:
            raise SearchError(f"{what} step {self.step!r} is invalid; allowed: a number > 0, or none")
        count = (self.high - self.low) / self.step
        if abs(count - round(count)) > 1e-6:
            raise SearchError(f"{what} step {self.step!r} does not divide {self.high!r} − {self.low!r}; "
                              f"allowed: a step that fits a whole number of times")

    def snap(self, value: float) -> float:
        """The nearest point of the grid (or of the interval) to ``value``."""
        value = min(self.high, max(self.low, value))
        if self.step is None:
            return value
        return min(self.high, round(self.low + round((value - self.low) / self.step) * self.step, 10))


@dataclass(frozen=True)
class SpaceConfig:
    """What to search: the level, the layers (towers, kinds), the fields and their bounds."""

    level: str = "global"
    group_by: tuple[str, ...] = ("block",)  # groups for "group", and the multipliers of "global"
    towers: tuple[str, ...] = ()  # empty: every tower
    kinds: tuple[str, ...] = ()  # empty: every kind
    sparsity: Bounds | None = field(default_factory=lambda: Bounds(0.0, 0.9, 0.05))
    rank: Bounds | None = None  # fraction of the full rank kept, 0 < f ≤ 1
    multiplier: Bounds | None = field(default_factory=lambda: Bounds(0.5, 1.5, 0.1))  # "global" only
    method: str | None = None  # pruning method of the searched layers; None: as the base plan says
    bits: bool = False  # also choose int8 (bits 8) or float weights per layer or group
    pattern: str | None = None  # pattern of the searched layers (channel / head: their groups' leaders)

    @property
    def bits_choice(self) -> Bounds | None:
        """b ∈ {0, 1}: 1 is int8 (bits 8), 0 float weights."""
        return Bounds(0.0, 1.0, 1.0) if self.bits else None

    def __post_init__(self) -> None:
        object.__setattr__(self, "group_by", tuple(self.group_by))
        object.__setattr__(self, "towers", tuple(self.towers))
        object.__setattr__(self, "kinds", tuple(self.kinds))
        if self.level not in LEVELS:
            raise SearchError(f"search level {self.level!r} is unknown; allowed: {', '.join(LEVELS)}")
        for key in self.group_by:
            if key not in GROUP_KEYS:
                raise SearchError(f"group key {key!r} is unknown; allowed: {', '.join(GROUP_KEYS)}")
        if self.level == "group" and not self.group_by:
            raise SearchError("search level 'group' needs group keys; allowed: one or more of "
                              f"{', '.join(GROUP_KEYS)}")
        for tower in self.towers:
            if tower not in TOWERS:
                raise SearchError(f"tower {tower!r} is unknown; allowed: {', '.join(TOWERS)}")
        for kind in self.kinds:
            if kind not in LAYER_KINDS:
                raise SearchError(f"kind {kind!r} is unknown; allowed: {', '.join(LAYER_KINDS)}")
        if not isinstance(self.bits, bool):
            raise SearchError(f"bits {self.bits!r} is not a boolean; allowed: true (search int8 per layer or group), "
                              f"false")
        if self.sparsity is None and self.rank is None and not self.bits:
            raise SearchError("the space searches neither sparsity, rank nor bits; allowed: bounds for sparsity or "
                              "rank, or bits")
        if self.sparsity is not None:
            self.sparsity.check("sparsity", 0.0, 1.0, ceiling_open=True)
        if self.rank is not None:
            self.rank.check("rank fraction", 0.0, 1.0, ceiling_open=False)
            if self.rank.low <= 0:
                raise SearchError(f"rank fraction low {self.rank.low!r} is out of range; allowed: 0 < low ≤ 1")
        if self.multiplier is not None:
            self.multiplier.check("multiplier", 0.0, math.inf, ceiling_open=True)
        if self.method is not None and self.method not in PRUNE_METHODS:
            raise SearchError(f"method {self.method!r} is unknown; allowed: {', '.join(PRUNE_METHODS)}")
        if self.pattern is not None:
            try:
                check_pattern(self.pattern)
            except PlanError as error:
                raise SearchError(str(error)) from None
            if parse_nm(self.pattern) is not None:
                raise SearchError(f"pattern {self.pattern} fixes the sparsity; allowed: unstructured, row, channel, head")
            if is_structured(self.pattern) and self.sparsity is None:
                raise SearchError(f"pattern {self.pattern} searches how many units go; allowed: sparsity bounds with it")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("group_by", "towers", "kinds"):
            out[key] = list(out[key])
        return out


def space_config_from_dict(data: Mapping[str, Any]) -> SpaceConfig:
    """A SpaceConfig from ``as_dict`` output (refuses unknown keys)."""
    known = set(SpaceConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise SearchError(f"search space key {unknown[0]!r} is unknown; allowed: {', '.join(sorted(known))}")
    values = dict(data)
    for key in ("sparsity", "rank", "multiplier"):
        if isinstance(values.get(key), Mapping):
            values[key] = Bounds(**values[key])
    return SpaceConfig(**values)


@dataclass(frozen=True)
class Dimension:
    """One Optuna parameter: a field's value for some layers, a level, or a group multiplier."""

    name: str
    field: str  # sparsity | rank
    role: str  # value | level | multiplier
    bounds: Bounds
    layers: tuple[str, ...]


@dataclass(frozen=True)
class SearchSpace:
    config: SpaceConfig
    base: CompressionPlan
    dimensions: tuple[Dimension, ...]
    layers: tuple[LayerInfo, ...]  # the searched layers (in some dimension), in inventory order
    inventory: tuple[LayerInfo, ...]  # every layer of the model (plans resolve against it)

    def dimension(self, name: str) -> Dimension:
        for dim in self.dimensions:
            if dim.name == name:
                return dim
        raise KeyError(name)


def group_of(layer: LayerInfo, keys: Sequence[str]) -> str:
    """``tower=text,block=3``: the group label of a layer under ``keys``."""
    parts = []
    for key in keys:
        value = getattr(layer, key)
        parts.append(f"{key}={'none' if value is None else value}")
    return ",".join(parts)


def rank_eligible(layer: LayerInfo) -> bool:
    return not layer.transposed


def rank_for(layer: LayerInfo, fraction: float) -> int | None:
    """r = max(1, round(f · min(m, n))); None when the factors would not store fewer numbers."""
    out_f, in_f = layer.shape
    if fraction >= 1.0:
        return None
    rank = max(1, round(fraction * min(out_f, in_f)))
    return rank if rank * (out_f + in_f) < out_f * in_f else None


def build_space(config: SpaceConfig, inventory: Sequence[LayerInfo], base: CompressionPlan) -> SearchSpace:
    """The dimensions of ``config`` over the model's layers, starting from plan ``base``."""
    resolved = resolve_plan(base, inventory)
    leaders = None
    if config.pattern is not None and is_structured(config.pattern):
        leaders = {g.leader: g for g in structured_groups(inventory) if g.kind == config.pattern}
    layers = tuple(layer for layer in inventory
                   if (not config.towers or layer.tower in config.towers)
                   and (not config.kinds or layer.kind in config.kinds)
                   and (leaders is None or layer.name in leaders)
                   and not resolved[layer.name].locked)
    if not layers:
        raise SearchError(f"the search space holds no layer (towers {list(config.towers) or 'all'}, kinds "
                          f"{list(config.kinds) or 'all'}, locked layers left out); allowed: a tower or kind "
                          f"the model has, with some layer unlocked")
    if config.sparsity is not None and leaders is not None:
        for layer in layers:
            if leaders[layer.name].kept_units(config.sparsity.high) < 1:
                group = leaders[layer.name]
                raise SearchError(f"layer {layer.name!r}: sparsity up to {config.sparsity.high!r} would remove all "
                                  f"{group.dense_units} {group.unit_name}; allowed: a high bound below "
                                  f"{(group.dense_units - 0.5) / group.dense_units:.4g}")
    if config.sparsity is not None and config.pattern is None:
        for layer in layers:
            if parse_nm(resolved[layer.name].pattern) is not None:
                raise SearchError(f"layer {layer.name!r} has pattern {resolved[layer.name].pattern}, whose sparsity "
                                  f"is fixed; allowed: search layers with pattern 'unstructured' or 'row' "
                                  f"(lock this one or narrow --tower/--kind)")
    dims: list[Dimension] = []
    for name in FIELDS:
        bounds: Bounds | None = config.bits_choice if name == "bits" else getattr(config, name)
        if bounds is None:
            continue
        members = [layer for layer in layers if name == "sparsity" or rank_eligible(layer)]
        if not members:
            continue
        if config.level == "layer":
            dims += [Dimension(f"{name}[{layer.name}]", name, "value", bounds, (layer.name,)) for layer in members]
            continue
        groups: dict[str, list[str]] = {}
        for layer in members:
            groups.setdefault(group_of(layer, config.group_by), []).append(layer.name)
        if config.level == "group" or name == "bits":  # bits: on or off per group, never a level × multiplier
            dims += [Dimension(f"{name}[{g}]", name, "value", bounds, tuple(n)) for g, n in groups.items()]
            continue
        dims.append(Dimension(name, name, "level", bounds, tuple(layer.name for layer in members)))
        if config.multiplier is not None and config.group_by and len(groups) > 1:
            dims += [Dimension(f"{name}_mult[{g}]", name, "multiplier", config.multiplier, tuple(n))
                     for g, n in groups.items()]
    searched = {name for dim in dims for name in dim.layers}
    if not searched:
        raise SearchError("the search space has no dimension: no selected layer can take a rank (bare x @ W "
                          "parameters cannot); allowed: sparsity bounds, or layers that are weight matrices")
    return SearchSpace(config, base, tuple(dims), tuple(layer for layer in layers if layer.name in searched),
                       tuple(inventory))


def suggest(trial, space: SearchSpace) -> dict[str, float]:
    """The trial's parameters, one ``suggest_float`` per dimension."""
    return {dim.name: trial.suggest_float(dim.name, dim.bounds.low, dim.bounds.high, step=dim.bounds.step)
            for dim in space.dimensions}


def layer_values(space: SearchSpace, params: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Per searched layer, the value of each searched field (sparsity, rank fraction), within bounds."""
    missing = [dim.name for dim in space.dimensions if dim.name not in params]
    if missing:
        raise SearchError(f"trial parameters lack {missing[0]!r}; allowed: parameters of this search space "
                          f"({len(space.dimensions)} dimensions)")
    values: dict[str, dict[str, float]] = {}
    levels = {dim.field: float(params[dim.name]) for dim in space.dimensions if dim.role == "level"}
    for dim in space.dimensions:
        if dim.role == "value":
            for name in dim.layers:
                values.setdefault(name, {})[dim.field] = float(params[dim.name])
        elif dim.role == "level":
            for name in dim.layers:
                values.setdefault(name, {}).setdefault(dim.field, float(params[dim.name]))
    for dim in space.dimensions:
        if dim.role == "multiplier":
            bounds: Bounds = getattr(space.config, dim.field)
            for name in dim.layers:
                scaled = levels[dim.field] * float(params[dim.name])
                values[name][dim.field] = min(bounds.high, max(bounds.low, scaled))
    return {name: {k: round(v, 6) for k, v in fields.items()} for name, fields in values.items()}


def plan_from_params(space: SearchSpace, params: Mapping[str, float]) -> CompressionPlan:
    """The base plan plus one override per searched layer, checked against the model's layers."""
    by_name = {layer.name: layer for layer in space.layers}
    overrides = {name: dict(settings) for name, settings in space.base.overrides.items()}
    for name, fields in layer_values(space, params).items():
        settings: dict[str, Any] = {}
        if "sparsity" in fields:
            settings["sparsity"] = fields["sparsity"]
        if "rank" in fields:
            settings["rank"] = rank_for(by_name[name], fields["rank"])
        if "bits" in fields:
            settings["bits"] = 8 if fields["bits"] >= 0.5 else None
        if space.config.method is not None:
            settings["method"] = space.config.method
        if space.config.pattern is not None and "sparsity" in fields:
            settings["pattern"] = space.config.pattern
        overrides[name] = {**overrides.get(name, {}), **settings}
    plan = replace(space.base, overrides=overrides)
    resolve_plan(plan, space.inventory)
    return plan


def _rank_fraction(layer: LayerInfo, setting) -> float:
    if setting.rank is None or setting.rank.mode != "fixed":
        return 1.0  # dense, or a rank only the SVD knows (energy / auto): start from full rank
    return min(1.0, setting.rank.value / min(layer.shape))


def _weighted_mean(pairs: Sequence[tuple[float, int]]) -> float:
    total = sum(weight for _, weight in pairs)
    return sum(value * weight for value, weight in pairs) / total if total else 0.0


def _params_from_layer_values(space: SearchSpace, values: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Parameters that reproduce per-layer ``values`` as closely as the space allows (means per group)."""
    sizes = {layer.name: layer.params for layer in space.layers}
    params: dict[str, float] = {}
    levels: dict[str, float] = {}
    for dim in space.dimensions:
        mean = _weighted_mean([(values[name][dim.field], sizes[name]) for name in dim.layers])
        if dim.role == "level":
            levels[dim.field] = dim.bounds.snap(mean)
            params[dim.name] = levels[dim.field]
        elif dim.role == "value":
            params[dim.name] = dim.bounds.snap(mean)
    for dim in space.dimensions:
        if dim.role == "multiplier":
            mean = _weighted_mean([(values[name][dim.field], sizes[name]) for name in dim.layers])
            level = levels[dim.field]
            params[dim.name] = dim.bounds.snap(mean / level if level > 0 else 1.0)
    return params


def params_from_plan(space: SearchSpace, plan: CompressionPlan) -> dict[str, float]:
    """The point of the space nearest to ``plan`` (seeds a study with the user's current plan)."""
    resolved = resolve_plan(plan, space.inventory)
    values = {layer.name: {"sparsity": resolved[layer.name].sparsity,
                           "rank": _rank_fraction(layer, resolved[layer.name]),
                           "bits": 0.0 if resolved[layer.name].bits is None else 1.0} for layer in space.layers}
    return _params_from_layer_values(space, values)


def params_from_sensitivity(space: SearchSpace, scores: Mapping[str, float],
                            level: Mapping[str, float] | None = None, spread: float = 0.5) -> dict[str, float]:
    """A point that compresses sensitive layers less, at the same parameter-weighted mean level.

    Layers are ranked by score (higher = more sensitive; layers without a score get the median);
    with t ∈ [0, 1] the rank position (0 least sensitive), the sparsity of a layer is
    L · (1 + spread · (1 − 2t)) and its kept rank fraction F · (1 − spread · (1 − 2t)), both
    rescaled so that their parameter-weighted mean stays L (F), then clipped to the bounds.
    L and F default to ``level`` or the middle of the bounds.
    """
    known = {layer.name: float(scores[layer.name]) for layer in space.layers
             if layer.name in scores and math.isfinite(float(scores[layer.name]))}
    if not known:
        raise SearchError(f"no sensitivity score names a searched layer ({len(scores)} scores given); "
                          f"allowed: scores keyed by layer names from `rcc-tui layers`")
    ordered = sorted(known.values())
    median = ordered[len(ordered) // 2]
    score = {layer.name: known.get(layer.name, median) for layer in space.layers}
    ranking = sorted(score, key=lambda name: (score[name], name))
    position = {name: (i / (len(ranking) - 1) if len(ranking) > 1 else 0.5) for i, name in enumerate(ranking)}
    sizes = {layer.name: layer.params for layer in space.layers}
    values: dict[str, dict[str, float]] = {name: {"bits": 1.0 if position[name] < 0.5 else 0.0} for name in score}
    for name in ("sparsity", "rank"):  # bits: the less sensitive half int8, the rest float
        bounds: Bounds | None = getattr(space.config, name)
        if bounds is None:
            continue
        target = (level or {}).get(name, (bounds.low + bounds.high) / 2)
        sign = 1.0 if name == "sparsity" else -1.0  # sensitive layers: less sparsity, more rank
        raw = {n: target * (1 + sign * spread * (1 - 2 * position[n])) for n in score}
        mean = _weighted_mean([(raw[n], sizes[n]) for n in raw])
        scale = target / mean if mean > 0 else 1.0
        for n in raw:
            values[n][name] = min(bounds.high, max(bounds.low, raw[n] * scale))
    return _params_from_layer_values(space, values)
