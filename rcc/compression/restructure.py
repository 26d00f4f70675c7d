"""Changing a compressed module's structure in place: back to dense, or to another structure.

``densify`` turns a compressed module back into its original architecture (fused attention,
plain Linears, no mask buffers, float weights) holding the effective weights, so ordinary
libraries load it; ``dequantize`` turns one int8 layer back into its float form.
``restructure`` turns a module of one compressed structure (``structure_of``) into another,
rebuilding only the paths whose structure differs: checking out a history node then means
loading only the tensors that changed, and untouched layers keep their module objects.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import skip_init

from rcc.compression.layers import LowRankLinear, SplitAttention, SplitQKV, masked_parameter
from rcc.compression.quantized_layers import QuantizedEmbedding, QuantizedLowRankLinear, is_quantized
from rcc.compression.structure import apply_structure


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The (out, in) matrix a Linear-like layer applies: W ⊙ M masked, (up ⊙ M_up)(down ⊙ M_down) factorised,
    diag(s) Q diag(t) int8 (pruned int8 values are 0)."""
    if is_quantized(layer):
        return layer.dense_weight()
    if isinstance(layer, LowRankLinear):
        return _masked(layer, "up") @ _masked(layer, "down")
    return _masked(layer, "weight")


def _masked(holder: nn.Module, name: str) -> torch.Tensor:
    value = getattr(holder, name).detach()
    mask = holder._buffers.get("weight_mask" if name == "weight" else f"{name}_mask")
    return value if mask is None else value * mask


def _bias(layer: nn.Module) -> torch.Tensor | None:
    return None if layer.bias is None else layer.bias.detach()


@torch.no_grad()
def _dense_linear(layer: nn.Module, cls: type[nn.Linear] = nn.Linear) -> nn.Linear:
    """A plain ``cls`` Linear computing what ``layer`` computes (same device and dtype)."""
    weight = effective_weight(layer)
    # skip_init: no random initialisation of values that are overwritten at once.
    linear = skip_init(cls, weight.shape[1], weight.shape[0], bias=layer.bias is not None,
                       device=weight.device, dtype=weight.dtype)
    linear.weight.copy_(weight)
    if layer.bias is not None:
        linear.bias.copy_(layer.bias)
    return linear


@torch.no_grad()
def merge_split(module: nn.Module, path: str) -> nn.Module:
    """Fuse the SplitAttention / SplitQKV at ``path`` back into one module; returns it.

    W_in = [W_q; W_k; W_v] (effective weights), b_in = [b_q; b_k; b_v]; out_proj keeps its effective weight.
    """
    split = module.get_submodule(path)
    if isinstance(split, SplitAttention):
        parts = [split.in_proj[name] for name in "qkv"]
        weight = torch.cat([effective_weight(p) for p in parts])
        fused = skip_init(
            nn.MultiheadAttention, split.embed_dim, split.num_heads, dropout=split.dropout, bias=parts[0].bias is not None,
            batch_first=split.batch_first, device=weight.device, dtype=weight.dtype,
        )
        fused.in_proj_weight.copy_(weight)
        if fused.in_proj_bias is not None:
            fused.in_proj_bias.copy_(torch.cat([_bias(p) for p in parts]))
        # MHA creates out_proj with a bias iff ``bias``; take the split's own form instead.
        fused.out_proj = _dense_linear(split.out_proj, type(fused.out_proj))
    elif isinstance(split, SplitQKV):
        parts = [split.q, split.k, split.v]
        weight = torch.cat([effective_weight(p) for p in parts])
        fused = skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=parts[0].bias is not None,
                          device=weight.device, dtype=weight.dtype)
        fused.weight.copy_(weight)
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([_bias(p) for p in parts]))
    else:
        raise TypeError(f"{path!r} is a {type(split).__name__}, not a split attention")
    module.set_submodule(path, fused)
    _match_mode(module, path)
    return fused


@torch.no_grad()
def unfactorise(module: nn.Module, path: str) -> nn.Linear:
    """Replace the LowRankLinear at ``path`` by a Linear with W = (up ⊙ M_up)(down ⊙ M_down)."""
    dense = _dense_linear(module.get_submodule(path))
    module.set_submodule(path, dense)
    _match_mode(module, path)
    return dense


@torch.no_grad()
def dequantize(module: nn.Module, path: str) -> nn.Module:
    """Replace the int8 layer at ``path`` by its float form (Linear or LowRankLinear) with its masks.

    W = diag(s) Q diag(t); factorised: up = diag(s_up) Q_up, down = diag(s_down) Q_down diag(t).
    """
    quantized = module.get_submodule(path)
    if isinstance(quantized, QuantizedEmbedding):
        weight = quantized.dense_weight()
        floating = skip_init(nn.Embedding, *weight.shape, padding_idx=quantized.padding_idx,
                             device=weight.device, dtype=weight.dtype)
        floating.weight.copy_(weight)
        module.set_submodule(path, floating)
        _match_mode(module, path)
        return floating
    dtype = quantized.bias.dtype if quantized.bias is not None else torch.float32
    if isinstance(quantized, QuantizedLowRankLinear):
        weights = quantized.int8_weights()
        down = weights["down"].dequantize()
        if quantized.smoothed:
            down = down * quantized.input_scale.float()[None, :]
        floating: nn.Module = LowRankLinear(weights["up"].dequantize().to(dtype), down.to(dtype), quantized.bias)
    else:
        weight = quantized.dense_weight()
        floating = skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=quantized.bias is not None,
                             device=weight.device, dtype=dtype)
        floating.weight.copy_(weight)
        if quantized.bias is not None:
            floating.bias.copy_(quantized.bias)
    for leaf in ("weight_mask", "up_mask", "down_mask"):
        if leaf in quantized._buffers:
            floating.register_buffer(leaf, quantized._buffers[leaf].clone())
    module.set_submodule(path, floating)
    _match_mode(module, path)
    return floating


