"""The compressed structure of a model as data, and saving / loading compressed models.

``structure_of`` lists what compression changed in the module tree (split attention, low-rank
layers and their ranks, int8 layers, mask buffers, and where structured pruning removed units:
narrowed layers with their shape and dense shape, attention modules with fewer heads);
``apply_structure`` re-creates it on a freshly loaded model of the same spec, after which the
saved ``state_dict`` loads strictly. The keys ``quantized``, ``resized`` and ``heads`` appear only
when some layer is int8 or narrowed, so the structure of every model without them reads as it
always did. On disk a compressed model is ``model.safetensors`` (factors, masks, weights) +
``manifest.json``.
Version 1 (written here) stores every tensor as is; version 2 (``rcc.exports.checkpoints``) stores
each masked tensor as its kept values plus its mask packed 8 entries per byte; both load here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rcc.compression.layers import LowRankLinear, SplitAttention, SplitQKV, carry_dense_shape, masked_parameter
from rcc.compression.quantized_layers import (
    LAYER_FORMS, QuantizedEmbedding, QuantizedLinear, QuantizedLowRankLinear, is_quantized,
)
from rcc.compression.surgery import heads_state, narrowed_shape, resize_linear, set_head_count
from rcc.errors import RccError

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1
PACKED_VERSION = 2
READABLE_VERSIONS = (FORMAT_VERSION, PACKED_VERSION)


def structure_of(module: nn.Module) -> dict:
    """Split modules, factorised layers (path → rank), mask buffers (name → shape), int8 layers, and
    when structured pruning narrowed anything: ``resized`` (path → {"shape", "dense"}) and ``heads``
    (path → {"heads", "dense"}).

    ``quantized`` (path → {"bits": 8, "smoothed": bool}) is present only when some layer is
    int8. An int8 factorised layer is listed under both ``factorised`` and ``quantized``, a
    narrowed int8 layer under both ``resized`` and ``quantized``.
    """
    split, factorised, masks, quantized, resized, heads = [], {}, {}, {}, {}, {}
    for path, child in module.named_modules():
        if isinstance(child, (SplitAttention, SplitQKV)):
            split.append(path)
        if isinstance(child, (LowRankLinear, QuantizedLowRankLinear)):
            factorised[path] = child.rank
        if is_quantized(child):
            quantized[path] = {"bits": child.bits, "smoothed": child.smoothed}
        narrow = narrowed_shape(child) if isinstance(child, (nn.Linear, LowRankLinear, *LAYER_FORMS)) else None
        if narrow is not None:
            resized[path] = {"shape": list(narrow[0]), "dense": list(narrow[1])}
        if (fewer := heads_state(child)) is not None:
            heads[path] = {"heads": fewer[0], "dense": fewer[1]}
        for name, buffer in child.named_buffers(recurse=False):
            if masked_parameter(child, name) is not None:
                masks[f"{path}.{name}" if path else name] = list(buffer.shape)
    structure = {"split": split, "factorised": factorised, "masks": masks}
    if quantized:
        structure["quantized"] = quantized
    if resized:
        structure["resized"] = resized
    if heads:
        structure["heads"] = heads
    return structure


@torch.no_grad()
def apply_structure(module: nn.Module, structure: dict) -> None:
    """Give a fresh module the compressed structure (values come from the state dict after).

    Order matters: split attention, then head counts, then narrowed Linears, then factors (a
    narrowed layer is factorised at its narrow shape), then int8 forms of those, then masks.
    """
    for path in structure.get("split", []):
        child = module.get_submodule(path)
        module.set_submodule(path, SplitAttention(child) if isinstance(child, nn.MultiheadAttention) else SplitQKV(child))
    for path, entry in structure.get("heads", {}).items():
        set_head_count(module, path, int(entry["heads"]))
    for path, entry in structure.get("resized", {}).items():
        resize_linear(module, path, entry["shape"], entry["dense"])
    for path, rank in structure.get("factorised", {}).items():
        child = module.get_submodule(path)
        up = child.weight.new_empty(child.out_features, rank)  # values come from the state dict
        down = child.weight.new_empty(rank, child.in_features)
        low_rank = LowRankLinear(up, down, child.bias, copy=False)
        carry_dense_shape(child, low_rank)
        module.set_submodule(path, low_rank)
    for path, form in structure.get("quantized", {}).items():
        child = module.get_submodule(path)
        cls = (QuantizedLowRankLinear if isinstance(child, LowRankLinear)
               else QuantizedEmbedding if isinstance(child, nn.Embedding) else QuantizedLinear)
        quantized = cls.empty_like(child, smoothed=bool(form.get("smoothed")))
        quantized.train(child.training)
        carry_dense_shape(child, quantized)
        module.set_submodule(path, quantized)
    for name, shape in structure.get("masks", {}).items():
        holder_path, _, leaf = name.rpartition(".")
        module.get_submodule(holder_path).register_buffer(leaf, torch.ones(shape, dtype=torch.bool))


def save_compressed(model, directory: str | Path, extra: dict | None = None) -> Path:
    """Write the model's compressed weights and a manifest; returns the weights file."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.module.state_dict().items()}
    # Masks are stored as uint8 (safetensors has bool, but uint8 is what every reader maps).
    state = {k: (v.to(torch.uint8) if v.dtype == torch.bool else v) for k, v in state.items()}
    save_file(state, str(directory / WEIGHTS))
    manifest = {"format": "rcc-compressed", "version": FORMAT_VERSION, "model": model.spec,
                "structure": structure_of(model.module), **(extra or {})}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory / WEIGHTS


