"""The AlphaEdit stage on a model: correct each compressed layer towards its dense outputs.

For a layer with dense weight W, compressed W_c and calibration inputs X (C = X Xᵀ), find Δ
minimising ‖(W_c + Δ)X − WX‖² + λ‖Δ‖², with Δ restricted to the null space of the preserved
inputs K₀ (AlphaEdit: outputs on K₀ do not move) and to the layer's structure (pruned entries
stay zero; factorised layers update their factors and keep their rank). λ = ridge · tr(C)/n.
Closed forms throughout, except a masked layer under the null-space constraint, which takes
``correction_steps`` of projected gradient descent.
Inputs come from the dense model, so the targets are the dense layer's outputs on them.
Layers no calibration input reaches are left as they are.
"""

from __future__ import annotations

import torch

from rcc.compression import alphaedit
from rcc.compression.layers import dense_weight, get_mask, layer_form, layer_module, reapply_masks, set_dense_weight
from rcc.compression.prune_stage import LayerChange
from rcc.compression.stage_context import StageContext

STAGE = "alphaedit"


def run_correction_stage(ctx: StageContext, fraction: float = 1.0) -> list[LayerChange]:
    """Correct every planned layer with ``correction`` on; ``fraction`` scales λ up when < 1 (gentler)."""
    todo = [layer for layer in ctx.layers()
            if ctx.plans[layer.name].correction and layer.name in ctx.stats and ctx.stats[layer.name].gram is not None]
    changes = []
    for i, layer in enumerate(todo):
        ctx.tick(STAGE, i, len(todo), layer.name)
        change = _correct(ctx, layer, fraction)
        if change:
            changes.append(change)
    return changes


@torch.no_grad()
def _correct(ctx: StageContext, layer, fraction: float) -> LayerChange | None:
    module = ctx.model.module
    form = layer_form(module, layer)
    if form == "dense":
        return None  # nothing was compressed: nothing to restore
    current = dense_weight(module, layer).detach()
    target = ctx.dense[layer.name].to(current.device)
    gram = ctx.stats[layer.name].gram.to(current.device)
    lam = ctx.options.ridge * float(torch.diagonal(gram).mean()) / max(fraction, 1e-6)
    projector = _projector(ctx, layer.name, current.device)
    if projector is not None and projector.dim == 0:
        return None  # the preserved inputs span everything: any update would move them
    before = alphaedit.reconstruction_error(target, current, gram)
    if form == "factorised":
        low_rank = layer_module(module, layer)
        up, down = alphaedit.lowrank_correction(target, low_rank.up.detach(), low_rank.down.detach(), gram, lam,
                                                projector)
        low_rank.up.copy_(up)
        low_rank.down.copy_(down)
        reapply_masks(low_rank)
    elif projector is None:
        delta = alphaedit.masked_correction(target, current, get_mask(module, layer), gram, lam)
        set_dense_weight(module, layer, current + delta)
    else:
        # Mask and null space together make every row its own eigenproblem (minutes per layer):
        # projected gradient descent reaches the same objective far cheaper.
        delta = alphaedit.gradient_correction(target, current, gram, lam, mask=get_mask(module, layer),
                                              projector=projector, steps=ctx.options.correction_steps).delta
        set_dense_weight(module, layer, current + delta)
    after = alphaedit.reconstruction_error(target, dense_weight(module, layer).detach(), gram)
    return LayerChange(layer.name, f"reconstruction error {before:.4g} → {after:.4g}")


def _projector(ctx: StageContext, name: str, device) -> alphaedit.NullSpace | None:
    if not ctx.options.preserve:
        return None
    preserved = ctx.preserved.get(name)
    if preserved is None or preserved.gram is None:
        return None
    return alphaedit.null_space_projector(preserved.gram.to(device), ctx.options.null_threshold)
