"""Compression plans: defaults, ordered rules and per-layer overrides, resolved per layer.

Resolution order: ``defaults`` → ``rules`` in list order (a later rule wins) → ``overrides``.
A layer marked ``locked`` refuses every later change; only an override that sets
``"locked": false`` unlocks it (and may change the layer in the same breath).

JSON form (``plan_to_dict`` / ``save_plan``)::

    {"version": 1,
     "defaults": {"sparsity": 0.0, "method": "magnitude", "pattern": "unstructured",
                  "rank": null, "correction": false, "locked": false, "bits": null},
     "rules": [{"tower": "text", "block": "0-3", "kind": "mlp_in",
                "settings": {"sparsity": 0.5, "rank": "auto"}}],
     "overrides": {"text_projection": {"locked": true}},
     "budget": 0.6, "seed": 0}
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from rcc.compression.plan_rules import (
    LEADER_KIND, SETTING_FIELDS, LayerPlan, PlanError, RankSpec, Rule, apply_settings, check_layer,
    context, describe_rule, normalize_settings, parse_nm, parse_rank, rule_matches, settings_to_json,
)
from rcc.compression.groups import check_structured, is_structured, planned_shapes
from rcc.schema.layers import LayerInfo

__all__ = [
    "CompressionPlan", "LayerCount", "LayerPlan", "PlanError", "PlanSummary", "RankSpec", "Rule",
    "layer_params_after", "load_plan", "parse_rank", "plan_from_dict", "plan_to_dict", "resolve_plan",
    "save_plan", "summarize_plan", "uniform_plan",
]

PLAN_VERSION = 1
_PLAN_KEYS = ("version", "defaults", "rules", "overrides", "budget", "seed")
_RULE_KEYS = ("name", "tower", "block", "kind", "settings")


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], what: str) -> None:
    for key in data:
        if key not in allowed:
            raise PlanError(f"{what} key {key!r} is unknown; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class CompressionPlan:
    """What to do to every layer of a model; see the module docstring for the resolution order.

    ``budget`` is the fraction of the ``auto``-ranked layers' parameters to keep (0 < b < 1).
    """

    defaults: LayerPlan = field(default_factory=LayerPlan)
    rules: tuple[Rule, ...] = ()
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    budget: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.defaults, LayerPlan):
            raise PlanError(f"defaults {self.defaults!r} are not a LayerPlan")
        rules = tuple(self.rules)
        for i, rule in enumerate(rules):
            if not isinstance(rule, Rule):
                raise PlanError(f"rules[{i}] {rule!r} is not a Rule")
        object.__setattr__(self, "rules", rules)
        if not isinstance(self.overrides, Mapping):
            raise PlanError(f"overrides {self.overrides!r} are not a mapping of layer name → settings")
        overrides: dict[str, dict[str, Any]] = {}
        for name, settings in self.overrides.items():
            with context(f"override for layer {name!r}"):
                overrides[str(name)] = normalize_settings(settings)
        object.__setattr__(self, "overrides", overrides)
        if self.budget is not None:
            if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)):
                raise PlanError(f"budget {self.budget!r} is not a number; allowed: 0 < budget < 1 (fraction kept)")
            if not 0 < self.budget < 1:  # NaN fails too
                raise PlanError(f"budget {self.budget!r} is out of range; allowed: 0 < budget < 1 (fraction kept)")
            object.__setattr__(self, "budget", float(self.budget))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise PlanError(f"seed {self.seed!r} is not an integer; allowed: any integer")


def resolve_plan(plan: CompressionPlan, layers: Sequence[LayerInfo]) -> dict[str, LayerPlan]:
    """The checked, concrete LayerPlan of every inventory layer, in inventory order."""
    names = [layer.name for layer in layers]
    for name in plan.overrides:
        if name not in names:
            near = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"a name from the {len(names)}-layer inventory"
            raise PlanError(f"override for layer {name!r} names no layer; allowed: {hint}")
    current = {name: plan.defaults for name in names}
    origins = {name: dict.fromkeys(SETTING_FIELDS, "defaults") for name in names}
    for i, rule in enumerate(plan.rules):
        matched = [layer.name for layer in layers if rule_matches(rule, layer)]
        if not matched:
            raise PlanError(f"{describe_rule(i, rule)} matches no layer (rules are numbered from 0); "
                            f"allowed: matchers that select at least one of the {len(names)} layers")
        for name in matched:
            current[name] = apply_settings(current[name], origins[name], rule.settings, name,
                                           describe_rule(i, rule), f"rules[{i}]", may_unlock=False)
    for name, settings in plan.overrides.items():
        current[name] = apply_settings(current[name], origins[name], settings, name,
                                       f"override for layer {name!r}", "its override", may_unlock=True)
    for layer in layers:
        check_layer(layer, current[layer.name], origins[layer.name], plan.budget)
    check_structured(layers, current, origins)
    return current


def _settings_json(plan: LayerPlan) -> dict[str, Any]:
    return settings_to_json({f: getattr(plan, f) for f in SETTING_FIELDS})


def plan_to_dict(plan: CompressionPlan) -> dict[str, Any]:
    """The JSON-ready form of a plan (ranks as strings, matchers left out when None)."""
    return {
        "version": PLAN_VERSION,
        "defaults": _settings_json(plan.defaults),
        "rules": [{**rule.matchers(), "settings": settings_to_json(rule.settings)} for rule in plan.rules],
        "overrides": {name: settings_to_json(s) for name, s in plan.overrides.items()},
        "budget": plan.budget,
        "seed": plan.seed,
    }


def plan_from_dict(data: Any) -> CompressionPlan:
    """A plan from its JSON form; unknown keys and wrong types are refused with the allowed list."""
    if not isinstance(data, Mapping):
        raise PlanError(f"a plan must be a JSON object, got {type(data).__name__}; "
                        f"allowed keys: {', '.join(_PLAN_KEYS)}")
    _check_keys(data, _PLAN_KEYS, "plan")
    version = data.get("version", PLAN_VERSION)
    if version != PLAN_VERSION or isinstance(version, bool):
        raise PlanError(f"plan version {version!r} is not supported; allowed: {PLAN_VERSION}")
    with context("defaults"):
        defaults = LayerPlan(**normalize_settings(data.get("defaults", {})))
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        raise PlanError(f"rules {raw_rules!r} are not a list; allowed: a list of rule objects")
    rules = []
    for i, raw in enumerate(raw_rules):
        with context(f"rules[{i}]"):
            if not isinstance(raw, Mapping):
                raise PlanError(f"{raw!r} is not an object; allowed keys: {', '.join(_RULE_KEYS)}")
            _check_keys(raw, _RULE_KEYS, "rule")
            rules.append(Rule(**raw))
    return CompressionPlan(defaults=defaults, rules=tuple(rules), overrides=data.get("overrides", {}),
                           budget=data.get("budget"), seed=data.get("seed", 0))


def save_plan(plan: CompressionPlan, path: str | Path) -> None:
    """Write the plan as indented JSON."""
    text = json.dumps(plan_to_dict(plan), indent=2, ensure_ascii=False) + "\n"
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as error:
        raise PlanError(f"plan file {str(path)!r} cannot be written: {error.strerror}") from None


def load_plan(path: str | Path) -> CompressionPlan:
    """Read a plan written by `save_plan` (or by hand); every error names the file."""
    where = f"plan file {str(path)!r}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(f"{where} does not exist; allowed: a JSON plan, e.g. from `rcc-tui plan`") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PlanError(f"{where} cannot be read: {getattr(error, 'strerror', None) or error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise PlanError(f"{where} is not valid JSON: {error.msg} "
                        f"at line {error.lineno} column {error.colno}") from None
    with context(where):
        return plan_from_dict(data)


def uniform_plan(sparsity: float = 0.0, rank: RankSpec | str | int | None = None, method: str = "magnitude",
                 pattern: str = "unstructured", towers: Iterable[str] | None = None,
                 kinds: Iterable[str] | None = None, correction: bool = False, budget: float | None = None,
                 layers: Sequence[LayerInfo] | None = None, bits: int | None = None) -> CompressionPlan:
    """A starter plan: one rule per (tower, kind) filter given, all with the same settings.

    With ``layers`` and a rank or bits, transposed matrices (which can be neither factorised
    nor quantised) get an override ``{"rank": null, "bits": null}`` so the plan resolves on
    OpenCLIP models as written. A structured pattern (``channel``, ``head``) without ``kinds``
    applies to its groups' leaders (mlp_in, attn_q).
    """
    settings = normalize_settings({"sparsity": sparsity, "method": method, "pattern": pattern,
                                   "rank": rank, "correction": correction, **({"bits": bits} if bits else {})})
    if settings["rank"] is not None and settings["rank"].mode == "auto" and budget is None:
        raise PlanError("rank 'auto' needs a budget; allowed: 0 < budget < 1 (fraction of parameters kept)")
    rules, overrides = filtered_rules(settings, towers, kinds, layers)
    return CompressionPlan(rules=rules, overrides=overrides, budget=budget)


def filtered_rules(settings: dict[str, Any], towers: Iterable[str] | str | None = None,
                   kinds: Iterable[str] | str | None = None, layers: Sequence[LayerInfo] | None = None,
                   ) -> tuple[tuple[Rule, ...], dict[str, dict[str, Any]]]:
    """(rules, overrides) giving ``settings`` to every layer of the towers × kinds given (None: any).

    With ``layers`` and a rank or bits in ``settings``, transposed matrices (which can be neither
    factorised nor quantised) get an override ``{"rank": null, "bits": null}`` (those of the two
    given), so the rules resolve on OpenCLIP models as written. A
    structured pattern (``channel``, ``head``) without ``kinds`` goes to its groups' leaders
    (mlp_in, attn_q), the only layers that take it.
    """
    if kinds is None and is_structured(settings.get("pattern") or ""):
        kinds = [LEADER_KIND[settings["pattern"]]]
    tower_list = [towers] if isinstance(towers, str) else list(towers or [None])
    kind_list = [kinds] if isinstance(kinds, str) else list(kinds or [None])
    rules = tuple(Rule(tower=t, kind=k, settings=settings) for t, k in product(tower_list, kind_list))
    overrides: dict[str, dict[str, Any]] = {}
    unfit = {key: None for key in ("rank", "bits") if settings.get(key) is not None}
    if layers is not None and unfit:
        overrides = {layer.name: dict(unfit) for layer in layers
                     if layer.transposed and any(rule_matches(rule, layer) for rule in rules)}
    return rules, overrides


def _dense_kept(out_f: int, in_f: int, setting: LayerPlan) -> int:
    s, nm = setting.sparsity, parse_nm(setting.pattern)
    if s == 0 or is_structured(setting.pattern):  # structured: the shape itself shrank (planned_shapes)
        return out_f * in_f
    if nm is not None:
        return out_f * in_f * nm[0] // nm[1]  # exact: check_layer made M divide in_features
    if setting.pattern == "row":
        return out_f * (in_f - round(s * in_f))  # round(s·n) pruned in every row
    return out_f * in_f - round(s * out_f * in_f)  # as torch's l1_unstructured counts


def _factor_kept(out_f: int, in_f: int, rank: int, setting: LayerPlan) -> int:
    s, pool = setting.sparsity, rank * (out_f + in_f)
    if s == 0 or is_structured(setting.pattern):
        return pool
    if setting.pattern == "row":  # B (out×r) and A (r×in), each pruned row by row
        return out_f * (rank - round(s * rank)) + rank * (in_f - round(s * in_f))
    if parse_nm(setting.pattern) is not None:
        raise PlanError(f"pattern {setting.pattern} cannot prune low-rank factors; allowed: 'unstructured' or 'row'")
    return pool - round(s * pool)


def layer_params_after(layer: LayerInfo, setting: LayerPlan, rank: int | None = None,
                       shape: tuple[int, int] | None = None) -> int | None:
    """Parameters stored after compression; None when the rank is unknown (energy/auto, no ``rank``).

    Factorised (rank r < mn/(m+n)): r(m+n), then pruned at s; otherwise the dense m·n, pruned at s.
    ``rank`` is the layer's actual rank where known; it replaces the spec's value. ``shape`` is the
    (m, n) the layer has once structured removals are done (``planned_shapes``; default: its shape now).
    """
    out_f, in_f = shape or layer.shape
    if not setting.selected:
        return out_f * in_f
    if setting.rank is not None:
        if rank is None and setting.rank.mode != "fixed":
            return None
        r = min(setting.rank.value if rank is None else rank, out_f, in_f)
        if r * (out_f + in_f) < out_f * in_f:
            return _factor_kept(out_f, in_f, r, setting)
    return _dense_kept(out_f, in_f, setting)


@dataclass(frozen=True)
class LayerCount:
    """One layer's parameter count before and (expected) after compression."""

    name: str
    before: int
    after: int | None  # None: rank chosen by energy, unknown before the SVD
    selected: bool
    estimated: bool = False  # auto rank: the budget's share, not an allocated rank
    shape: tuple[int, int] | None = None  # the planned (out, in) when structured removals change it


