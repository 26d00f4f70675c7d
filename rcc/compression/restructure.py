"""Changing a compressed module's structure in place: back to dense, or to another structure.

``densify`` turns a compressed module back into its original architecture (fused attention,
plain Linears, no mask buffers, float weights) holding the effective weights, so ordinary
libraries load it; ``dequantize`` turns one int8 layer back into its float form.
``restructure`` turns a module of one compressed structure (``structure_of``) into another,
rebuilding only the paths whose structure differs: checking out a history node then means
loading only the tensors that changed, and untouched layers keep their module objects.
Structured pruning is undone the same way: a narrowed layer the target does not narrow alike
is rebuilt at its dense shape (then narrowed again if the target says so), and attention
modules get the target's head count, so checkout shrinks shapes and grows them back.
``densify`` keeps narrowed layers narrow (their dense shape is gone with the removed units); a
fused attention that lost heads cannot be fused again and is refused.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import skip_init

from rcc.compression.layers import LowRankLinear, SplitAttention, SplitQKV, carry_dense_shape, masked_parameter
from rcc.compression.quantized_layers import QuantizedEmbedding, QuantizedLowRankLinear, is_quantized
from rcc.compression.structure import apply_structure
from rcc.compression.surgery import DENSE_HEADS, SurgeryError, heads_state, resize_linear, set_head_count


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
def _dense_linear(layer: nn.Module, cls: type[nn.Linear] = nn.Linear, values: bool = True) -> nn.Linear:
    """A plain ``cls`` Linear computing what ``layer`` computes (same device and dtype).

    ``values`` False: the right shape only, its values left unset (the caller loads them).
    """
    like = layer.down if isinstance(layer, LowRankLinear) else layer.weight
    shape = (layer.out_features, layer.in_features) if isinstance(layer, LowRankLinear) else tuple(like.shape)
    # skip_init: no random initialisation of values that are overwritten at once.
    linear = skip_init(cls, shape[1], shape[0], bias=layer.bias is not None, device=like.device, dtype=like.dtype)
    if values:
        linear.weight.copy_(effective_weight(layer))
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
    return linear


@torch.no_grad()
def merge_split(module: nn.Module, path: str, values: bool = True) -> nn.Module:
    """Fuse the SplitAttention / SplitQKV at ``path`` back into one module; returns it.

    W_in = [W_q; W_k; W_v] (effective weights), b_in = [b_q; b_k; b_v]; out_proj keeps its effective weight.
    ``values`` False: shapes only, values left unset (a checkout loads them from the store).
    """
    split = module.get_submodule(path)
    if heads_state(split) is not None:
        raise SurgeryError(f"attention {path!r} runs {split.num_heads} of its {getattr(split, DENSE_HEADS)} heads; "
                           f"nn.MultiheadAttention cannot hold fewer heads than its width allows")
    if isinstance(split, SplitAttention):
        parts = [split.in_proj[name] for name in "qkv"]
        like = next(parts[0].parameters())
        fused = skip_init(
            nn.MultiheadAttention, split.embed_dim, split.num_heads, dropout=split.dropout, bias=parts[0].bias is not None,
            batch_first=split.batch_first, device=like.device, dtype=like.dtype,
        )
        if values:
            fused.in_proj_weight.copy_(torch.cat([effective_weight(p) for p in parts]))
            if fused.in_proj_bias is not None:
                fused.in_proj_bias.copy_(torch.cat([_bias(p) for p in parts]))
        # MHA creates out_proj with a bias iff ``bias``; take the split's own form instead.
        fused.out_proj = _dense_linear(split.out_proj, type(fused.out_proj), values)
    elif isinstance(split, SplitQKV):
        parts = [split.q, split.k, split.v]
        like = next(parts[0].parameters())
        rows = sum(_dense_linear_shape(p)[0] for p in parts)
        fused = skip_init(nn.Linear, _dense_linear_shape(parts[0])[1], rows, bias=parts[0].bias is not None,
                          device=like.device, dtype=like.dtype)
        if values:
            fused.weight.copy_(torch.cat([effective_weight(p) for p in parts]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([_bias(p) for p in parts]))
    else:
        raise TypeError(f"{path!r} is a {type(split).__name__}, not a split attention")
    module.set_submodule(path, fused)
    _match_mode(module, path)
    return fused


def _dense_linear_shape(layer: nn.Module) -> tuple[int, int]:
    return (layer.out_features, layer.in_features) if isinstance(layer, LowRankLinear) else tuple(layer.weight.shape)


@torch.no_grad()
def unfactorise(module: nn.Module, path: str, values: bool = True) -> nn.Linear:
    """Replace the LowRankLinear at ``path`` by a Linear with W = (up ⊙ M_up)(down ⊙ M_down) (``values`` False: unset)."""
    factorised = module.get_submodule(path)
    dense = _dense_linear(factorised, values=values)
    carry_dense_shape(factorised, dense)
    module.set_submodule(path, dense)
    _match_mode(module, path)
    return dense


@torch.no_grad()
def dequantize(module: nn.Module, path: str, values: bool = True) -> nn.Module:
    """Replace the int8 layer at ``path`` by its float form (Linear, LowRankLinear, Embedding) with its masks.

    W = diag(s) Q diag(t); factorised: up = diag(s_up) Q_up, down = diag(s_down) Q_down diag(t).
    ``values`` False: the float form's shapes only, values unset (the caller loads them).
    """
    quantized = module.get_submodule(path)
    weights = quantized.int8_weights()
    if isinstance(quantized, QuantizedEmbedding):
        values_q = weights["weight"].values
        floating = skip_init(nn.Embedding, *values_q.shape, padding_idx=quantized.padding_idx,
                             device=values_q.device, dtype=weights["weight"].scale.dtype)
        if values:
            floating.weight.copy_(quantized.dense_weight())
    else:
        dtype = quantized.bias.dtype if quantized.bias is not None else torch.float32
        device = next(iter(weights.values())).values.device
        if isinstance(quantized, QuantizedLowRankLinear):
            if values:
                up, down = weights["up"].dequantize(), weights["down"].dequantize()
                if quantized.smoothed:
                    down = down * quantized.input_scale.float()[None, :]
            else:
                up, down = (torch.empty(weights[name].values.shape, device=device) for name in ("up", "down"))
            floating = LowRankLinear(up.to(dtype), down.to(dtype), quantized.bias, copy=False)
        else:
            out_f, in_f = weights["weight"].values.shape
            floating = skip_init(nn.Linear, in_f, out_f, bias=quantized.bias is not None, device=device, dtype=dtype)
            if values:
                floating.weight.copy_(quantized.dense_weight())
                if quantized.bias is not None:
                    floating.bias.copy_(quantized.bias)
        carry_dense_shape(quantized, floating)
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
def remove_mask(module: nn.Module, name: str, values: bool = True) -> None:
    """Drop the mask buffer ``name`` (``holder.X_mask``), zeroing the pruned entries of X first (if ``values``)."""
    holder_path, _, leaf = name.rpartition(".")
    holder = module.get_submodule(holder_path)
    target = masked_parameter(holder, leaf)
    mask = holder._buffers.pop(leaf)
    if target is not None and values:
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
    Since all of those are loaded next, no value is computed here (no effective weights, no
    masking): a checkout's cost is the bytes it loads, not the layers it rebuilds.
    """
    splits, target_splits = set(current.get("split", [])), set(target.get("split", []))
    ranks, target_ranks = current.get("factorised", {}), target.get("factorised", {})
    masks, target_masks = current.get("masks", {}), target.get("masks", {})
    quantized, target_quantized = current.get("quantized", {}), target.get("quantized", {})
    resized, target_resized = current.get("resized", {}), target.get("resized", {})
    heads, target_heads = current.get("heads", {}), target.get("heads", {})
    rebuilt: set[str] = set()
    masked: set[str] = set()  # mask buffers added or removed outside rebuilt modules

    # Int8 layers whose form, rank or shape the target changes go back to float first, so the
    # steps below see only float forms.
    dequantized = set()
    for path, form in quantized.items():
        if (target_quantized.get(path) != form or ranks.get(path) != target_ranks.get(path)
                or resized.get(path) != target_resized.get(path)):
            dequantize(module, path, values=False)
            dequantized.add(path)
    # Grow back first: narrowed layers the target has otherwise return to their dense shape
    # (values are stale and reloaded), attention modules to their dense head count, so that the
    # merges below see the dense architecture.
    for path, entry in resized.items():
        if target_resized.get(path) != entry:
            resize_linear(module, path, entry["dense"], entry["dense"])
            rebuilt.add(path)
    for path, entry in heads.items():
        if target_heads.get(path) != entry:
            set_head_count(module, path, int(entry["dense"]))

    # Undo what the target lacks; whatever lives under a merged split goes with it.
    for path in sorted(splits - target_splits):
        merge_split(module, path, values=False)
        rebuilt.add(path)
    for path, rank in ranks.items():
        if target_ranks.get(path) != rank and not _under(path, rebuilt):
            unfactorise(module, path, values=False)
            rebuilt.add(path)
    for name, shape in masks.items():
        holder = name.rpartition(".")[0]
        if target_masks.get(name) != shape and not _under(holder, rebuilt):
            remove_mask(module, name, values=False)
            masked.add(name)

    # Apply what the target adds, as apply_structure does, for the differences only.
    new_splits = sorted(target_splits - splits)
    new_heads = {path: entry for path, entry in target_heads.items()
                 if heads.get(path) != entry or _under(path, new_splits)}
    new_resized = {path: entry for path, entry in target_resized.items()
                   if resized.get(path) != entry or _under(path, rebuilt) or _under(path, new_splits)}
    new_ranks = {path: rank for path, rank in target_ranks.items()
                 if ranks.get(path) != rank or _under(path, rebuilt) or _under(path, new_splits)
                 or path in new_resized}
    new_quantized = {path: form for path, form in target_quantized.items()
                     if path in dequantized or quantized.get(path) != form or _under(path, rebuilt)
                     or _under(path, new_splits) or path in new_ranks or path in new_resized}
    apply_structure(module, {"split": new_splits, "heads": new_heads, "resized": new_resized,
                             "factorised": new_ranks, "quantized": new_quantized})
    rebuilt.update(new_splits, new_resized, new_ranks, new_quantized, dequantized)
    for path in [*new_splits, *new_resized, *new_ranks, *new_quantized]:
        _match_mode(module, path)
    for name, shape in target_masks.items():
        holder_path, _, leaf = name.rpartition(".")
        holder = module.get_submodule(holder_path)
        if leaf not in holder._buffers:
            device = getattr(holder, masked_parameter(holder, leaf)).device
            holder.register_buffer(leaf, torch.empty(shape, dtype=torch.bool, device=device))  # loaded next
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
