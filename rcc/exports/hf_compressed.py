"""The ``hf-compressed`` export: a Hugging Face CLIP / BLIP checkpoint in the compressed-tensors format.

The model is written as its original ``transformers`` architecture (``densify``), and every
int8 layer that the format can express is handed to the compressed-tensors library with its
own int8 values and per-channel scales: a ``QuantizationConfig`` group ("int-quantized":
symmetric int8 weights, one scale per output channel, int8 activations quantised per token at
run time) targeting exactly those modules, applied with ``apply_quantization_config``, the
scales set to rcc's, then ``ModelCompressor.compress_model`` and ``update_config`` write the
int8 tensors and the ``quantization_config`` of config.json as the library writes them.
``transformers.from_pretrained`` reloads it wherever compressed-tensors is installed.

What the format cannot express is written dense (float), and the export says so in one line
each (README.txt and the report's notes):
- pruned (masked) weights: compressed-tensors 0.15 and later (transformers ≥ 5 requires ≥ 0.15)
  removed its sparse compressors (sparse-bitmask, sparse-24-bitmask are "legacy" formats no
  loader reads), so ``sparsity_config`` stays empty and the zeros are stored;
- factorised (low-rank) layers: a transformers architecture has one full Linear there;
- int8 layers with a SmoothQuant input scale: the format has no per-input-channel scale;
- a fused BLIP ``qkv`` whose q, k and v are not all int8;
- int8 embedding tables: compressed-tensors can describe them, but transformers' loader then
  fails re-initialising the table ("'Embedding' object has no attribute 'weight'", transformers
  5.24 with compressed-tensors 0.20).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from rcc.compression.layers import SplitQKV
from rcc.compression.quantized_layers import QuantizedEmbedding, QuantizedLinear, is_quantized
from rcc.compression.restructure import densify
from rcc.errors import RccError
from rcc.models.adapter import VLModel

FAMILIES = ("hf_clip", "hf_blip")
README = "README.txt"
FORMAT = "int-quantized"


def int8_scales(module: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Per-channel scales of the int8 layers the format can hold, by their path in the dense model; notes."""
    scales: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    smoothed, factorised, tables = [], [], []
    for path, child in module.named_modules():
        if isinstance(child, QuantizedLinear) and not child.smoothed:
            scales[path] = child.weight_scale.detach().float().cpu()
        elif isinstance(child, QuantizedEmbedding):
            tables.append(path)
        elif is_quantized(child):
            (smoothed if child.smoothed else factorised).append(path)
    for path, child in module.named_modules():  # after the loop above: a split's q, k, v come after it
        if isinstance(child, SplitQKV):
            parts = [scales.pop(f"{path}.{name}", None) for name in "qkv"]
            if all(part is not None for part in parts):
                scales[path] = torch.cat(parts)  # densify stacks q, k, v rows in this order
            elif any(part is not None for part in parts):
                notes.append(f"fused {path} is written float: only some of its q, k, v are int8")
    if factorised:
        notes.append(f"{len(factorised)} int8 low-rank layers are written as one float Linear each "
                     f"(transformers has no factorised Linear); first: {factorised[0]}")
    if tables:
        notes.append(f"{len(tables)} int8 embedding tables are written float (transformers cannot load a "
                     f"compressed-tensors Embedding); first: {tables[0]}")
    if smoothed:
        notes.append(f"{len(smoothed)} SmoothQuant-scaled int8 layers are written float (compressed-tensors has no "
                     f"per-input-channel scale); first: {smoothed[0]}")
    return scales, notes


def _sparsity_notes(module: nn.Module) -> list[str]:
    from rcc.compression.structure import structure_of

    structure = structure_of(module)
    notes = []
    if structure["masks"]:
        notes.append(f"{len(structure['masks'])} pruned (masked) tensors are written dense: compressed-tensors "
                     f"≥ 0.15 dropped its sparse-bitmask compressors, so transformers cannot load sparse weights")
    floats = [path for path in structure["factorised"] if path not in structure.get("quantized", {})]
    if floats:
        notes.append(f"{len(floats)} low-rank layers are written as their product (transformers has no "
                     f"factorised Linear); first: {floats[0]}")
    return notes


