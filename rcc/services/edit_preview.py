"""An ``edit_layers`` op before it runs: the plan it makes, and what the edited layers would store.

The op's handler builds its plan with ``edited_plan`` (rcc.compression.plan_edits), and the app's
layer editor previews an edit with ``preview_edit`` (checked as the op checks it, counted as
``summarize_plan`` counts), so the editor never promises what the engine would not do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rcc.compression.plan_edits import edited_plan

if TYPE_CHECKING:
    from rcc.compression.plan import CompressionPlan, PlanSummary
    from rcc.compression.plan_rules import LayerPlan
    from rcc.schema.layers import LayerInfo


INT8_BYTES = 1  # an int8 value (rcc.compression.int8)
SCALE_BYTES = 4  # its row's float32 scale


@dataclass(frozen=True)
class EditPreview:
    """The plan after the edit, each layer's resolved setting, its expected counts, and the budget the op
    would set (None: unchanged)."""

    plan: CompressionPlan
    settings: dict[str, LayerPlan]
    summary: PlanSummary
    budget: float | None

    def planned_bytes(self, layers: Sequence[LayerInfo], names: Sequence[str], bytes_per_value: int = 4) -> int | None:
        """Bytes the compressed export would write for ``names`` once the plan ran (None: a rank known only
        after the SVD)."""
        wanted = set(names)
        counts = {count.name: count for count in self.summary.layers if count.name in wanted}
        total = 0
        for layer in layers:
            if layer.name in wanted:
                count = counts.get(layer.name)
                size = planned_bytes(layer, self.settings[layer.name], None if count is None else count.after,
                                     bytes_per_value, None if count is None else count.shape)
                if size is None:
                    return None
                total += size
        return total

    def with_partners(self, layers: Sequence[LayerInfo], names: Sequence[str]) -> tuple[str, ...]:
        """``names`` and, after them, the layers that narrow with them: the other members of the channel /
        head groups whose leader is among ``names`` and which the plan prunes (their widths shrink too)."""
        from rcc.compression.groups import planned_groups

        chosen = set(names)
        extra = [member for group, _ in planned_groups(layers, self.settings) if group.leader in chosen
                 for member in group.members if member not in chosen]
        return (*names, *dict.fromkeys(extra))


def preview_edit(plan: CompressionPlan, layers: Sequence[LayerInfo], names: Sequence[str],
                 settings: Mapping[str, Any], reset: bool = False, budget: Any = None) -> EditPreview:
    """What ``EditLayers(names, settings, reset, budget)`` would make; raises ``RccError`` as the op would.

    With nothing to change (no setting, no reset, no budget) it previews the plan as it is.
    """
    from rcc.compression.plan import resolve_plan, summarize_plan
    from rcc.session.ops import EditLayers

    if settings or reset or budget is not None:
        op = EditLayers(layers=tuple(names), settings=dict(settings), reset=reset, budget=budget)
        settings, budget = op.settings, op.budget
    new = edited_plan(plan, names, settings, reset, budget)
    return EditPreview(new, resolve_plan(new, layers), summarize_plan(new, layers), budget)


def planned_bytes(layer: LayerInfo, setting: LayerPlan, values_after: int | None,
                  bytes_per_value: int = 4, shape: tuple[int, int] | None = None) -> int | None:
    """Bytes the compressed export would write for the layer once the plan ran: kept values plus masks.

    A pruned layer keeps a mask over what it stores (m·n entries, or r(m + n) when factorised),
    packed 8 per byte, as ``rcc.compression.layers.stored_bytes`` counts a compressed layer.
    Structured patterns (``channel``, ``head``) mask nothing: the layer itself is narrower
    (``shape``, its planned (m, n); default its shape now), and only its values are stored.
    With bits 8 each value is one byte, plus a float32 scale per stored row (m, or m + r when
    factorised); SmoothQuant's n input scales are the op's choice, not the plan's, and not in it.
    """
    from rcc.compression.groups import is_structured

    if values_after is None:
        return None
    masked = setting.selected and setting.sparsity > 0 and not is_structured(setting.pattern)
    out_f, in_f = shape or layer.shape
    if not masked:
        entries = values_after
    else:
        entries = out_f * in_f if setting.rank is None else round(values_after / (1 - setting.sparsity))
    masks = (entries + 7) // 8 if masked else 0
    if setting.bits is None:
        return values_after * bytes_per_value + masks
    rows = out_f if setting.rank is None else out_f + round(entries / (out_f + in_f))
    return values_after * INT8_BYTES + rows * SCALE_BYTES + masks
