"""Shape-changing surgery: Linear layers and attention modules made physically narrower.

Everything here changes real shapes (``nn.Linear`` with fewer features, attention with fewer
heads), never masks, so the saving holds in any runtime. Each narrowed module records the
shape it had before in its ``dense_shape`` attribute (an attention module: ``dense_heads``), so
``structure_of`` can describe the model and ``apply_structure`` / ``restructure`` rebuild, shrink
or grow it back. The functions, for anyone who needs to change widths (exports, quantisers):

- ``keep_rows(module, path, index)``: keep output features ``index`` of a Linear-like (weight
  rows, bias, mask rows; a factorised layer keeps rows of ``up``);
- ``keep_columns(module, path, index)``: keep input features ``index`` (weight / mask columns;
  factorised: columns of ``down``);
- ``set_head_count(module, path, heads)``: tell an attention module how many heads it runs;
- ``remove_units(module, group, index, kept)``: a structured group (rcc.compression.groups) down
  to the units ``kept``: rows of every producer, columns of the consumer, the head count;
- ``resize_linear(module, path, shape, dense_shape)``: an empty Linear of ``shape`` in place of
  the one at ``path`` (values come from a state dict after), for rebuilding a stored structure.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import skip_init

from rcc.compression.groups import StructuredGroup
from rcc.compression.layers import (
    DENSE_SHAPE, LowRankLinear, QKVSelfAttention, SplitAttention, layer_module,
)
from rcc.errors import RccError
from rcc.models.inventory import attention_path, head_count

DENSE_HEADS = "dense_heads"


class SurgeryError(RccError):
    """A model part that cannot be narrowed the way the plan asks."""


def unit_index(kept_units: torch.Tensor, unit_width: int) -> torch.Tensor:
    """Row / column indices of whole units: unit u covers u·w … u·w + w − 1 (w = 1: the units themselves)."""
    kept_units = kept_units.to(torch.long)
    if unit_width == 1:
        return kept_units
    return (kept_units[:, None] * unit_width + torch.arange(unit_width, device=kept_units.device)).reshape(-1)


def _record_dense_shape(child: nn.Module) -> None:
    if getattr(child, DENSE_SHAPE, None) is None:
        setattr(child, DENSE_SHAPE, (int(child.out_features), int(child.in_features)))


def _parameter(value: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(value.contiguous(), requires_grad=like.requires_grad)


@torch.no_grad()
def keep_rows(module: nn.Module, path: str, index: torch.Tensor) -> nn.Module:
    """Keep output features ``index`` (ascending) of the Linear / LowRankLinear at ``path``, in place."""
    return _keep_features(module, path, index, outputs=True)


@torch.no_grad()
def keep_columns(module: nn.Module, path: str, index: torch.Tensor) -> nn.Module:
    """Keep input features ``index`` (ascending) of the Linear / LowRankLinear at ``path``, in place."""
    return _keep_features(module, path, index, outputs=False)


def _keep_features(module: nn.Module, path: str, index: torch.Tensor, outputs: bool) -> nn.Module:
    """Rows (outputs) or columns (inputs) ``index`` of the weight, its mask and, for outputs, the bias.

    A factorised layer keeps rows of ``up`` or columns of ``down`` (and of their masks): its rank stays.
    """
    child = module.get_submodule(path)
    if not isinstance(child, (nn.Linear, LowRankLinear)):
        raise SurgeryError(f"{path!r} is a {type(child).__name__}, not a Linear; allowed: Linear layers "
                           f"(split fused attention first)")
    _record_dense_shape(child)
    index = index.to(_device(child))
    factorised = isinstance(child, LowRankLinear)
    name = ("up" if outputs else "down") if factorised else "weight"
    dim = 0 if outputs else 1
    setattr(child, name, _parameter(getattr(child, name).index_select(dim, index), getattr(child, name)))
    mask = f"{name}_mask" if factorised else "weight_mask"
    if mask in child._buffers:
        child.register_buffer(mask, child._buffers[mask].index_select(dim, index).contiguous())
    if not factorised:
        setattr(child, "out_features" if outputs else "in_features", int(index.numel()))
    if outputs and child.bias is not None:
        child.bias = _parameter(child.bias[index], child.bias)
    return child


def _device(child: nn.Module) -> torch.device:
    return next(child.parameters()).device


def set_head_count(module: nn.Module, path: str, heads: int) -> nn.Module:
    """Make the attention module at ``path`` run ``heads`` heads of unchanged size; returns it.

    OpenCLIP's attention must be split first (``unfuse``: ``SplitAttention``); Hugging Face
    modules keep ``num_heads`` / ``num_attention_heads`` (and ``all_head_size``) consistent; BLIP's
    vision attention, whose forward derives the head size from its input width, is replaced by
    ``QKVSelfAttention`` (same children, same outputs).
    """
    attention = module.get_submodule(path)
    dense = getattr(attention, DENSE_HEADS, None) or head_count(attention)
    if isinstance(attention, nn.MultiheadAttention):
        raise SurgeryError(f"attention {path!r} is a fused nn.MultiheadAttention; allowed: split it first "
                           f"(rcc.compression.layers.unfuse)")
    if type(attention).__name__ == "BlipAttention":
        attention = QKVSelfAttention(attention)
        module.set_submodule(path, attention)
    if isinstance(attention, (SplitAttention, QKVSelfAttention)):
        attention.num_heads = heads
    elif hasattr(attention, "num_attention_heads") and hasattr(attention, "attention_head_size"):  # BERT-style
        attention.num_attention_heads = heads
        attention.all_head_size = heads * attention.attention_head_size
    elif hasattr(attention, "num_heads") and hasattr(attention, "head_dim"):  # CLIP-style: views use head_dim
        attention.num_heads = heads
    else:
        raise SurgeryError(f"attention {path!r} ({type(attention).__name__}) has no head count rcc can change; "
                           f"allowed: OpenCLIP, Hugging Face CLIP, BERT-style and BLIP attention")
    setattr(attention, DENSE_HEADS, dense)
    return attention


@torch.no_grad()
def remove_units(module: nn.Module, group: StructuredGroup, index, kept: torch.Tensor) -> None:
    """Keep only units ``kept`` (ascending unit indices) of ``group``: rows of its producers, columns of its consumer.

    ``index`` is the model's layer index (name → LayerInfo). For a head group the attention
    module's head count follows.
    """
    rows = unit_index(kept, group.unit_width)
    for name in group.producers:
        keep_rows(module, _path(module, index[name]), rows)
    keep_columns(module, _path(module, index[group.consumer]), rows)
    if group.kind == "head":
        holder = attention_path(module, _path(module, index[group.leader]))
        if holder is None:
            raise SurgeryError(f"layer {group.leader!r} has no enclosing attention module with a head count")
        set_head_count(module, holder, int(kept.numel()))


def _path(module: nn.Module, layer) -> str:
    if layer_module(module, layer) is None:
        raise SurgeryError(f"layer {layer.name!r} is a fused slice or a bare parameter; allowed: Linear layers "
                           f"(split fused attention first)")
    return layer.param.rpartition(".")[0]


def check_mlp_container(module: nn.Module, group: StructuredGroup, index) -> None:
    """Refuse an MLP whose hidden width feeds more than the consumer (a norm inside the MLP, NormFormer-style)."""
    producer = index[group.producers[0]].param.rpartition(".")[0]
    consumer = index[group.consumer].param.rpartition(".")[0]
    parent = producer.rpartition(".")[0]
    if parent != consumer.rpartition(".")[0]:
        return  # separate containers (BERT's intermediate / output): nothing sits between them
    members = {producer.rpartition(".")[2], consumer.rpartition(".")[2]}
    for name, child in module.get_submodule(parent).named_children():
        if name not in members and any(True for _ in child.parameters()):
            raise SurgeryError(f"layer {group.leader!r}: the MLP holds {type(child).__name__} {parent}.{name} of its "
                               f"hidden width, which rcc does not narrow; allowed: pattern 'unstructured' or 'row' "
                               f"for this layer")


@torch.no_grad()
def resize_linear(module: nn.Module, path: str, shape, dense_shape) -> nn.Module:
    """Put an uninitialised Linear of ``shape`` (out, in) at ``path``, remembering ``dense_shape``.

    For rebuilding a stored structure: the values are loaded from the state dict afterwards.
    The bias, device, dtype and training mode follow the module it replaces.
    """
    old = module.get_submodule(path)
    reference = old.up if isinstance(old, LowRankLinear) else old.weight
    linear = skip_init(nn.Linear, int(shape[1]), int(shape[0]), bias=old.bias is not None,
                       device=reference.device, dtype=reference.dtype)
    if tuple(shape) != tuple(dense_shape):
        setattr(linear, DENSE_SHAPE, (int(dense_shape[0]), int(dense_shape[1])))
    linear.train(old.training)
    module.set_submodule(path, linear)
    return linear


def narrowed_shape(child: nn.Module) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """((out, in) now, (out, in) dense) of a narrowed Linear-like, None if it has its dense shape."""
    dense = getattr(child, DENSE_SHAPE, None)
    if dense is None:
        return None
    now = (int(child.out_features), int(child.in_features))
    return None if now == tuple(dense) else (now, (int(dense[0]), int(dense[1])))


def heads_state(child: nn.Module) -> tuple[int, int] | None:
    """(heads now, dense heads) of an attention module that lost heads, else None."""
    dense = getattr(child, DENSE_HEADS, None)
    now = head_count(child)
    return None if dense is None or now is None or now == dense else (now, int(dense))


__all__ = [
    "DENSE_HEADS", "SurgeryError", "check_mlp_container", "heads_state", "keep_columns",
    "keep_rows", "narrowed_shape", "remove_units", "resize_linear", "set_head_count", "unit_index",
]