def export_hf_compressed(model: VLModel, out: Path) -> dict:
    """Write ``model`` (HF CLIP / BLIP) as a compressed-tensors checkpoint into the empty directory ``out``."""
    if model.family not in FAMILIES:
        raise RccError(f"format 'hf-compressed' needs a Hugging Face CLIP or BLIP model, not {model.family!r} "
                       f"({model.spec}); allowed: hf: or hf-blip: models (use onnx or compressed for others)")
    try:
        from compressed_tensors.compressors import ModelCompressor
        from compressed_tensors.quantization import (
            QuantizationArgs, QuantizationConfig, QuantizationScheme, QuantizationStatus, apply_quantization_config,
        )
    except ImportError:
        raise RccError("format 'hf-compressed' needs the compressed-tensors library; "
                       "allowed: pip install compressed-tensors") from None
    from rcc.exports.dense_widths import hf_tower_config, narrowed_mlp_widths

    widths = narrowed_mlp_widths(model)  # structured pruning: refuses what config.json cannot hold, before any write
    scales, notes = int8_scales(model.module)
    notes = _sparsity_notes(model.module) + notes
    module = densify(copy.deepcopy(model.module)).to("cpu")
    for tower, width in widths.items():  # the narrowed MLP widths, as the dense export writes them
        hf_tower_config(module.config, model.family, tower).intermediate_size = width
    if scales:
        weights = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel")
        activations = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
        groups = {"group_0": QuantizationScheme(targets=sorted(scales), weights=weights,
                                                input_activations=activations)}
        config = QuantizationConfig(config_groups=groups, format=FORMAT, quantization_status=QuantizationStatus.FROZEN)
        apply_quantization_config(module, config, show_progress=False)
        with torch.no_grad():
            for path, scale in scales.items():
                target = module.get_submodule(path)
                target.weight_scale.copy_(scale.reshape(target.weight_scale.shape).to(target.weight_scale.dtype))
        compressor = ModelCompressor(quantization_config=config)
        compressor.compress_model(module)
    module.save_pretrained(out)
    if scales:
        compressor.update_config(str(out))
    for part in ("tokenizer", "image_processor"):
        saved = getattr(model, part, None)
        if saved is not None:
            saved.save_pretrained(out)
    _write_readme(model, module, out, len(scales), notes)
    return {"int8_layers": len(scales), "notes": notes}


def _write_readme(model: VLModel, module: nn.Module, out: Path, count: int, notes: list[str]) -> None:
    cls = type(module).__name__
    config = json.loads((out / "config.json").read_text())
    quant = config.get("quantization_config", {})
    lines = [
        f"{model.spec}, compressed with rcc, in the compressed-tensors format "
        f"({quant.get('format', 'dense')}, {count} int8 modules).",
        "",
        "Load it with transformers and compressed-tensors (no rcc needed):",
        "",
        "    pip install transformers compressed-tensors",
        f"    from transformers import {cls}, AutoProcessor",
        f'    model = {cls}.from_pretrained("DIR")',
        '    processor = AutoProcessor.from_pretrained("DIR")',
        "",
        "compressed-tensors keeps the int8 weights until the model's first forward call, then",
        "dequantises them (rcc's values and per-channel scales) and quantises activations per token",
        "as it runs (rcc's CPU kernel: per tensor), so outputs differ slightly from rcc's. Methods",
        "that bypass forward (get_image_features, get_text_features) need one forward call first,",
        "e.g. model(input_ids=ids, attention_mask=mask, pixel_values=pixels), or load with",
        "quantization_config=CompressedTensorsConfig(dequantize=True) for plain float weights.",
        "",
        *(["Written dense, because the format or transformers cannot hold them:"]
          + [f"  - {note}" for note in notes] + [""] if notes else []),
        "(DIR: this directory.)",
    ]
    (out / README).write_text("\n".join(lines) + "\n")
