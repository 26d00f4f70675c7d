"""Compressed layer forms and the module surgery that installs them.

A compressible layer is always one of:
- dense: an ``nn.Linear`` (or a bare ``(in, out)`` parameter used as ``x @ W``);
- masked: the same, with a bool ``weight_mask`` buffer; pruned entries are zero and stay zero;
- factorised: a ``LowRankLinear`` (``up @ down``, rank r), optionally with masks on its factors;
- quantised: either of the above with int8 values and per-row scales (``QuantizedLinear``,
  ``QuantizedLowRankLinear`` in ``rcc.compression.quantized_layers``); masks stay on the int8 values.
  A quantised layer is final: the float stages leave it alone (``is_quantized_layer``).

Masks and factors live *in the module* (buffers and parameters), so ``state_dict`` carries
them and a checkpoint of the model is a checkpoint of its compressed structure.
``structure_of`` / ``apply_structure`` describe and rebuild that structure on a fresh model.

Fused q/k/v weights (OpenCLIP's ``nn.MultiheadAttention.in_proj_weight``, BLIP's ``qkv``
Linear) are split into three Linears before compression (``unfuse``), keeping the inventory
names (``…attn.in_proj.q``, ``…qkv.q``), so q, k and v can each be pruned or factorised.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from rcc.compression.factor_shapes import FactorShapes
from rcc.compression.quantized_layers import LAYER_FORMS, QuantizedLowRankLinear, is_quantized
from rcc.models.inventory import attention_path
from rcc.models.stored_weights import stored_tensors
from rcc.schema.layers import LayerInfo

MASK = "weight_mask"


class LowRankLinear(FactorShapes, nn.Module):
    """y = up(down(x)) + bias: a rank-r factorisation of an (out, in) Linear, r(out + in) weights."""

    def __init__(self, up: torch.Tensor, down: torch.Tensor, bias: torch.Tensor | None = None, copy: bool = True):
        super().__init__()
        if up.shape[1] != down.shape[0]:
            raise ValueError(f"factor shapes {tuple(up.shape)} and {tuple(down.shape)} do not chain")
        # copy False: adopt the factors (fresh tensors nobody else holds, e.g. about to be loaded into).
        self.up = nn.Parameter(up.detach().clone() if copy else up.detach())
        self.down = nn.Parameter(down.detach().clone() if copy else down.detach())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())


    @property
    def weight(self) -> torch.Tensor:
        """The dense product (a new tensor): for code that reads ``.weight`` generically."""
        return self.dense_weight()

    def dense_weight(self) -> torch.Tensor:
        return self.up @ self.down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.down), self.up, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, bias={self.bias is not None}"


class SplitAttention(nn.Module):
    """``nn.MultiheadAttention`` (same embed dim for q, k, v) with q, k, v as separate Linears.

    Same call signature and outputs as the fused module for what open_clip uses
    (``need_weights=False``); attention runs through ``scaled_dot_product_attention``.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        width = mha.embed_dim
        self.embed_dim, self.num_heads, self.batch_first = width, mha.num_heads, mha.batch_first
        # Fixed here: removing heads (rcc.compression.surgery) lowers num_heads, never the head size.
        self.head_dim = width // mha.num_heads
        self.dropout = mha.dropout
        self.in_proj = nn.ModuleDict()
        for part, name in enumerate("qkv"):
            linear = nn.Linear(width, width, bias=mha.in_proj_bias is not None,
                               device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(mha.in_proj_weight[part * width:(part + 1) * width])
                if mha.in_proj_bias is not None:
                    linear.bias.copy_(mha.in_proj_bias[part * width:(part + 1) * width])
            self.in_proj[name] = linear
        self.out_proj = mha.out_proj

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if need_weights:
            raise NotImplementedError("SplitAttention does not return attention weights")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, length, _ = query.shape
        heads, head_dim = self.num_heads, self.head_dim

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, heads, head_dim).transpose(1, 2)

        q = split(self.in_proj["q"](query))
        k = split(self.in_proj["k"](key))
        v = split(self.in_proj["v"](value))
        mask = _additive_mask(attn_mask, key_padding_mask, q.dtype, batch, heads)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and mask is None,
        )
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, heads * head_dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _additive_mask(attn_mask, key_padding_mask, dtype, batch: int, heads: int):
    """nn.MultiheadAttention's masks (bool: True = blocked; float: added) as one additive mask."""
    mask = None
    if attn_mask is not None:
        mask = _as_additive(attn_mask, dtype)
        if mask.dim() == 3:  # (batch·heads, L, S) as MHA accepts
            mask = mask.view(batch, heads, *mask.shape[-2:])
    if key_padding_mask is not None:
        padding = _as_additive(key_padding_mask, dtype)[:, None, None, :]
        mask = padding if mask is None else mask + padding
    return mask


