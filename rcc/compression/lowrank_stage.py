"""The Nullu stage on a model: truncated SVD of each planned layer, factorised when it saves.

At strength f: a fixed rank r moves from full rank k = min(m, n) to k − f(k − r); an energy
fraction e to 1 − f(1 − e); the global ``auto`` budget b (fraction of the auto layers'
parameters kept) to 1 − f(1 − b), allocated across layers by ``nullu.allocate_ranks``.
A rank that would not store fewer numbers than the dense matrix (r ≥ mn/(m + n)) leaves the
layer untouched: a rank-limited dense matrix costs accuracy and saves nothing.
With calibration inputs the SVD is activation-aware (SVD-LLM whitening).
A layer that was pruned before it is factorised keeps its sparsity on the two factors.
"""

from __future__ import annotations

import math

import torch

from rcc.compression import dare, nullu
from rcc.compression.layers import dense_weight, factorise, layer_form, layer_module, layer_sparsity, set_factor_masks
from rcc.compression.stage_context import LayerChange, StageContext

STAGE = "nullu"


def run_lowrank_stage(ctx: StageContext, fraction: float) -> list[LayerChange]:
    """Factorise every planned layer with a rank at ``fraction`` of its target."""
    todo = [layer for layer in ctx.float_layers() if ctx.plans[layer.name].rank is not None]
    ranks = _chosen_ranks(ctx, todo, fraction)
    changes = []
    for i, layer in enumerate(todo):
        ctx.tick(STAGE, i, len(todo), layer.name)
        m, n = layer.shape
        rank = ranks[layer.name]
        current = layer_module(ctx.model.module, layer)
        if not nullu.factorised_saves(m, n, rank):
            continue
        if layer_form(ctx.model.module, layer) == "factorised" and current.rank <= rank:
            continue
        changes.append(_factorise(ctx, layer, rank))
    return changes


def _gram(ctx: StageContext, layer) -> torch.Tensor | None:
    stats = ctx.input_stats(layer)
    return stats.gram if (ctx.options.whiten and stats is not None) else None


def _chosen_ranks(ctx: StageContext, layers, fraction: float) -> dict[str, int]:
    ranks: dict[str, int] = {}
    auto = []
    for layer in layers:
        spec = ctx.plans[layer.name].rank
        full = min(layer.shape)
        if spec.mode == "fixed":
            ranks[layer.name] = max(1, round(full - fraction * (full - spec.value)))
        elif spec.mode == "energy":
            weight = dense_weight(ctx.model.module, layer).detach()
            values = nullu.spectrum(weight, _gram(ctx, layer), ctx.options.whitening_eps)
            ranks[layer.name] = nullu.rank_for_energy(values, 1 - fraction * (1 - spec.value))
        else:
            auto.append(layer)
    if auto:
        budget = 1 - fraction * (1 - ctx.budget)
        candidates = []
        for layer in auto:
            weight = dense_weight(ctx.model.module, layer).detach()
            values = nullu.spectrum(weight, _gram(ctx, layer), ctx.options.whitening_eps)
            candidates.append(nullu.RankCandidate(layer.name, layer.shape[0], layer.shape[1], values))
        total = sum(layer.params for layer in auto)
        ranks.update(nullu.allocate_ranks(candidates, math.floor(budget * total)).ranks)
    return ranks


@torch.no_grad()
def _factorise(ctx: StageContext, layer, rank: int) -> LayerChange:
    module = ctx.model.module
    weight = dense_weight(module, layer).detach()
    sparsity = layer_sparsity(module, layer)
    gram = _gram(ctx, layer)
    seed = ctx.seed
    if gram is not None:
        up, down = nullu.whitened_svd_factors(weight, gram.to(weight.device), rank, ctx.options.whitening_eps,
                                              seed=seed)
    else:
        up, down = nullu.svd_factors(weight, rank, ctx.options.svd_method, seed=seed)
    factorise(module, layer, up, down)
    what = f"rank {rank} ({'whitened' if gram is not None else 'plain'} SVD)"
    if sparsity > 0:
        layer = ctx.model.layer_index[layer.name]  # the factorised entry (walking the model: only when needed)
        # The plan asked for sparsity too: keep it, now on the factors.
        set_factor_masks(module, layer, dare.magnitude_mask(up, sparsity), dare.magnitude_mask(down, sparsity))
        what += f", factors at sparsity {sparsity:.3f}"
    return LayerChange(layer.name, what)
