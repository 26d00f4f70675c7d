"""The layer inventory: every compressible weight matrix of a model, with a stable name.

Conventions every stage relies on:
- ``shape`` is always ``(out_features, in_features)``: the matrix maps an input of size
  ``in_features`` to ``out_features``, whatever the storage layout.
- OpenCLIP's fused attention ``in_proj_weight`` (q, k and v stacked on rows) is exposed as three
  entries, ``...attn.in_proj.q`` / ``.k`` / ``.v``, each naming a row slice of the same parameter.
  That keeps plans portable between OpenCLIP and Hugging Face models (whose q/k/v are separate
  Linears) and lets a user treat q, k and v differently.
- OpenCLIP's ``visual.proj`` and ``text_projection`` are stored ``(in, out)`` and used as
  ``x @ W``; they are marked ``transposed`` and read back in the ``(out, in)`` convention.
- Structured pruning (``rcc.compression.structured``) makes layers physically narrower: ``shape``
  is what the layer holds now, ``dense_shape`` what it held before (None: unchanged). The module
  says so itself through its ``dense_shape`` attribute, so any inventory of a pruned model knows.
- Attention layers carry ``heads``, the head count of the attention module they belong to (the
  nearest enclosing module with ``num_heads`` / ``num_attention_heads``), so head groups can be
  formed from the inventory alone.
"""

from __future__ import annotations

import torch
from torch import nn

from rcc.schema.layers import LayerInfo

def read_matrix(module: nn.Module, layer: LayerInfo) -> torch.Tensor:
    """The layer's weight as an ``(out, in)`` view of the live parameter (no copy).

    A factorised layer has no such parameter: its product is returned (a new tensor).
    """
    owner = module.get_submodule(layer.param.rpartition(".")[0])
    if hasattr(owner, "dense_weight"):
        return owner.dense_weight()
    weight = module.get_parameter(layer.param)
    if layer.rows is not None:
        weight = weight[layer.rows[0]:layer.rows[1]]
    return weight.t() if layer.transposed else weight


@torch.no_grad()
def write_matrix(module: nn.Module, layer: LayerInfo, value: torch.Tensor) -> None:
    """Copy an ``(out, in)`` matrix into the layer's parameter in place."""
    if tuple(value.shape) != layer.shape:
        raise ValueError(f"{layer.name}: expected shape {layer.shape}, got {tuple(value.shape)}")
    read_matrix(module, layer).copy_(value)


HEAD_COUNT_ATTRIBUTES = ("num_heads", "num_attention_heads")  # nn.MultiheadAttention, HF attention modules


def head_count(attention: nn.Module) -> int | None:
    """The number of heads an attention module runs now, or None for any other module."""
    for attribute in HEAD_COUNT_ATTRIBUTES:
        value = getattr(attention, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def attention_path(module: nn.Module, path: str) -> str | None:
    """The nearest module enclosing ``path`` (itself included) that counts heads, or None."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        try:
            child = module.get_submodule(candidate)
        except AttributeError:
            continue
        if head_count(child) is not None:
            return candidate
    return None


def dense_shape_of(child: nn.Module) -> tuple[int, int] | None:
    """The (out, in) shape a structurally pruned Linear-like had before, None if it was never narrowed."""
    shape = getattr(child, "dense_shape", None)
    if shape is None or tuple(shape) == (int(child.out_features), int(child.in_features)):
        return None
    return (int(shape[0]), int(shape[1]))


def linear_layers(module: nn.Module, classify) -> list[LayerInfo]:
    """Inventory of every ``nn.Linear`` whose name ``classify`` maps to (tower, block, kind).

    ``classify(name) -> tuple[Tower, int | None, LayerKind] | None``; None leaves it out
    (heads that are not part of the embedding path, e.g. BLIP's ITM head).
    """
    found: list[LayerInfo] = []
    for name, child in module.named_modules():
        # Linear, or a factorised stand-in for one (rcc.compression.layers.LowRankLinear).
        if not (isinstance(child, nn.Linear) or hasattr(child, "dense_weight")):
            continue
        where = classify(name)
        if where is None:
            continue
        tower, block, kind = where
        out_f, in_f = child.out_features, child.in_features
        heads = None
        if kind.startswith("attn_"):
            holder = attention_path(module, name)
            heads = None if holder is None else head_count(module.get_submodule(holder))
        found.append(LayerInfo(
            name=name, tower=tower, block=block, kind=kind,
            shape=(int(out_f), int(in_f)), param=f"{name}.weight", heads=heads,
            dense_shape=dense_shape_of(child),
        ))
    return found


def block_index(name: str, marker: str) -> int | None:
    """The integer following ``marker`` in a dotted module name (``layers.3.mlp`` → 3)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == marker and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None