def _as_additive(mask: torch.Tensor, dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class SplitQKV(nn.Module):
    """A fused qkv Linear as three Linears whose outputs are concatenated (same output)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        width = linear.out_features // 3
        self.q, self.k, self.v = (
            _linear_from(linear.weight[i * width:(i + 1) * width],
                         None if linear.bias is None else linear.bias[i * width:(i + 1) * width])
            for i in range(3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


class QKVSelfAttention(nn.Module):
    """BLIP's vision self-attention (fused ``qkv``, then ``projection``) with its head size fixed.

    ``BlipAttention`` derives the head size from its input width (``embed_dim // num_heads``),
    which is wrong once heads are removed; this module computes the same thing from its own
    ``head_dim`` and keeps the child names (``qkv``, ``projection``), so inventory names and
    state-dict keys do not change. ``qkv`` may be the fused Linear or a ``SplitQKV``.
    """

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.num_heads = attention.num_heads
        self.head_dim = attention.head_dim
        self.scale = attention.scale
        self.dropout = attention.dropout
        self.qkv = attention.qkv
        self.projection = attention.projection
        self.train(attention.training)

    def forward(self, hidden_states: torch.Tensor, **kwargs):
        batch, length, _ = hidden_states.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        if isinstance(self.qkv, SplitQKV):  # three products, no concatenation to undo
            q, k, v = (part(hidden_states).view(shape).transpose(1, 2) for part in (self.qkv.q, self.qkv.k, self.qkv.v))
        else:
            mixed = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, self.head_dim)
            q, k, v = mixed.permute(2, 0, 3, 1, 4)
        probs = self.dropout(torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1))
        context = (probs @ v).permute(0, 2, 1, 3).reshape(batch, length, self.num_heads * self.head_dim)
        return self.projection(context), probs


def _linear_from(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


# -- locating layers ----------------------------------------------------------------------

def module_path(layer: LayerInfo) -> str:
    """The dotted path of the module (or parent, for bare parameters) that holds the layer."""
    return layer.param.rpartition(".")[0]


def fused_parent(module: nn.Module, layer: LayerInfo) -> str | None:
    """Path of the fused attention module the layer belongs to, if any.

    q/k/v row slices live in one; so does an ``nn.MultiheadAttention.out_proj``, whose weight
    the fused kernel reads directly (a factorised out_proj only saves FLOPs once split).
    """
    if layer.rows is not None:
        return module_path(layer)
    path = module_path(layer)
    if path.endswith(".out_proj"):
        parent = path[: -len(".out_proj")]
        attention = module.get_submodule(parent)
        # Only same-width attention can be split (CoCa's attentional pooler has other k/v widths).
        if isinstance(attention, nn.MultiheadAttention) and attention._qkv_same_embed_dim:
            return parent
    return None


def unfuse(module: nn.Module, layers: Iterable[LayerInfo]) -> list[str]:
    """Split every fused attention module that holds one of ``layers``; returns their paths.

    Call before compressing: afterwards each q / k / v is its own Linear under the same name.
    """
    split = []
    for path in sorted({p for p in (fused_parent(module, layer) for layer in layers) if p is not None}):
        parent = module.get_submodule(path)
        if isinstance(parent, nn.MultiheadAttention):
            module.set_submodule(path, SplitAttention(parent))
        elif isinstance(parent, nn.Linear):
            module.set_submodule(path, SplitQKV(parent))
        else:
            raise TypeError(f"cannot split fused weights of {type(parent).__name__} at {path!r}")
        split.append(path)
    return split


def layer_module(module: nn.Module, layer: LayerInfo) -> nn.Module | None:
    """The Linear / LowRankLinear (or its int8 form) holding ``layer`` (None for bare parameters and fused slices)."""
    if layer.rows is not None or layer.transposed:
        return None
    child = module.get_submodule(module_path(layer))
    return child if isinstance(child, (nn.Linear, LowRankLinear, *LAYER_FORMS)) else None


def is_quantized_layer(module: nn.Module, layer: LayerInfo) -> bool:
    """Whether the layer holds int8 values (then no float stage changes it)."""
    return is_quantized(layer_module(module, layer))


def layer_bits(module: nn.Module, layer: LayerInfo) -> int | None:
    """8 for an int8 layer, None for float weights."""
    child = layer_module(module, layer)
    return child.bits if is_quantized(child) else None


def _factorised(child: nn.Module | None) -> bool:
    return isinstance(child, (LowRankLinear, QuantizedLowRankLinear))


def layer_form(module: nn.Module, layer: LayerInfo) -> str:
    """``dense``, ``masked`` or ``factorised`` (int8 layers have the form of their float structure)."""
    child = layer_module(module, layer)
    if _factorised(child):
        return "factorised"
    holder = child if child is not None else module.get_submodule(module_path(layer))
    return "masked" if _mask_name(layer) in dict(holder.named_buffers(recurse=False)) else "dense"


def _mask_name(layer: LayerInfo) -> str:
    return MASK if not layer.transposed else f"{layer.param.rpartition('.')[2]}_mask"


def masked_name(mask: str) -> str:
    """The state-dict key a mask's key masks: ``a.b.weight_mask`` → ``a.b.weight``; ``proj_mask`` → ``proj``."""
    holder, _, buffer = mask.rpartition(".")
    leaf = "weight" if buffer == MASK else buffer[: -len("_mask")]
    return f"{holder}.{leaf}" if holder else leaf


def masked_parameter(holder: nn.Module, buffer: str) -> str | None:
    """The parameter of ``holder`` that its buffer ``buffer`` masks, if it is a compression mask.

    ``weight_mask`` masks ``weight``, ``X_mask`` masks ``X``; other ``*_mask`` buffers (OpenCLIP's
    causal ``attn_mask``) mask no parameter and are not ours. In an int8 layer the masked tensor
    is the buffer of int8 values of the same name.
    """
    if not buffer.endswith("_mask"):
        return None
    target = "weight" if buffer == MASK else buffer[: -len("_mask")]
    if target in holder._parameters or (is_quantized(holder) and target in holder._buffers):
        return target
    return None


# -- reading and writing ------------------------------------------------------------------

def dense_weight(module: nn.Module, layer: LayerInfo) -> torch.Tensor:
    """The layer's effective (out, in) matrix: a view for dense layers, the product for factorised."""
    child = layer_module(module, layer)
    if isinstance(child, LowRankLinear):
        return child.dense_weight()
    from rcc.models.inventory import read_matrix

    return read_matrix(module, layer)


@torch.no_grad()
def set_dense_weight(module: nn.Module, layer: LayerInfo, weight: torch.Tensor) -> None:
    """Write an (out, in) matrix into a dense or masked layer (pruned entries are re-zeroed)."""
    child = layer_module(module, layer)
    if is_quantized(child):
        raise TypeError(f"layer {layer.name!r} holds int8 values; quantised layers are final")
    if isinstance(child, LowRankLinear):
        raise TypeError(f"layer {layer.name!r} is factorised; write its factors instead")
    from rcc.models.inventory import read_matrix

    target = read_matrix(module, layer)
    target.copy_(weight.to(target.dtype))
    mask = get_mask(module, layer)
    if mask is not None:
        target.mul_(mask)  # both (out, in): read_matrix and get_mask undo the storage transpose


def get_mask(module: nn.Module, layer: LayerInfo) -> torch.Tensor | None:
    """The (out, in) keep-mask of a masked dense layer, else None."""
    holder = module.get_submodule(module_path(layer))
    mask = dict(holder.named_buffers(recurse=False)).get(_mask_name(layer))
    if mask is None:
        return None
    return mask.t() if layer.transposed else mask


def mask_sparsity(mask: torch.Tensor | None) -> float:
    """Fraction of pruned entries of a keep-mask (0 when there is no mask)."""
    return 0.0 if mask is None else 1.0 - mask.float().mean().item()


def layer_sparsity(module: nn.Module, layer: LayerInfo) -> float:
    """How pruned a layer is now: its mask, or for a factorised layer its ``down`` factor's mask."""
    child = layer_module(module, layer)
    if _factorised(child):
        return mask_sparsity(getattr(child, "down_mask", None))
    return mask_sparsity(get_mask(module, layer))


@torch.no_grad()
def set_mask(module: nn.Module, layer: LayerInfo, keep: torch.Tensor) -> None:
    """Attach an (out, in) keep-mask to a dense layer and zero its pruned entries."""
    if layer.rows is not None:
        raise TypeError(f"layer {layer.name!r} is a fused slice; call unfuse() first")
    if is_quantized_layer(module, layer):
        raise TypeError(f"layer {layer.name!r} holds int8 values; quantised layers are final")
    if layer_form(module, layer) == "factorised":
        raise TypeError(f"layer {layer.name!r} is factorised; use set_factor_masks")
    holder = module.get_submodule(module_path(layer))
    stored = keep.t().contiguous() if layer.transposed else keep
    holder.register_buffer(_mask_name(layer), stored.to(torch.bool).clone())
    from rcc.models.inventory import read_matrix

    read_matrix(module, layer).mul_(keep.to(read_matrix(module, layer).dtype))


@torch.no_grad()
def factorise(module: nn.Module, layer: LayerInfo, up: torch.Tensor, down: torch.Tensor) -> LowRankLinear:
    """Replace the layer's Linear by ``LowRankLinear(up, down)`` (the bias carries over)."""
    child = layer_module(module, layer)
    if child is None or is_quantized(child):
        raise TypeError(f"layer {layer.name!r} cannot be factorised: it is not a Linear "
                        f"(a bare parameter, a fused slice before unfuse()) or it holds int8 values")
    dtype = child.up.dtype if isinstance(child, LowRankLinear) else child.weight.dtype
    low_rank = LowRankLinear(up.to(dtype), down.to(dtype), child.bias)
    carry_dense_shape(child, low_rank)
    module.set_submodule(module_path(layer), low_rank)
    return low_rank


DENSE_SHAPE = "dense_shape"  # attribute of a structurally narrowed Linear-like (rcc.models.inventory reads it)


def carry_dense_shape(old: nn.Module, new: nn.Module) -> None:
    """Give a replacement module (factorised, unfactorised) the narrowed module's record of its dense shape."""
    shape = getattr(old, DENSE_SHAPE, None)
    if shape is not None:
        setattr(new, DENSE_SHAPE, tuple(shape))


@torch.no_grad()
def set_factor_masks(module: nn.Module, layer: LayerInfo, up_keep: torch.Tensor, down_keep: torch.Tensor) -> None:
    """Prune a factorised layer's factors: keep-masks on ``up`` (out, r) and ``down`` (r, in)."""
    child = layer_module(module, layer)
    if not isinstance(child, LowRankLinear):
        raise TypeError(f"layer {layer.name!r} is not factorised")
    child.register_buffer("up_mask", up_keep.to(torch.bool).clone())
    child.register_buffer("down_mask", down_keep.to(torch.bool).clone())
    child.up.mul_(child.up_mask)
    child.down.mul_(child.down_mask)


@torch.no_grad()
def reapply_masks(module: nn.Module) -> None:
    """Zero every pruned entry again (after an optimiser step or a correction)."""
    for child in module.modules():
        for name, mask in child.named_buffers(recurse=False):
            target = masked_parameter(child, name)
            if target is not None:
                getattr(child, target).mul_(mask)


def stored_parameters(module: nn.Module, layer: LayerInfo) -> int:
    """Weights the layer stores: m·n dense, kept entries when masked, r(m + n) (or kept) when factorised.

    Int8 layers count their values the same way (bytes are ``size_metrics``' business).
    """
    child = layer_module(module, layer)
    if _factorised(child):
        up_mask = getattr(child, "up_mask", None)
        down_mask = getattr(child, "down_mask", None)
        up = int(up_mask.sum()) if up_mask is not None else child.up.numel()
        down = int(down_mask.sum()) if down_mask is not None else child.down.numel()
        return up + down
    mask = get_mask(module, layer)
    return int(mask.sum()) if mask is not None else layer.params


def stored_bytes(module: nn.Module, layer: LayerInfo) -> int:
    """Bytes the compressed export writes for the layer's weights: kept values plus masks packed 8 per byte.

    Int8 layers: one byte per kept value plus the float32 scales (``QuantizedLinear.stored_bytes``).
    ``rcc.compression.stored_size.size_metrics`` counts the whole model the same way (``size/bytes``).
    """
    child = layer_module(module, layer)
    if is_quantized(child):
        return child.stored_bytes()
    if isinstance(child, LowRankLinear):
        total = 0
        for factor in ("up", "down"):
            weight, mask = getattr(child, factor), getattr(child, f"{factor}_mask", None)
            kept = weight.numel() if mask is None else int(mask.sum())
            total += kept * weight.element_size() + (0 if mask is None else (mask.numel() + 7) // 8)
        return total
    from rcc.models.inventory import read_matrix

    mask = get_mask(module, layer)
    size = read_matrix(module, layer).element_size()
    return stored_parameters(module, layer) * size + (0 if mask is None else (mask.numel() + 7) // 8)


def masks_by_parameter(module: nn.Module) -> dict[int, torch.Tensor]:
    """id(parameter) → its keep-mask, for every compression mask in ``module``."""
    masks = {}
    for holder in module.modules():
        for name, mask in holder.named_buffers(recurse=False):
            target = masked_parameter(holder, name)
            if target is not None:
                masks[id(getattr(holder, target))] = mask
    return masks


def kept_parameters(module: nn.Module) -> int:
    """Numbers the module stores: every weight entry (int8 values and scales too) except those masks prune."""
    masks = masks_by_parameter(module)
    return sum(p.numel() if id(p) not in masks else int(masks[id(p)].sum()) for p in stored_tensors(module))


# -- snapshots (for backing off a stage) ---------------------------------------------------

def _copy_keeping_configs(child: nn.Module) -> nn.Module:
    """A deep copy sharing the model's config objects (Hugging Face modules hold the model-wide config)."""
    memo = {id(sub.config): sub.config for sub in child.modules() if getattr(sub, "config", None) is not None}
    return copy.deepcopy(child, memo)


class LayerSnapshot:
    """Copies of the modules (or bare parameters) holding some layers, to put back later.

    Cheaper than copying the model: only what a stage may replace or edit is kept.
    """

    def __init__(self, module: nn.Module, layers: Iterable[LayerInfo], paths: Iterable[str] = ()):
        """``paths``: more modules to keep (the embedding tables the quant stage may replace)."""
        self.modules: dict[str, nn.Module] = {}
        self.params: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        paths = set(paths)
        for layer in layers:
            if layer.transposed:  # a bare parameter of a big module: copy the tensor, not the module
                holder = module.get_submodule(module_path(layer))
                mask = dict(holder.named_buffers(recurse=False)).get(_mask_name(layer))
                self.params[layer.param] = (module.get_parameter(layer.param).detach().clone(),
                                            None if mask is None else mask.clone())
            else:  # the Linear, or the whole (fused) attention module it belongs to
                holder = attention_path(module, module_path(layer)) if layer.kind.startswith("attn_") else None
                # The attention module too: removing heads changes its head count (or replaces it).
                paths.add(holder or fused_parent(module, layer) or module_path(layer))
        for path in sorted(paths):
            if not any(path.startswith(other + ".") for other in paths):
                self.modules[path] = _copy_keeping_configs(module.get_submodule(path))

    @torch.no_grad()
    def restore(self, module: nn.Module) -> None:
        """Put the saved state back; the snapshot stays valid for another restore."""
        for path, saved in self.modules.items():
            module.set_submodule(path, _copy_keeping_configs(saved))
        for name, (value, mask) in self.params.items():
            holder_path, _, leaf = name.rpartition(".")
            holder = module.get_submodule(holder_path)
            module.get_parameter(name).copy_(value)
            holder._buffers.pop(f"{leaf}_mask", None)
            if mask is not None:
                holder.register_buffer(f"{leaf}_mask", mask.clone())
