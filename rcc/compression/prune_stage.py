"""The DARE stage on a model: prune (or drop-and-rescale) each planned layer to its sparsity.

At strength f the target sparsity is f·s. Pruning is progressive: a layer already at
sparsity s₀ keeps its mask and loses more entries (magnitude and Wanda rank the existing
zeros lowest; DARE drops p = (f·s − s₀)/(1 − s₀) of what is left and rescales by 1/(1 − p),
so the expected value of every weight is kept across steps). N:M patterns cannot be
softened: they apply at full strength or not at all (f < 1 leaves them for later).
A factorised layer has its two factors pruned instead.
Structured patterns (``channel``, ``head``) go first, in ``structured_stage``: whole units are
removed and the layers become narrower; the other patterns then prune what is left.
"""

from __future__ import annotations


import torch

from rcc.compression import dare
from rcc.compression.layers import (
    dense_weight, get_mask, layer_form, layer_module, mask_sparsity, set_dense_weight, set_factor_masks, set_mask,
)
from rcc.compression.groups import is_structured
from rcc.compression.stage_context import LayerChange, StageContext

STAGE = "dare"



def run_prune_stage(ctx: StageContext, fraction: float) -> list[LayerChange]:
    """Prune every planned layer with sparsity > 0 to ``fraction`` of its target."""
    from rcc.compression.structured_stage import run_structured

    changes = run_structured(ctx, fraction)
    todo = [layer for layer in ctx.float_layers() if ctx.plans[layer.name].sparsity > 0
            and not is_structured(ctx.plans[layer.name].pattern)]
    for i, layer in enumerate(todo):
        ctx.tick(STAGE, i, len(todo), layer.name)
        plan = ctx.plans[layer.name]
        nm = dare.parse_nm(plan.pattern)
        if nm is not None and fraction < 1.0:
            continue
        target = plan.sparsity * fraction if nm is None else 1 - nm[0] / nm[1]
        generator = ctx.generator(STAGE, layer.name, fraction)
        if layer_form(ctx.model.module, layer) == "factorised":
            changes.append(_prune_factors(ctx, layer, plan, target, generator))
            continue
        change = _prune_dense(ctx, layer, plan, target, generator)
        if change:
            changes.append(change)
    return changes


@torch.no_grad()
def _prune_dense(ctx, layer, plan, target: float, generator) -> LayerChange | None:
    module = ctx.model.module
    weight = dense_weight(module, layer).detach()
    old = get_mask(module, layer)
    current = mask_sparsity(old)
    if target <= current + 1e-9:
        return None
    stats = ctx.input_stats(layer)
    base = None if ctx.base is None or plan.method != "dare" else ctx.base.get(layer.name)
    if base is not None:
        # DARE on the delta: the weights stay dense (dropped entries fall back to the base), so
        # there is no pruning mask to keep; the expected delta is kept at every step.
        base = base.to(weight.device)
        dropped = (weight == base).float().mean().item()  # deltas an earlier step already dropped
        if target <= dropped + 1e-9:
            return None
        rate = (target - dropped) / (1 - dropped)
        result = dare.prune(weight, rate, "dare", plan.pattern, generator=generator, base=base)
        set_dense_weight(module, layer, result.weight)
        return LayerChange(layer.name, f"DARE on the delta to the base, drop rate {target:.3f}")
    if plan.method == "dare":
        rate = (target - current) / (1 - current)
        result = dare.prune(weight, rate, "dare", plan.pattern, generator=generator)
    else:
        # Wanda needs calibration inputs; a layer none reached (a bare projection) falls back to magnitude.
        norms = stats.norms.to(weight.device) if (plan.method == "wanda" and stats is not None) else None
        method = "magnitude" if plan.method == "wanda" and norms is None else plan.method
        result = dare.prune(weight, target, method, plan.pattern, input_norms=norms)
    keep = result.mask if old is None else (result.mask & old)
    set_dense_weight(module, layer, result.weight)
    set_mask(module, layer, keep)
    return LayerChange(layer.name, f"sparsity {mask_sparsity(keep):.3f} ({plan.method}, {plan.pattern})")


@torch.no_grad()
def _prune_factors(ctx, layer, plan, target: float, generator) -> LayerChange:
    """Prune ``up`` and ``down`` of a factorised layer at the same sparsity (magnitude or DARE)."""
    low_rank = layer_module(ctx.model.module, layer)
    masks = []
    for factor in (low_rank.up, low_rank.down):
        if plan.method == "dare":
            old = getattr(low_rank, "up_mask" if factor is low_rank.up else "down_mask", None)
            current = mask_sparsity(old)
            rate = max(0.0, (target - current) / (1 - current))
            result = dare.dare(factor.detach(), rate, generator)
            factor.copy_(result.weight)
            masks.append(result.mask if old is None else result.mask & old)
        else:
            masks.append(dare.magnitude_mask(factor.detach(), target))
    set_factor_masks(ctx.model.module, layer, masks[0], masks[1])
    return LayerChange(layer.name, f"factors pruned to sparsity {target:.3f}")
