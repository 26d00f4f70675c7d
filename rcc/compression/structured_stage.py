"""Structured removal, the first step of the DARE stage: whole hidden units and heads go.

For every channel / head group (rcc.compression.groups) whose leader the plan gives pattern
``channel`` / ``head`` and sparsity s, at strength f the group keeps U − round(f·s·U) of its U
dense units (never fewer than one; a group already as narrow is left alone). Units are ranked by
``unit_scores`` (group magnitude, or the activation-aware error of removing each unit) and the
group is made physically narrower (``surgery.remove_units``): rows of q/k/v or mlp_in, columns
of the output projection or mlp_out, the attention's head count.

With ``correction`` on the leader, the consumer is reconstructed at once, in closed form
(``alphaedit.removal_fit``): its kept columns are refitted by ridge least squares so that its
outputs on the calibration inputs match what it computed before the removal, and the removed
units' mean contribution moves into its bias; with ``preserve`` the refit is confined to the
null space of the preserved inputs K₀, as every AlphaEdit correction is.

Why here and not in the AlphaEdit stage: (1) the refit needs exactly the statistics the removal
just used (the consumer's inputs, including the removed units), which no longer exist once the
units are gone; (2) the cascade evaluates each stage and backs it off: judged without its refit,
a removal the refit makes cheap would be backed off for nothing; (3) removal changes the
consumer's shape, so the AlphaEdit stage's dense references no longer describe it — that stage
skips layers whose shape changed in the run. The closed form lives with the other corrections
in ``alphaedit``; the shape changes live in ``surgery``.

How many units each group loses is ``unit_allocation``'s: as planned (``uniform``), or the
same total spread over a tower's groups by measured cost (``allocation="global"``).

Statistics are collected afresh on the model as it is (one pass over the calibration data per
attempt), so a group narrowed by an earlier step or run is scored and refitted in its own
coordinates; the refit target is then what the consumer computed just before this step. With
``sequential`` the groups are processed block by block in depth order, each block's statistics
collected after the blocks before it were narrowed and refitted. That did not help on rcc-mini's
text tower (50 % of heads: mean cosine 0.874 sequential against 0.902; 50 % of MLP channels:
0.938 either way; a variant fitting the dense block's outputs from the compressed inputs gave
0.870), so it stays off by default.
"""

from __future__ import annotations

import torch

from rcc.compression import alphaedit
from rcc.compression.calibration import InputStats, collect_input_stats
from rcc.compression.correction_stage import blocks_in_depth_order
from rcc.compression.groups import StructuredGroup, planned_groups
from rcc.compression.layers import LowRankLinear, dense_weight, get_mask, is_quantized_layer, layer_module
from rcc.compression.stage_context import LayerChange, StageContext
from rcc.compression.surgery import check_mlp_container, remove_units, unit_index
from rcc.compression.unit_allocation import global_kept, relative_costs, uniform_kept
from rcc.compression.unit_scores import activation_scores, magnitude_scores, units_to_keep

STAGE = "dare"


def run_structured(ctx: StageContext, fraction: float) -> list[LayerChange]:
    """Narrow every planned channel / head group to ``fraction`` of its planned removal."""
    index = ctx.model.layer_index
    module = ctx.model.module
    # A group with an int8 member is final, as every int8 layer is: its units stay.
    planned = [(group, plan) for group, plan in planned_groups(list(index.values()), ctx.plans)
               if not any(is_quantized_layer(module, index[name]) for name in group.members)]
    if not planned:
        return []
    needs_gram = any(plan.correction or group.unit_width > 1 for group, plan in planned)
    wants_preserved = any(plan.correction for _, plan in planned)
    first = None  # statistics of the model as it is, when the allocation already needed them
    if ctx.options.allocation == "global":
        first = _consumer_stats(ctx, [index[group.consumer] for group, _ in planned], needs_gram, wants_preserved)
        kept = _global_allocation(ctx, planned, fraction, first[0])
    else:
        kept = {group.leader: uniform_kept(group, plan.sparsity, fraction) for group, plan in planned}
    todo = [(group, plan, kept[group.leader]) for group, plan in planned if kept[group.leader] < group.units]
    if not todo:
        return []
    batches = [todo]
    if ctx.options.sequential and ctx.calibration is not None:
        consumers = blocks_in_depth_order([index[group.consumer] for group, _, _ in todo])
        order = {layer.name: i for i, block in enumerate(consumers) for layer in block}
        batches = [[item for item in todo if order[item[0].consumer] == i] for i in range(len(consumers))]
    changes, done = [], 0
    for number, batch in enumerate(batches):
        index = ctx.model.layer_index
        # Fresh statistics per batch (sequential: after the blocks before it changed); the first batch
        # sees the model the allocation measured, so it reuses those.
        stats, preserved = first if (first is not None and number == 0) else _consumer_stats(
            ctx, [index[group.consumer] for group, _, _ in batch], needs_gram, wants_preserved)
        for group, plan, kept_count in batch:
            ctx.tick(STAGE, done, len(todo), group.leader)
            done += 1
            changes.append(_narrow(ctx, group, plan, kept_count, stats.get(group.consumer),
                                   preserved.get(group.consumer)))
    return changes


