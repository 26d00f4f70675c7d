"""Exporting a model out of rcc: compressed (small on disk, loads with rcc) or dense (loads anywhere).

``export_compressed`` writes rcc-compressed version 2: each masked tensor as its kept values
(row-major order of the mask's True entries) plus its mask packed 8 entries per byte, so the
file size shows the real saving of unstructured sparsity; ``rcc.load_compressed`` reads it.
``export_dense`` writes the original architecture with the effective weights, in the model
library's own format (open_clip ``local-dir:``, ``transformers`` ``save_pretrained``), so it
loads with no rcc code at all. After structured pruning the dense export writes the new MLP
widths into that config (``export_widths``) where the library can express them, and refuses
in one line otherwise (removed heads, blocks of one tower with different widths).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rcc.compression.layers import LowRankLinear, masked_parameter
from rcc.compression.quantized_layers import is_quantized, quantized_tensor_names
from rcc.compression.restructure import densify
from rcc.compression.structure import MANIFEST, PACKED_VERSION, WEIGHTS, structure_of
from rcc.errors import RccError
from rcc.models.adapter import VLModel
from rcc.exports.dense_widths import hf_tower_config, mlp_ratio_for, model_width, narrowed_mlp_widths

OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"  # the name open_clip's local-dir loading looks for first
OPEN_CLIP_CONFIG = "open_clip_config.json"
README = "README.txt"
DENSE_FAMILIES = ("open_clip", "hf_clip", "hf_blip")


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote: files (name → bytes) and how that compares with the dense weights."""

    format: str
    directory: Path
    files: dict[str, int]
    total_bytes: int
    dense_bytes: int
    details: dict = field(default_factory=dict)  # format-specific: measured parity, notes on what stays dense

    @property
    def saving(self) -> float:
        """Fraction of the dense weight bytes saved: 1 − total_bytes / dense_bytes."""
        return 1.0 - self.total_bytes / self.dense_bytes if self.dense_bytes else 0.0


def dense_bytes(module: nn.Module) -> int:
    """Bytes of the original architecture's state: Σ numel · element size, factors as m·n, int8 as float, no masks,
    narrowed layers (structured pruning) at their dense shape."""
    structure = structure_of(module)
    factors = {f"{path}.{leaf}" for path in structure["factorised"] for leaf in ("up", "down")}
    skipped = set(structure["masks"]) | factors | quantized_tensor_names(module)
    total, seen = 0, set()
    for key, tensor in module.state_dict().items():
        if key in skipped or (tensor.numel() and tensor.data_ptr() in seen):
            continue  # masks vanish when dense; tied tensors are stored once
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    for path in structure["factorised"]:
        layer: LowRankLinear = module.get_submodule(path)
        total += layer.out_features * layer.in_features * _float_size(layer)
    for path in structure.get("quantized", {}):
        if path not in structure["factorised"]:
            total += module.get_submodule(path).weight.numel() * _float_size(module.get_submodule(path))
    for path, entry in structure.get("resized", {}).items():
        layer = module.get_submodule(path)
        (out_f, in_f), (dense_out, dense_in) = entry["shape"], entry["dense"]
        size = _float_size(layer)
        total += (dense_out * dense_in - out_f * in_f) * size
        if layer.bias is not None:
            total += (dense_out - out_f) * size
    return total


def _float_size(layer: nn.Module) -> int:
    """Bytes per entry of the layer's float weights (an int8 layer: of the float dtype around it)."""
    if is_quantized(layer):
        return torch.finfo(layer.int8_original_dtype).bits // 8
    return (layer.up if isinstance(layer, LowRankLinear) else layer.weight).element_size()


def export_compressed(model: VLModel, out_dir: str | Path, extra: dict | None = None) -> ExportReport:
    """Write ``model`` as rcc-compressed version 2 (masked tensors packed) into a new or empty ``out_dir``."""
    from safetensors.torch import save_file

    out = fresh_directory(out_dir)
    state = _plain_state(model.module)
    packed = pack_masked(model.module, state)
    save_file(state, str(out / WEIGHTS))
    from rcc.compression.semi_structured import two_four_paths

    manifest = {**(extra or {}),  # extra never overrides the fields a reader relies on
                "format": "rcc-compressed", "version": PACKED_VERSION, "model": model.spec,
                "structure": structure_of(model.module), "packed": packed,
                "semi_structured": two_four_paths(model.module)}  # 2:4 Linears: sparse kernels on CUDA
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (out / README).write_text(
        f"A compressed {model.spec} (rcc-compressed version {PACKED_VERSION}).\n\n"
        "Load it with rcc:\n\n    import rcc\n    model = rcc.load_compressed(\"DIR\")\n"
        "    model.encode_image(pixels), model.encode_text(model.tokenize([\"a photo\"]))\n\n"
        f"{WEIGHTS} stores each pruned tensor as its kept values (row-major order) and its\n"
        "mask packed 8 entries per byte (numpy.packbits); manifest.json lists them under 'packed'.\n"
        "For a copy that loads without rcc, export it dense. (DIR: this directory.)\n")
    return export_report("rcc-compressed", out, dense_bytes(model.module))


