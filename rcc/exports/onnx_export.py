"""The ONNX export: the image and the text encoder as two ONNX files that onnxruntime runs alone.

Each encoder is traced with ``torch.onnx.export`` (the torch.export-based exporter, opset 23)
from the model as it is, so what is small in rcc stays small in the file:
- a factorised layer stays two MatMuls (r(m + n) weights);
- an int8 layer stays int8: ``rcc::int8_linear`` becomes

      x ─ DynamicQuantizeLinear ─ MatMulInteger(x_q, Qᵀ int8, x_zp) ─ Cast ─ · (s_x s_w) ─ + b

  (onnxruntime fuses the chain into its DynamicQuantizeMatMul kernel), Q stored as an int8
  initializer and s_w per output channel; an input scale t (SmoothQuant) is one Mul before it;
- a pruned (masked) layer is a plain dense MatMul: ONNX has no sparse weight format that
  runtimes execute, so masks save nothing here (the README says which layers).

The export runs both encoders in onnxruntime on sample inputs and writes the largest absolute
difference and the lowest cosine to rcc's own outputs into README.txt beside the files.
"""

from __future__ import annotations

import copy
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rcc.compression.structure import structure_of
from rcc.errors import RccError
from rcc.models.adapter import VLModel

OPSET = 23  # 20 has one Gelu op (27 % faster in onnxruntime than the Erf formula), 23 one Attention op
IMAGE_FILE = "image_encoder.onnx"
TEXT_FILE = "text_encoder.onnx"
PREPROCESS_FILE = "preprocess.json"
README = "README.txt"
SAMPLE_TEXTS = ("a photo of the digit seven", "a handwritten number", "zero",
                "a blurry black and white picture of a handwritten three on a dark background")


def _opset():
    """The onnxscript opset module of ``OPSET``: the int8 translation speaks the graph's own opset."""
    import onnxscript

    return getattr(onnxscript, f"opset{OPSET}")


def _int8_linear_onnx(x, values, scale, bias):
    """ONNX for ``rcc::int8_linear``: y = Cast(MatMulInteger(q(x), Qᵀ, zp_x)) · s_x · s_w + b."""
    op = _opset()

    x_q, x_scale, x_zero = op.DynamicQuantizeLinear(x)
    product = op.MatMulInteger(x_q, op.Transpose(values, perm=[1, 0]), x_zero)
    y = op.Mul(op.Cast(product, to=1), op.Mul(x_scale, scale))
    return op.Add(y, bias)


def _int8_linear_onnx_no_bias(x, values, scale):
    op = _opset()

    x_q, x_scale, x_zero = op.DynamicQuantizeLinear(x)
    product = op.MatMulInteger(x_q, op.Transpose(values, perm=[1, 0]), x_zero)
    return op.Mul(op.Cast(product, to=1), op.Mul(x_scale, scale))


def _translate(x, values, scale, bias=None):
    if bias is None:
        return _int8_linear_onnx_no_bias(x, values, scale)
    return _int8_linear_onnx(x, values, scale, bias)


class _ImageEncoder(nn.Module):
    def __init__(self, model: VLModel):
        super().__init__()
        self.module = model.module
        self._model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._model.encode_image(pixels)


class _TextEncoder(nn.Module):
    def __init__(self, model: VLModel, keys: tuple[str, ...]):
        super().__init__()
        self.module = model.module
        self._model = model
        self._keys = keys

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        tokens = {"input_ids": input_ids} if attention_mask is None else {"input_ids": input_ids,
                                                                           "attention_mask": attention_mask}
        return self._model.encode_text_for_export(tokens)


@dataclass(frozen=True)
class Parity:
    """How far onnxruntime's outputs are from rcc's on the sample inputs."""

    max_abs: float
    min_cosine: float


def _export(wrapper: nn.Module, args: tuple, names: list[str], output: str, dynamic: dict, path: Path) -> None:
    from rcc.compression.int8_kernels import exported_int8_linear

    wrapper.eval()
    program = torch.onnx.export(
        wrapper, args, dynamo=True, opset_version=OPSET, input_names=names, output_names=[output],
        dynamic_shapes=dynamic, custom_translation_table={exported_int8_linear._opoverload: _translate},
        external_data=False, verbose=False)
    program.save(str(path), external_data=False)