def _match_mode(module: nn.Module, path: str) -> None:
    # A new module starts in training mode; in an eval model that would switch kernels
    # (MHA's fast path) and change outputs, so it takes its parent's mode.
    module.get_submodule(path).train(module.get_submodule(path.rpartition(".")[0]).training)


@torch.no_grad()
def remove_mask(module: nn.Module, name: str) -> None:
    """Drop the mask buffer ``name`` (``holder.X_mask``), zeroing the pruned entries of X first."""
    holder_path, _, leaf = name.rpartition(".")
    holder = module.get_submodule(holder_path)
    target = masked_parameter(holder, leaf)
    mask = holder._buffers.pop(leaf)
    if target is not None:
        getattr(holder, target).mul_(mask)


@torch.no_grad()
def densify(module: nn.Module) -> nn.Module:
    """Return ``module`` (changed in place) to its original architecture with the effective weights."""
    for path, child in list(module.named_modules()):
        if is_quantized(child):
            dequantize(module, path)
    for path, child in list(module.named_modules()):
        if isinstance(child, (SplitAttention, SplitQKV)):
            merge_split(module, path)
    for path, child in list(module.named_modules()):
        if isinstance(child, LowRankLinear):
            unfactorise(module, path)
    for path, child in list(module.named_modules()):
        for leaf in list(child._buffers):
            if masked_parameter(child, leaf) is not None:
                remove_mask(module, f"{path}.{leaf}" if path else leaf)
    return module


def _under(path: str, roots) -> bool:
    return any(path == root or path.startswith(root + ".") for root in roots)


@torch.no_grad()
def restructure(module: nn.Module, current: dict, target: dict) -> set[str]:
    """Change ``module`` from structure ``current`` to ``target``, rebuilding only what differs.

    Returns the state-dict keys whose values are now stale and must be loaded from the target
    state: every key under a rebuilt module, and a parameter and its mask when that mask came or went.
    """
    splits, target_splits = set(current.get("split", [])), set(target.get("split", []))
    ranks, target_ranks = current.get("factorised", {}), target.get("factorised", {})
    masks, target_masks = current.get("masks", {}), target.get("masks", {})
    quantized, target_quantized = current.get("quantized", {}), target.get("quantized", {})
    rebuilt: set[str] = set()
    masked: set[str] = set()  # mask buffers added or removed outside rebuilt modules

    # Undo what the target lacks; whatever lives under a merged split goes with it. Int8 layers
    # go back to float first, so the steps below see only float forms.
    dequantized = set()
    for path, form in quantized.items():
        if target_quantized.get(path) != form or ranks.get(path) != target_ranks.get(path):
            dequantize(module, path)
            dequantized.add(path)
    for path in sorted(splits - target_splits):
        merge_split(module, path)
        rebuilt.add(path)
    for path, rank in ranks.items():
        if target_ranks.get(path) != rank and not _under(path, rebuilt):
            unfactorise(module, path)
            rebuilt.add(path)
    for name, shape in masks.items():
        holder = name.rpartition(".")[0]
        if target_masks.get(name) != shape and not _under(holder, rebuilt):
            remove_mask(module, name)
            masked.add(name)

    # Apply what the target adds, as apply_structure does, for the differences only.
    new_splits = sorted(target_splits - splits)
    new_ranks = {path: rank for path, rank in target_ranks.items()
                 if ranks.get(path) != rank or _under(path, rebuilt) or _under(path, new_splits)}
    new_quantized = {path: form for path, form in target_quantized.items()
                     if path in dequantized or quantized.get(path) != form or _under(path, rebuilt)
                     or _under(path, new_splits) or path in new_ranks}
    apply_structure(module, {"split": new_splits, "factorised": new_ranks, "quantized": new_quantized})
    rebuilt.update(new_splits, new_ranks, new_quantized, dequantized)
    for path in [*new_splits, *new_ranks, *new_quantized]:
        _match_mode(module, path)
    for name, shape in target_masks.items():
        holder_path, _, leaf = name.rpartition(".")
        holder = module.get_submodule(holder_path)
        if leaf not in holder._buffers:
            device = getattr(holder, masked_parameter(holder, leaf)).device
            holder.register_buffer(leaf, torch.ones(shape, dtype=torch.bool, device=device))
            if not _under(holder_path, rebuilt):
                masked.add(name)

    stale = {key for key in module.state_dict() if _under(key.rpartition(".")[0], rebuilt)}
    for name in masked:
        holder_path, _, leaf = name.rpartition(".")
        if _under(holder_path, rebuilt):  # a mask dropped, then its layer rebuilt: covered above
            continue
        prefix = f"{holder_path}." if holder_path else ""
        stale.add(prefix + masked_parameter(module.get_submodule(holder_path), leaf))
        if name in target_masks:
            stale.add(name)
    return stale