@dataclass(frozen=True)
class PlanSummary:
    """Expected parameter counts of a resolved plan, per layer and in total."""

    layers: tuple[LayerCount, ...]
    total_before: int
    total_after: int | None  # None when any layer's count is unknown
    selected_before: int
    selected_after: int | None
    removed_fraction: float | None  # 1 − selected_after / selected_before
    estimated: bool
    unknown: tuple[str, ...]  # layers whose count waits for the SVD (energy ranks)


def _auto_estimate(before: int, setting: LayerPlan, budget: float) -> int:
    # The allocator keeps about budget·mn across the auto layers; pruning then acts on what is kept.
    kept = round(budget * before)
    return kept - round(setting.sparsity * kept)


def summarize_plan(plan: CompressionPlan, layers: Sequence[LayerInfo],
                   ranks: Mapping[str, int] | None = None) -> PlanSummary:
    """Resolve the plan and count parameters; ``ranks`` gives actual ranks where known."""
    resolved = resolve_plan(plan, layers)
    shapes = planned_shapes(layers, resolved)
    ranks = ranks or {}
    counts = []
    for layer in layers:
        setting, rank, shape = resolved[layer.name], ranks.get(layer.name), shapes[layer.name]
        narrowed = shape != layer.shape
        auto = setting.selected and setting.rank is not None and setting.rank.mode == "auto" and rank is None
        after = (_auto_estimate(shape[0] * shape[1], setting, plan.budget) if auto  # type: ignore[arg-type]
                 else layer_params_after(layer, setting, rank, shape))
        # A partner that only narrows (mlp_out of a channel group) changes too: it counts as selected.
        counts.append(LayerCount(layer.name, layer.params, after, setting.selected or narrowed, auto,
                                 shape if narrowed else None))
    chosen = [c for c in counts if c.selected]
    unknown = tuple(c.name for c in counts if c.after is None)
    total_after = None if unknown else sum(c.after for c in counts)  # type: ignore[misc]
    selected_before = sum(c.before for c in chosen)
    selected_after = None if unknown else sum(c.after for c in chosen)  # type: ignore[misc]
    removed = None if selected_after is None else (
        1 - selected_after / selected_before if selected_before else 0.0)
    return PlanSummary(tuple(counts), sum(c.before for c in counts), total_after, selected_before,
                       selected_after, removed, any(c.estimated for c in counts), unknown)
