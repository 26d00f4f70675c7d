"""The quant stage on a model: planned layers (``bits: 8``) become int8 with per-row scales.

Each planned Linear becomes a ``QuantizedLinear``; each factorised layer a
``QuantizedLowRankLinear`` with both factors in int8 (``rcc.compression.quantized_layers``).
Masks stay, and pruned entries are exactly 0 in the int8 values. The rounding is
``StageOptions.quant_method``: ``rtn`` (round to nearest) or ``gptq`` (error feedback on the
calibration Gram the other stages use; ``up`` of a factorised layer on the Gram of its
hidden input, D̂ C D̂ᵀ); with ``smooth_alpha`` > 0 each layer first moves its input's outlier
channels into its weights (SmoothQuant, ``rcc.compression.int8``). Layers no calibration
input reaches fall back to plain rounding.

Strength f quantises ⌈f · N⌉ of the N planned layers, those whose outputs rounding disturbs
least first (relative error tr(ΔCΔᵀ)/tr(WCWᵀ) of round-to-nearest, ties by name), so the
cascade's back-off keeps the most sensitive layers in float. A quantised layer is final:
the float stages leave it alone, and a later step only adds layers.

With ``quant_embeddings`` (on by default) the ``nn.Embedding`` tables of every tower that has
an int8 layer become int8 too (``QuantizedEmbedding``, round to nearest per row): on a
BERT-style text tower the token table is half the weights, so int8 Linears alone would
leave the file barely smaller. Tables tied to another module (a language-model head) stay
float, since quantising one would untie them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rcc.compression import int8
from rcc.compression.layers import (
    LowRankLinear, carry_dense_shape, dense_weight, get_mask, is_quantized_layer, layer_module, module_path,
)
from rcc.compression.quantized_layers import QuantizedEmbedding, QuantizedLinear, QuantizedLowRankLinear
from rcc.compression.stage_context import LayerChange, StageContext

STAGE = "quant"


def run_quant_stage(ctx: StageContext, fraction: float = 1.0) -> list[LayerChange]:
    """Quantise ⌈fraction · N⌉ of the N layers planned with bits (counting those already int8)."""
    module = ctx.model.module
    planned = [layer for layer in ctx.layers() if ctx.plans[layer.name].bits is not None]
    waiting = [layer for layer in planned if not is_quantized_layer(module, layer)]
    count = math.ceil(fraction * len(planned) - 1e-9) - (len(planned) - len(waiting))
    if count <= 0:
        return []
    if count < len(waiting):
        waiting = sorted(waiting, key=lambda layer: (_rounding_error(ctx, layer), layer.name))[:count]
    changes = []
    for i, layer in enumerate(waiting):
        ctx.tick(STAGE, i, len(waiting), layer.name)
        changes.append(quantize_layer(ctx, layer))
    if ctx.options.quant_embeddings:
        towers = {layer.tower for layer in planned if is_quantized_layer(module, layer)}
        changes += [quantize_embedding(module, path) for path in embedding_paths(ctx.model, towers)]
    return changes


def embedding_paths(model, towers) -> list[str]:
    """Float ``nn.Embedding`` tables of the given towers, not tied to any other module's weight."""
    module = model.module
    owners: dict[int, int] = {}
    for child in module.modules():
        for param in child.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    return [path for path, child in module.named_modules()
            if isinstance(child, nn.Embedding) and model.tower_of_param(f"{path}.weight") in towers
            and owners.get(id(child.weight)) == 1]


@torch.no_grad()
def quantize_embedding(module: nn.Module, path: str) -> LayerChange:
    """Replace the ``nn.Embedding`` at ``path`` by int8 rows with per-row scales (round to nearest)."""
    table = module.get_submodule(path)
    q = int8.quantize_rtn(table.weight)
    quantized = QuantizedEmbedding(q.values, q.scale, table.padding_idx)
    quantized.train(table.training)
    module.set_submodule(path, quantized)
    return LayerChange(path, "embedding table int8 (rtn, per row)")


def _gram(ctx: StageContext, layer) -> torch.Tensor | None:
    stats = ctx.input_stats(layer)  # None where structured removal narrowed the layer since calibration
    return None if stats is None else stats.gram


def _rounding_error(ctx: StageContext, layer) -> float:
    weight = dense_weight(ctx.model.module, layer).detach()
    quantised = int8.quantize_rtn(weight).dequantize(weight.dtype)
    return int8.output_error(weight, quantised, _gram(ctx, layer))


@torch.no_grad()
def quantize_layer(ctx: StageContext, layer) -> LayerChange:
    """Replace one planned layer by its int8 form; see the module docstring."""
    module = ctx.model.module
    child = layer_module(module, layer)
    if child is None:
        raise TypeError(f"layer {layer.name!r} cannot be quantised: it is not a Linear "
                        f"(a bare parameter, or a fused slice before unfuse())")
    stats = ctx.input_stats(layer)
    gram = None if stats is None else stats.gram
    method = ctx.options.quant_method if gram is not None else "rtn"
    first = child.down if isinstance(child, LowRankLinear) else child.weight
    sigma = None
    if ctx.options.smooth_alpha > 0 and stats is not None and stats.absmax is not None:
        sigma = int8.smoothing_factors(stats.absmax, first.detach(), ctx.options.smooth_alpha)
        if gram is not None:
            inverse = (1 / sigma.double()).to(gram.device)
            gram = gram.double() * inverse[:, None] * inverse[None, :]

    def quantise(weight: torch.Tensor, keep: torch.Tensor | None, input_gram: torch.Tensor | None):
        if method == "gptq" and input_gram is not None:
            return int8.quantize_gptq(weight, input_gram, keep, damp=ctx.options.gptq_damp)
        return int8.quantize_rtn(weight, keep)

    input_scale = None if sigma is None else 1 / sigma
    if isinstance(child, LowRankLinear):
        down = child.down.detach().float() * (1 if sigma is None else sigma[None, :].to(child.down.device))
        down_q = quantise(down, child._buffers.get("down_mask"), gram)
        hidden_gram = None
        if gram is not None:
            d = down_q.dequantize(torch.float64).to(gram.device)
            hidden_gram = d @ gram.double() @ d.t()
        up_q = quantise(child.up.detach().float(), child._buffers.get("up_mask"), hidden_gram)
        new: nn.Module = QuantizedLowRankLinear(up_q, down_q, child.bias, input_scale)
        for leaf in ("up_mask", "down_mask"):
            if leaf in child._buffers:
                new.register_buffer(leaf, child._buffers[leaf].clone())
    else:
        weight = dense_weight(module, layer).detach().float()
        if sigma is not None:
            weight = weight * sigma[None, :].to(weight.device)
        keep = get_mask(module, layer)
        q = quantise(weight, keep, gram)
        new = QuantizedLinear(q.values, q.scale, child.bias, input_scale)
        if keep is not None:
            new.register_buffer("weight_mask", keep.clone())
    new.train(child.training)
    carry_dense_shape(child, new)  # a layer narrowed by structured pruning stays known as narrowed
    module.set_submodule(module_path(layer), new)
    what = f"int8 ({method}{f', smoothed α={ctx.options.smooth_alpha:g}' if sigma is not None else ''})"
    return LayerChange(layer.name, what)