def load_compressed(directory: str | Path, device: str | None = None, dtype: torch.dtype | None = None):
    """Rebuild a model saved by ``save_compressed``: base spec, structure, then the weights.

    With ``device`` CUDA and ``dtype`` fp16 / bf16, the 2:4 layers the manifest lists run as
    semi-structured sparse weights (``rcc.compression.semi_structured``); anywhere else they stay masked.
    """
    from safetensors.torch import load_file

    from rcc.models.load_errors import LOAD_ERRORS, load_reason
    from rcc.models.registry import load_model

    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise RccError(f"{str(directory)!r} is not a compressed model: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RccError(f"{str(manifest_path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise RccError(f"{str(manifest_path)!r} holds a JSON {type(manifest).__name__}; allowed: an object "
                       f"written by save_compressed")
    version = manifest.get("version")
    if manifest.get("format") != "rcc-compressed" or version not in READABLE_VERSIONS:
        raise RccError(f"{str(manifest_path)!r} has format {manifest.get('format')!r} version "
                       f"{version!r}; allowed: rcc-compressed version {FORMAT_VERSION} or {PACKED_VERSION}")
    if not isinstance(manifest.get("model"), str) or not isinstance(manifest.get("structure"), dict):
        raise RccError(f"{str(manifest_path)!r} lacks a model spec or a structure; allowed: a manifest written by "
                       f"save_compressed, with 'model' (a spec) and 'structure' (an object)")
    if not (directory / WEIGHTS).is_file():
        raise RccError(f"{str(directory)!r} is not a compressed model: {WEIGHTS} is missing")
    model = load_model(manifest["model"])
    apply_structure(model.module, manifest["structure"])
    try:
        state = load_file(str(directory / WEIGHTS))
    except LOAD_ERRORS as exc:
        raise RccError(f"{str(directory / WEIGHTS)!r} cannot be read: {load_reason(exc)}") from exc
    if version == PACKED_VERSION:
        unpack_masked(state, manifest.get("packed"), manifest_path)
    masks = set(manifest["structure"].get("masks", {}))
    state = {k: (v.to(torch.bool) if k in masks else v) for k, v in state.items()}
    model.module.load_state_dict(state, strict=True)
    if device is not None or dtype is not None:
        model.to(device, dtype)
    if manifest.get("semi_structured"):
        from rcc.compression.semi_structured import install_semi_structured

        install_semi_structured(model.module, list(manifest["semi_structured"]))
    return model


def unpack_masked(state: dict[str, torch.Tensor], packed, manifest_path: Path) -> None:
    """Expand packed entries in place: W = 0 except W[M] = kept values (row-major), M from its bits."""
    if not isinstance(packed, list) or not all(
            isinstance(entry, dict) and isinstance(entry.get("shape"), list)
            and entry.get("tensor") in state and entry.get("mask") in state for entry in packed):
        raise RccError(f"{str(manifest_path)!r} has a bad 'packed' list; allowed: objects with 'tensor', 'mask' "
                       f"(keys of {WEIGHTS}) and 'shape', as rcc.exports.checkpoints writes")
    for entry in packed:
        shape, values = entry["shape"], state[entry["tensor"]]
        bits = np.unpackbits(state[entry["mask"]].numpy(), count=math.prod(shape))
        keep = torch.from_numpy(bits.astype(bool)).reshape(shape)
        if int(keep.sum()) != values.numel():
            raise RccError(f"packed tensor {entry['tensor']!r} holds {values.numel()} values but its mask keeps "
                           f"{int(keep.sum())}; allowed: one value per kept entry (the export is damaged)")
        dense = values.new_zeros(shape)
        dense[keep] = values
        state[entry["tensor"]], state[entry["mask"]] = dense, keep
