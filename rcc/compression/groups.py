"""Structured groups: the layers that must shrink together when hidden units or heads go.

Two kinds, both found from the layer inventory alone (tower, block, kind, shapes, heads), so
every adapter that lists its layers gets them without a per-model table:

- a **channel** group is one MLP: the ``mlp_in`` layer (the *leader*: the plan's amount is set
  there) produces H hidden units, the ``mlp_out`` layer of the same tower and block consumes them.
  Removing unit j removes row j of mlp_in (and its bias) and column j of mlp_out.
- a **head** group is one attention: ``attn_q`` (the leader), ``attn_k`` and ``attn_v`` produce h
  heads of d_h rows each, ``attn_out`` consumes their concatenation. Removing head i removes
  rows i·d_h … (i+1)·d_h − 1 of q, k and v and the same columns of the output projection.

Within a (tower, block) the members are paired by shape (a consumer's inputs are its producers'
outputs) and, where a block holds several attentions (BLIP's decoder: self- and
cross-attention), by the longest common name prefix. A layer whose partners cannot be found
is in no group; plans refuse structured patterns on it.

Amounts are fractions of the *dense* units (before any structured pruning): sparsity s removes
round(s · U) of the U dense units, as magnitude pruning counts entries.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from rcc.compression.plan_rules import LEADER_KIND, STRUCTURED_PATTERNS, PlanError
from rcc.schema.layers import LayerInfo

GroupKind = Literal["channel", "head"]


@dataclass(frozen=True)
class StructuredGroup:
    """Layers that lose units together: ``producers`` lose rows, ``consumer`` loses columns."""

    kind: GroupKind
    tower: str
    block: int | None
    leader: str  # carries the plan's amount (mlp_in, attn_q)
    producers: tuple[str, ...]  # (mlp_in,) or (q, k, v)
    consumer: str  # mlp_out or attn_out
    units: int  # hidden units or heads now
    dense_units: int  # before any structured pruning
    unit_width: int  # rows / columns per unit: 1 for channels, d_h for heads

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.producers, self.consumer)

    @property
    def unit_name(self) -> str:
        return "hidden units" if self.kind == "channel" else "heads"

    def kept_units(self, sparsity: float) -> int:
        """U − round(s · U) on the dense units."""
        return self.dense_units - round(sparsity * self.dense_units)


def _common_prefix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def _nearest(anchor: LayerInfo, candidates: Iterable[LayerInfo]) -> LayerInfo | None:
    ranked = sorted(candidates, key=lambda c: (-_common_prefix(anchor.name, c.name), c.name))
    return ranked[0] if ranked else None


def structured_groups(layers: Sequence[LayerInfo]) -> list[StructuredGroup]:
    """Every channel and head group of an inventory, in inventory order of their leaders."""
    by_block: dict[tuple[str, int | None], list[LayerInfo]] = {}
    for layer in layers:
        if layer.block is not None and not layer.transposed:
            by_block.setdefault((layer.tower, layer.block), []).append(layer)
    groups: list[StructuredGroup] = []
    for (tower, block), members in by_block.items():
        kinds: dict[str, list[LayerInfo]] = {}
        for layer in members:
            kinds.setdefault(layer.kind, []).append(layer)
        for mlp_in in kinds.get("mlp_in", []):
            mlp_out = _nearest(mlp_in, [c for c in kinds.get("mlp_out", []) if c.shape[1] == mlp_in.shape[0]
                                        and c.original_shape[1] == mlp_in.original_shape[0]])
            if mlp_out is not None:
                groups.append(StructuredGroup("channel", tower, block, mlp_in.name, (mlp_in.name,), mlp_out.name,
                                              mlp_in.shape[0], mlp_in.original_shape[0], 1))
        for q in kinds.get("attn_q", []):
            group = _head_group(tower, block, q, kinds)
            if group is not None:
                groups.append(group)
    order = {layer.name: i for i, layer in enumerate(layers)}
    return sorted(groups, key=lambda g: order[g.leader])


def _head_group(tower: str, block: int, q: LayerInfo, kinds: Mapping[str, list[LayerInfo]]) -> StructuredGroup | None:
    if not q.heads or q.shape[0] % q.heads:
        return None
    width = q.shape[0] // q.heads
    k = _nearest(q, [c for c in kinds.get("attn_k", []) if c.shape[0] == q.shape[0]])
    v = _nearest(q, [c for c in kinds.get("attn_v", []) if c.shape[0] == q.shape[0]])
    out = _nearest(q, [c for c in kinds.get("attn_out", []) if c.shape[1] == q.shape[0]])
    if k is None or v is None or out is None or q.original_shape[0] % width:
        return None
    return StructuredGroup("head", tower, block, q.name, (q.name, k.name, v.name), out.name,
                           q.heads, q.original_shape[0] // width, width)


def groups_by_leader(layers: Sequence[LayerInfo]) -> dict[str, StructuredGroup]:
    return {group.leader: group for group in structured_groups(layers)}


def is_structured(pattern: str) -> bool:
    return pattern in STRUCTURED_PATTERNS


def check_structured(layers: Sequence[LayerInfo], resolved: Mapping, origins: Mapping[str, Mapping[str, str]]) -> None:
    """Refuse structured patterns the model cannot take: no partners, a locked partner, no unit left."""
    groups = groups_by_leader(layers)
    for layer in layers:
        plan = resolved[layer.name]
        if not (plan.selected and is_structured(plan.pattern)):
            continue
        where, set_by = f"layer {layer.name!r}", origins[layer.name]["pattern"]
        group = groups.get(layer.name)
        if group is None or group.kind != plan.pattern:
            raise PlanError(f"{where}: pattern {plan.pattern} finds no {LEADER_KIND[plan.pattern]} group around it "
                            f"(set by {set_by}); allowed: {_group_hint(plan.pattern)}")
        for name in group.members:
            if resolved[name].locked:
                raise PlanError(f"{where}: pattern {plan.pattern} would narrow {name!r}, locked by "
                                f"{origins[name]['locked']}; allowed: unlock it, or lock {layer.name!r} too")
        if plan.sparsity > 0 and group.kept_units(plan.sparsity) < 1:
            top = (group.dense_units - 0.5) / group.dense_units
            raise PlanError(f"{where}: sparsity {plan.sparsity!r} with pattern {plan.pattern} removes all "
                            f"{group.dense_units} {group.unit_name} (round({plan.sparsity!r} · {group.dense_units}) = "
                            f"{round(plan.sparsity * group.dense_units)}; set by {origins[layer.name]['sparsity']}); "
                            f"allowed: sparsity < {top:.4g}, which keeps at least one")


def _group_hint(pattern: str) -> str:
    if pattern == "channel":
        return "'channel' on an mlp_in layer whose block has the matching mlp_out"
    return "'head' on an attn_q layer whose block has attn_k, attn_v and attn_out, with a known head count"


def planned_groups(layers: Sequence[LayerInfo], resolved: Mapping) -> list[tuple[StructuredGroup, object]]:
    """(group, leader plan) for every group whose leader the plan prunes with its structured pattern."""
    out = []
    for group in structured_groups(layers):
        plan = resolved.get(group.leader)
        if plan is not None and plan.selected and plan.sparsity > 0 and plan.pattern == group.kind:
            out.append((group, plan))
    return out


def partners(layers: Sequence[LayerInfo], resolved: Mapping) -> set[str]:
    """Layers a run changes besides the selected ones: the other members of planned groups."""
    return {name for group, _ in planned_groups(layers, resolved) for name in group.members} - {
        name for name, plan in resolved.items() if plan.selected}


def planned_shapes(layers: Sequence[LayerInfo], resolved: Mapping) -> dict[str, tuple[int, int]]:
    """Each layer's (out, in) shape once the plan's structured removals are done (smaller only)."""
    shapes = {layer.name: layer.shape for layer in layers}
    for group, plan in planned_groups(layers, resolved):
        kept = min(group.units, group.kept_units(plan.sparsity)) * group.unit_width
        for name in group.producers:
            shapes[name] = (kept, shapes[name][1])
        shapes[group.consumer] = (shapes[group.consumer][0], kept)
    return shapes