def _global_allocation(ctx: StageContext, planned, fraction: float, stats: dict[str, InputStats]) -> dict[str, int]:
    """Leader → units kept, each (tower, kind) pool spread by relative cost (``unit_allocation``)."""
    index = ctx.model.layer_index
    pools: dict[tuple[str, str], list] = {}
    for group, plan in planned:
        pools.setdefault((group.tower, group.kind), []).append((group, plan))
    kept = {}
    for members in pools.values():
        costs = {}
        for group, plan in members:
            consumer = dense_weight(ctx.model.module, index[group.consumer]).detach()
            scores, _ = _scores(ctx, group, plan, consumer, stats.get(group.consumer))
            costs[group.leader] = relative_costs(scores, consumer, stats.get(group.consumer), plan.correction)
        kept.update(global_kept([(group, plan.sparsity) for group, plan in members], fraction, costs))
    return kept


def _consumer_stats(ctx: StageContext, consumers, needs_gram: bool,
                    wants_preserved: bool) -> tuple[dict[str, InputStats], dict[str, InputStats]]:
    """Fresh input statistics of the consumers (and of K₀ when preserving), or the run's own if no data."""
    if ctx.calibration is None:
        return {layer.name: stats for layer in consumers if (stats := ctx.input_stats(layer)) is not None}, {}
    stats = collect_input_stats(ctx.model, consumers, ctx.calibration, gram=needs_gram, cancel=ctx.cancel)
    preserved = {}
    if wants_preserved and ctx.options.preserve and ctx.preserved_data is not None:
        preserved = collect_input_stats(ctx.model, consumers, ctx.preserved_data, gram=True, cancel=ctx.cancel)
    return stats, preserved


def _scores(ctx: StageContext, group: StructuredGroup, plan, consumer: torch.Tensor,
            stats: InputStats | None) -> tuple[torch.Tensor, str]:
    """Each unit's worth (higher = keep) and how it was judged."""
    if plan.method == "wanda" and stats is not None:
        return activation_scores(consumer, stats, group.unit_width, centred=plan.correction), "activation-aware"
    index = ctx.model.layer_index
    producers = [dense_weight(ctx.model.module, index[name]).detach() for name in group.producers]
    return magnitude_scores(producers, consumer, group.unit_width), "group magnitude"


@torch.no_grad()
def _narrow(ctx: StageContext, group: StructuredGroup, plan, kept_count: int, stats: InputStats | None,
            preserved: InputStats | None) -> LayerChange:
    module = ctx.model.module
    index = ctx.model.layer_index
    if group.kind == "channel":
        check_mlp_container(module, group, index)
    consumer_layer = index[group.consumer]
    consumer = dense_weight(module, consumer_layer).detach()
    scores, how = _scores(ctx, group, plan, consumer, stats)
    kept = units_to_keep(scores, kept_count)
    fit = _fit(ctx, group, plan, consumer_layer, consumer, kept, stats, preserved) if plan.correction else None
    remove_units(module, group, index, kept)
    what = f"{group.units} → {kept_count} {group.unit_name} ({how} scores"
    if fit is not None:
        _write_fit(module, consumer_layer, fit)
        what += f"; {group.consumer} refitted: calibration error {fit.before:.4g} → {fit.after:.4g}"
    return LayerChange(group.leader, what + ")")


def _fit(ctx: StageContext, group: StructuredGroup, plan, consumer_layer, consumer: torch.Tensor,
         kept: torch.Tensor, stats: InputStats | None, preserved: InputStats | None) -> alphaedit.RemovalFit | None:
    """The consumer's refit on its kept columns; None without calibration statistics (nothing to fit on)."""
    if stats is None or stats.gram is None:
        return None
    columns = unit_index(kept, group.unit_width).to(consumer.device)
    keep = torch.zeros(consumer.shape[1], dtype=torch.bool, device=consumer.device)
    keep[columns] = True
    child = layer_module(ctx.model.module, consumer_layer)
    gram = stats.gram.to(consumer.device)
    # λ relative to the kept inputs' mean centred energy, as AlphaEdit's λ is to tr(C)/n.
    lam = ctx.options.ridge * float(torch.diagonal(stats.centred_gram(consumer.device))[columns].clamp_min(0).mean())
    projector = None
    if ctx.options.preserve and preserved is not None and preserved.gram is not None:
        c0 = preserved.gram.to(consumer.device)[columns][:, columns]
        projector = alphaedit.null_space_projector(c0, ctx.options.null_threshold)
    mask = get_mask(ctx.model.module, consumer_layer)
    has_bias = getattr(child, "bias", None) is not None
    return alphaedit.removal_fit(
        consumer, keep, gram, stats.sums if has_bias else None, stats.count, lam, projector,
        mask=None if mask is None else mask[:, columns],
        # A factorised consumer keeps its factors: only the bias takes the removed units' mean.
        refit=not isinstance(child, LowRankLinear) and not (projector is not None and projector.dim == 0))


@torch.no_grad()
def _write_fit(module, consumer_layer, fit: alphaedit.RemovalFit) -> None:
    child = module.get_submodule(consumer_layer.param.rpartition(".")[0])
    if not isinstance(child, LowRankLinear):
        weight = fit.weight.to(child.weight.dtype)
        mask = child._buffers.get("weight_mask")
        child.weight.copy_(weight if mask is None else weight * mask)
    if child.bias is not None:
        child.bias.add_(fit.bias_shift.to(child.bias.dtype))