def sample_images(model: VLModel, count: int = 4) -> torch.Tensor:
    """Deterministic sample images (noise and stripes) through the model's own preprocessing."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        pixels[:, i * 8:(i + 1) * 8 + 8] = 255  # a bright stripe, so images differ in more than noise
        images.append(Image.fromarray(pixels))
    return model.preprocess_batch(images)


def _parity(reference: torch.Tensor, candidate) -> Parity:
    candidate = torch.as_tensor(candidate).float()
    reference = reference.float()
    cosine = torch.nn.functional.cosine_similarity(reference, candidate, dim=-1)
    return Parity(float((reference - candidate).abs().max()), float(cosine.min()))


def export_onnx(model: VLModel, out: Path) -> dict:
    """Write ``image_encoder.onnx`` and ``text_encoder.onnx`` (and their parity) into directory ``out``."""
    try:
        for name in ("onnxruntime", "onnxscript"):  # the exporter's translator and the parity check
            importlib.import_module(name)
    except ImportError as exc:
        raise RccError(f"the ONNX export needs onnx, onnxscript and onnxruntime ({exc.name} is missing); "
                       f"allowed: pip install onnx onnxscript onnxruntime") from None
    if not {"zeroshot", "retrieval"} & set(model.tasks):
        raise RccError(f"model {model.spec!r} has no image and text encoders to export (tasks {sorted(model.tasks)}); "
                       f"allowed: CLIP-style models (rcc-mini, open_clip:, hf:, hf-blip: retrieval)")
    copy_of = copy.copy(model)
    copy_of.module = copy.deepcopy(model.module).to("cpu").eval()
    pixels = sample_images(copy_of)
    padded = copy_of.tokenize(list(SAMPLE_TEXTS))
    tokens = copy_of.trim_text_padding(padded)  # shorter than the context only where cutting is exact
    keys = tuple(tokens)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.inference_mode():
        image_reference = copy_of.encode_image(pixels)
        text_reference = copy_of.encode_text(tokens)
    _export(_ImageEncoder(copy_of), (pixels,), ["pixels"], "image_features", {"pixels": {0: batch}}, out / IMAGE_FILE)
    text_dims = {key: {0: batch} for key in keys}
    context = int(padded[keys[0]].shape[1])
    if copy_of.trim_text_padding(copy_of.tokenize(["a"]))[keys[0]].shape[1] < context:
        # Cutting padding is exact for this tower: any length up to the context runs.
        length = torch.export.Dim("length", min=2, max=context)
        text_dims = {key: {0: batch, 1: length} for key in keys}
    _export(_TextEncoder(copy_of, keys), tuple(tokens[k] for k in keys), list(keys), "text_features", text_dims,
            out / TEXT_FILE)
    image_parity, text_parity = _check_with_onnxruntime(out, pixels, tokens, image_reference, text_reference)
    _write_preprocess(copy_of, out)
    notes = _notes(model.module)
    _write_readme(model, out, keys, image_parity, text_parity, notes)
    return {"image": image_parity.__dict__, "text": text_parity.__dict__, "notes": notes}


def _check_with_onnxruntime(out: Path, pixels, tokens, image_reference, text_reference) -> tuple[Parity, Parity]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    image = ort.InferenceSession(str(out / IMAGE_FILE), options, providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(out / TEXT_FILE), options, providers=["CPUExecutionProvider"])
    image_out = image.run(None, {"pixels": pixels.numpy()})[0]
    text_out = text.run(None, {key: value.numpy() for key, value in tokens.items()})[0]
    return _parity(image_reference, image_out), _parity(text_reference, text_out)


def _write_preprocess(model: VLModel, out: Path) -> None:
    """What a caller needs to feed the image encoder without rcc: size, mean, std (and the tokenizer files)."""
    config = getattr(model, "config", None) or {}
    preprocess = dict(config.get("preprocess_cfg", {})) if isinstance(config, dict) else {}
    processor = getattr(model, "image_processor", None)
    if processor is not None:
        processor.save_pretrained(out)
    tokenizer = getattr(model, "tokenizer", None) or getattr(getattr(model, "_tokenizer", None), "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(out)
    sample = sample_images(model, 1)
    preprocess["input_shape"] = list(sample.shape[1:])
    (out / PREPROCESS_FILE).write_text(json.dumps(preprocess, indent=2) + "\n")


def _notes(module: nn.Module) -> list[str]:
    """What the ONNX files cannot keep small, one line each."""
    from rcc.compression.layers import masked_name

    masked = sorted(masked_name(name).removesuffix(".weight") for name in structure_of(module)["masks"])
    notes = []
    if masked:
        notes.append(f"{len(masked)} pruned (masked) layers are stored dense: masks save nothing in ONNX "
                     f"(no sparse weight format that runtimes execute); first: {masked[0]}")
    return notes


def _write_readme(model: VLModel, out: Path, keys, image: Parity, text: Parity, notes: list[str]) -> None:
    feeds = ", ".join(f'"{key}": ids' if key == "input_ids" else f'"{key}": mask' for key in keys)
    lines = [
        f"{model.spec}, compressed with rcc and exported to ONNX (opset {OPSET}).",
        "",
        f"{IMAGE_FILE}: pixels (batch, C, H, W) float32, preprocessed as {PREPROCESS_FILE} says -> image_features",
        f"{TEXT_FILE}: {', '.join(keys)} (batch, length) int64 -> text_features (unnormalised embeddings)",
        "",
        "Run them with onnxruntime alone (no rcc, no torch):",
        "",
        "    import onnxruntime as ort",
        f'    image = ort.InferenceSession("DIR/{IMAGE_FILE}", providers=["CPUExecutionProvider"])',
        '    embedding = image.run(None, {"pixels": pixels})[0]',
        f'    text = ort.InferenceSession("DIR/{TEXT_FILE}", providers=["CPUExecutionProvider"])',
        f"    embedding = text.run(None, {{{feeds}}})[0]",
        "",
        "Measured at export against rcc's own outputs on sample inputs (onnxruntime CPU):",
        f"  image encoder: max |difference| {image.max_abs:.3g}, lowest cosine {image.min_cosine:.6f}",
        f"  text encoder:  max |difference| {text.max_abs:.3g}, lowest cosine {text.min_cosine:.6f}",
        "Int8 layers quantise activations at run time (onnxruntime per tensor, rcc's CPU kernel per",
        "tensor too, rounding differs slightly), so int8 models differ more than float ones.",
        "",
        *(["Notes:"] + [f"  - {note}" for note in notes] + [""] if notes else []),
        "(DIR: this directory.)",
    ]
    (out / README).write_text("\n".join(lines) + "\n")