def pack_masked(module: nn.Module, state: dict[str, torch.Tensor]) -> list[dict]:
    """Replace masked tensors in ``state`` by W[M] (kept values) and M by packbits(M); returns the entries."""
    entries = []
    for path, holder in module.named_modules():
        for leaf, mask in holder.named_buffers(recurse=False):
            parameter = masked_parameter(holder, leaf)
            prefix = f"{path}." if path else ""
            if parameter is None or prefix + leaf not in state:
                continue
            keep = mask.detach().cpu().to(torch.bool)
            # Pruned entries are zero by the masks' invariant (reapply_masks), so W[M] loses nothing.
            state[prefix + parameter] = state[prefix + parameter][keep].contiguous()
            state[prefix + leaf] = torch.from_numpy(np.packbits(keep.reshape(-1).numpy()))
            entries.append({"tensor": prefix + parameter, "mask": prefix + leaf, "shape": list(keep.shape)})
    return entries


def export_dense(model: VLModel, out_dir: str | Path) -> ExportReport:
    """Write ``model`` densified, in its library's own format, into a new or empty ``out_dir``."""
    if model.family not in DENSE_FAMILIES:
        raise RccError(f"model family {model.family!r} cannot be exported dense; allowed: {', '.join(DENSE_FAMILIES)}")
    if model.family == "open_clip" and getattr(model, "config", None) is None:
        raise RccError(f"model {model.spec!r} has no OpenCLIP config to export with; allowed: models loaded as "
                       f"rcc-mini, open_clip:NAME or open_clip:CONFIG.json")
    widths = narrowed_mlp_widths(model)  # refuses what the library's config cannot express, before any write
    out = fresh_directory(out_dir)
    module = densify(copy.deepcopy(model.module))  # the caller's model stays compressed
    if model.family == "open_clip":
        _save_open_clip(model, module, out, widths)
        kind = "open_clip"
    else:
        for tower, width in widths.items():
            hf_tower_config(module.config, model.family, tower).intermediate_size = width
        _save_transformers(model, module, out)
        kind = "transformers"
    return export_report(kind, out, dense_bytes(module))


def _save_open_clip(model: VLModel, module: nn.Module, out: Path, widths: dict[str, int]) -> None:
    from safetensors.torch import save_file

    model_cfg = copy.deepcopy(model.config)
    preprocess_cfg = model_cfg.pop("preprocess_cfg", {})
    tokenizer = getattr(getattr(model, "_tokenizer", None), "tokenizer", None)
    if tokenizer is not None:  # open_clip's local-dir loading reads HF tokenizer files from the directory
        tokenizer.save_pretrained(out)
    text_cfg = model_cfg["text_cfg"]
    for tower, width in widths.items():
        if tower == "text" and text_cfg.get("hf_model_name"):
            module.text.config.intermediate_size = width  # the HF text tower's own config, saved below
        else:
            cfg = model_cfg["vision_cfg" if tower == "vision" else "text_cfg"]
            cfg["mlp_ratio"] = mlp_ratio_for(model_width(model, tower), width)
    if text_cfg.get("hf_model_name"):
        # The HF text tower is built from a config found by path: ship it here and point at it.
        module.text.config.save_pretrained(out)
        text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = str(out.resolve())
    save_file(_plain_state(module), str(out / OPEN_CLIP_WEIGHTS))
    (out / OPEN_CLIP_CONFIG).write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2) + "\n")
    moved = ("\nThe text tower's config is found through text_cfg.hf_model_name in "
             f"{OPEN_CLIP_CONFIG}:\nif you move this directory, set it (and hf_tokenizer_name) to the new path.\n"
             if text_cfg.get("hf_model_name") else "")
    (out / README).write_text(
        f"{model.spec}, compressed with rcc and exported dense (plain OpenCLIP weights).\n\n"
        "Load it with open_clip (no rcc needed):\n\n    import open_clip\n"
        "    model, _, preprocess = open_clip.create_model_and_transforms(\"local-dir:DIR\")\n"
        "    tokenizer = open_clip.get_tokenizer(\"local-dir:DIR\")\n\n(DIR: this directory.)\n" + moved)


def _save_transformers(model: VLModel, module: nn.Module, out: Path) -> None:
    module.save_pretrained(out)  # safetensors
    for part in ("tokenizer", "image_processor"):
        saved = getattr(model, part, None)
        if saved is not None:
            saved.save_pretrained(out)
    cls = type(module).__name__
    (out / README).write_text(
        f"{model.spec}, compressed with rcc and exported dense (a plain transformers checkpoint).\n\n"
        "Load it with transformers (no rcc needed):\n\n"
        f"    from transformers import {cls}, AutoProcessor\n"
        f"    model = {cls}.from_pretrained(\"DIR\")\n    processor = AutoProcessor.from_pretrained(\"DIR\")\n\n"
        "(DIR: this directory.)\n")


def fresh_directory(out_dir: str | Path) -> Path:
    from rcc.output_paths import check_output_dir

    out = check_output_dir(out_dir, "export directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _plain_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict on CPU, contiguous, with no two tensors sharing storage (safetensors refuses that)."""
    state, seen = {}, set()
    for key, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        state[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return state


def export_report(kind: str, out: Path, dense: int, details: dict | None = None) -> ExportReport:
    files = {str(path.relative_to(out)): path.stat().st_size for path in sorted(out.rglob("*")) if path.is_file()}
    return ExportReport(format=kind, directory=out, files=files, total_bytes=sum(files.values()), dense_bytes=dense,
                        details=details or {})
