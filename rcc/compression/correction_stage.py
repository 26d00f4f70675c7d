"""The AlphaEdit stage on a model: correct each compressed layer towards its dense outputs.

For a layer with dense weight W, compressed W_c and calibration inputs X (C = X Xᵀ), find Δ
minimising ‖(W_c + Δ)X − WX‖² + λ‖Δ‖², with Δ restricted to the null space of the preserved
inputs K₀ (AlphaEdit: outputs on K₀ do not move) and to the layer's structure (pruned entries
stay zero; factorised layers update their factors and keep their rank). λ = ridge · tr(C)/n.
Closed forms throughout, except a masked layer under the null-space constraint, which takes
``correction_steps`` of projected gradient descent.
With ``sequential`` the layers are corrected block by block, each block on the
inputs that reach it through the already compressed and corrected blocks before it (as
SparseGPT does), so errors do not pile up along the depth: X is then the compressed model's
input to the layer and the target is the dense weight applied to it, ‖(W_c + Δ)X − WX‖².
By default X comes from the dense model and the target is the dense output, which kept
rcc-mini's text embeddings closer to dense than the sequential variant did
(``python -m bench.quality --budgets 0.5 --scopes text --methods rcc,rcc-seq``).
Layers no calibration input reaches are left as they are, and so are layers whose shape
changed in this run (structured removal refits them itself: ``structured_stage``).
"""

from __future__ import annotations

import torch

from rcc.compression import alphaedit
from rcc.compression.calibration import collect_input_stats
from rcc.compression.layers import dense_weight, get_mask, layer_form, layer_module, set_dense_weight
from rcc.compression.stage_context import LayerChange, StageContext

STAGE = "alphaedit"


def run_correction_stage(ctx: StageContext, fraction: float = 1.0) -> list[LayerChange]:
    """Correct every planned layer with ``correction`` on; ``fraction`` scales λ up when < 1 (gentler)."""
    todo = [layer for layer in ctx.float_layers()
            if ctx.plans[layer.name].correction and (stats := ctx.input_stats(layer)) is not None
            and stats.gram is not None and ctx.dense_fits(layer)]
    sequential = ctx.options.sequential and ctx.calibration is not None
    changes = []
    done = 0
    for group in (blocks_in_depth_order(todo) if sequential else [todo]):
        grams = {layer.name: ctx.stats[layer.name].gram for layer in group}
        if sequential:
            fresh = collect_input_stats(ctx.model, group, ctx.calibration, gram=True, cancel=ctx.cancel)
            grams.update({name: stats.gram for name, stats in fresh.items()})
        for layer in group:
            ctx.tick(STAGE, done, len(todo), layer.name)
            done += 1
            change = _correct(ctx, layer, grams[layer.name], fraction)
            if change:
                changes.append(change)
    return changes


def blocks_in_depth_order(layers) -> list[list]:
    """Layers grouped by (tower, block), in forward order: blocks ascending, projections last."""
    groups: dict[tuple, list] = {}
    for layer in layers:
        groups.setdefault((layer.tower, layer.block is None, layer.block or 0), []).append(layer)
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0] != "vision", k))]


@torch.no_grad()
def _correct(ctx: StageContext, layer, gram: torch.Tensor, fraction: float) -> LayerChange | None:
    module = ctx.model.module
    form = layer_form(module, layer)
    if form == "dense":
        return None  # nothing was compressed: nothing to restore
    current = dense_weight(module, layer).detach()
    target = ctx.dense[layer.name].to(current.device)
    gram = gram.to(current.device)
    lam = ctx.options.ridge * float(torch.diagonal(gram).mean()) / max(fraction, 1e-6)
    projector = _projector(ctx, layer.name, current.device)
    if projector is not None and projector.dim == 0:
        return None  # the preserved inputs span everything: any update would move them
    low_rank = layer_module(module, layer) if form == "factorised" else None
    saved = [t.detach().clone() for t in ((low_rank.up, low_rank.down) if low_rank is not None else (current,))]
    mask = get_mask(module, layer)
    if form == "factorised":
        # The guard compares two errors: float32 is precise enough and halves the cost of each.
        before = alphaedit.reconstruction_error(target, current, gram, dtype=torch.float32)
        # B's mask goes into the fit, which zeroes the step off it and measures what is left.
        fit = alphaedit.lowrank_fit(target, low_rank.up.detach(), low_rank.down.detach(), gram, lam, projector,
                                    keep=getattr(low_rank, "down_mask", None))
        low_rank.up.copy_(fit.up)
        low_rank.down.copy_(fit.down)
        after = before - fit.gain
    elif projector is None:
        fit = alphaedit.masked_fit(target, current, mask, gram, lam)
        set_dense_weight(module, layer, current + fit.delta)
        before, after = fit.before, fit.after
    else:
        # Mask and null space together make every row its own eigenproblem (minutes per layer):
        # projected gradient descent reaches the same objective far cheaper.
        before = alphaedit.reconstruction_error(target, current, gram, dtype=torch.float32)
        delta = alphaedit.gradient_correction(target, current, gram, lam, mask=mask,
                                              projector=projector, steps=ctx.options.correction_steps).delta
        set_dense_weight(module, layer, current + delta)
        after = alphaedit.reconstruction_error(target, dense_weight(module, layer).detach(), gram,
                                               dtype=torch.float32)
    if after > before:
        # Only the unconstrained closed forms guarantee f(Δ*) ≤ f(0): re-zeroing pruned factor
        # entries after the B step, or alternating mask and null-space projections, can overshoot.
        # Keep the layer as it was rather than make it worse.
        if low_rank is not None:
            low_rank.up.copy_(saved[0])
            low_rank.down.copy_(saved[1])
        else:
            set_dense_weight(module, layer, saved[0])
        return None
    return LayerChange(layer.name, f"reconstruction error {before:.4g} → {after:.4g}")


def _projector(ctx: StageContext, name: str, device) -> alphaedit.NullSpace | None:
    if not ctx.options.preserve:
        return None
    preserved = ctx.preserved.get(name)
    if preserved is None or preserved.gram is None:
        return None
    return alphaedit.null_space_projector(preserved.gram.to(device), ctx.options.null_threshold)
