"""Adapter for OpenCLIP models: named configs (``open_clip:ViT-B-32[@TAG_OR_FILE]``) and
custom config files (``open_clip:path/config.json[@WEIGHTS]``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from rcc.errors import ModelSpecError
from rcc.models.adapter import TextBatch, VLModel, cut_to_longest
from rcc.models.inventory import block_index, linear_layers
from rcc.schema.layers import LAYER_KINDS, LayerInfo, LayerKind, Tower
from rcc.models.load_errors import LOAD_ERRORS, load_reason

# Last dotted component (or a distinctive suffix) of a Linear's name → its kind. Covers
# OpenCLIP's own blocks (c_fc / c_proj / out_proj) and HF text towers inside OpenCLIP (BERT).
_SUFFIX_KINDS: tuple[tuple[str, LayerKind], ...] = (
    ("attention.self.query", "attn_q"),
    ("attention.self.key", "attn_k"),
    ("attention.self.value", "attn_v"),
    ("attention.output.dense", "attn_out"),
    ("intermediate.dense", "mlp_in"),
    ("output.dense", "mlp_out"),
    ("attn.out_proj", "attn_out"),
    ("attn.in_proj.q", "attn_q"),  # after compression split the fused weight (rcc.compression.layers)
    ("attn.in_proj.k", "attn_k"),
    ("attn.in_proj.v", "attn_v"),
    ("mlp.c_fc", "mlp_in"),
    ("mlp.c_proj", "mlp_out"),
    ("q_proj", "attn_q"),
    ("k_proj", "attn_k"),
    ("v_proj", "attn_v"),
    ("attnpool.c_proj", "attn_out"),
    ("text.proj", "projection"),
    ("text_projection", "projection"),
    ("visual.head", "projection"),
)


def _kind_of(name: str) -> LayerKind | None:
    for suffix, kind in _SUFFIX_KINDS:
        if name == suffix or name.endswith("." + suffix):
            return kind
    return None


def _tower_of(name: str) -> Tower:
    return "vision" if name.startswith("visual.") else "text"


def _block_of(name: str) -> int | None:
    for marker in ("resblocks", "layer", "layers"):
        index = block_index(name, marker)
        if index is not None:
            return index
    return None


def open_clip_layers(module: nn.Module) -> list[LayerInfo]:
    """Inventory of an OpenCLIP model, fused attention split into q / k / v row slices."""

    def classify(name: str):
        kind = _kind_of(name)
        return None if kind is None else (_tower_of(name), _block_of(name), kind)

    found = linear_layers(module, classify)
    for name, child in module.named_modules():
        if isinstance(child, nn.MultiheadAttention) and child._qkv_same_embed_dim:
            width = child.embed_dim
            for part, kind in enumerate(("attn_q", "attn_k", "attn_v")):
                found.append(LayerInfo(
                    name=f"{name}.in_proj.{kind[-1]}", tower=_tower_of(name), block=_block_of(name),
                    kind=kind, shape=(width, width), param=f"{name}.in_proj_weight",
                    rows=(part * width, (part + 1) * width), heads=child.num_heads,
                ))
    for param_name in ("visual.proj", "text_projection"):
        param = dict(module.named_parameters()).get(param_name)
        if param is not None and param.dim() == 2:
            found.append(LayerInfo(
                name=param_name, tower=_tower_of(param_name), block=None, kind="projection",
                shape=(int(param.shape[1]), int(param.shape[0])), param=param_name, transposed=True,
            ))
    return sort_layers(module, found)


def sort_layers(module: nn.Module, layers: list[LayerInfo]) -> list[LayerInfo]:
    """Model order: tower by tower, blocks in order, projections last, q/k/v before out."""
    order = {name: i for i, (name, _) in enumerate(module.named_modules())}
    tower_rank = {"vision": 0, "text": 1, "fusion": 2, "decoder": 3}

    def key(layer: LayerInfo):
        owner = layer.param.rsplit(".", 1)[0]
        block = -1 if layer.block is None else layer.block
        return (tower_rank[layer.tower], layer.block is None, block, order.get(owner, 0),
                LAYER_KINDS.index(layer.kind))

    return sorted(layers, key=key)


class OpenCLIPModel(VLModel):
    """An OpenCLIP ``CLIP`` / ``CustomTextCLIP`` with its tokenizer and eval transform.

    ``config`` is the OpenCLIP model config it was built from (model_configs format, with an
    optional ``preprocess_cfg``), kept so a dense export can be reloaded by open_clip itself.
    """

    family = "open_clip"

    def __init__(self, spec: str, module: nn.Module, tokenizer, transform, config: dict | None = None):
        super().__init__(spec, module)
        self._tokenizer = tokenizer
        self._transform = transform
        self.config = config

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        return {"input_ids": self._tokenizer(list(texts))}

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._transform(image)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.module.encode_image(pixels.to(self.device, self.dtype))

    def encode_text(self, tokens: TextBatch) -> torch.Tensor:
        ids = tokens["input_ids"].to(self.device)
        if _causal_builtin_text(self.module) and ids.shape[1] < self.module.positional_embedding.shape[0]:
            return _encode_text_prefix(self.module, ids)
        return self.module.encode_text(ids)

    def encode_text_for_export(self, tokens: TextBatch) -> torch.Tensor:
        # The causal tower's prefix path covers every length up to the context (the full one too),
        # so a traced graph has no branch on the length.
        if _causal_builtin_text(self.module):
            return _encode_text_prefix(self.module, tokens["input_ids"].to(self.device))
        return self.encode_text(tokens)

    def trim_text_padding(self, tokens: TextBatch) -> TextBatch:
        # Exact for the built-in causal tower (real tokens never attend to later positions) and
        # for Hugging Face text towers (they mask padding); other towers attend to it.
        if _causal_builtin_text(self.module) or _hf_text_tower(self.module):
            return cut_to_longest(tokens)
        return tokens

    def layers(self) -> list[LayerInfo]:
        return open_clip_layers(self.module)

    def tower_of_param(self, name: str) -> Tower | None:
        if name in ("logit_scale", "logit_bias"):
            return None
        return _tower_of(name)


def _causal_builtin_text(module: nn.Module) -> bool:
    """OpenCLIP's own text tower (``CLIP``) with a causal mask and a pool that reads a real token."""
    import open_clip

    return (isinstance(module, open_clip.model.CLIP) and getattr(module, "attn_mask", None) is not None
            and getattr(module, "text_pool_type", "argmax") in ("argmax", "eos", "first"))


def _hf_text_tower(module: nn.Module) -> bool:
    # By name: open_clip.hf_model needs transformers, which plain OpenCLIP models do not.
    return type(getattr(module, "text", None)).__name__ == "HFTextEncoder"


def _encode_text_prefix(module: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``CLIP.encode_text`` on the first L ≤ context positions (the positional embedding and causal
    mask cut to L): the same output wherever the pooled token lies within them."""
    from open_clip.transformer import text_global_pool

    length = ids.shape[1]
    cast_dtype = module.transformer.get_cast_dtype()
    x = module.token_embedding(ids).to(cast_dtype) + module.positional_embedding[:length].to(cast_dtype)
    x = module.ln_final(module.transformer(x, attn_mask=module.attn_mask[:length, :length]))
    x = text_global_pool(x, ids, module.text_pool_type, eos_token_id=getattr(module, "text_eos_id", None))
    if module.text_projection is not None:
        x = module.text_projection(x) if isinstance(module.text_projection, nn.Linear) else x @ module.text_projection
    return x


FORMS = "open_clip:NAME[@PRETRAINED_TAG_OR_FILE], open_clip:CONFIG.json[@WEIGHTS]"


def load_open_clip(spec: str, target: str) -> OpenCLIPModel:
    """Load ``target`` (the part after ``open_clip:``) as an OpenCLIP model."""
    name, _, pretrained = target.partition("@")
    if not name:
        raise ModelSpecError(f"model spec {spec!r} names no model; accepted forms: {FORMS}")
    if name.endswith(".json"):
        return _from_config_file(spec, Path(name), pretrained or None)
    return _from_registry(spec, name, pretrained or None)


def _from_registry(spec: str, name: str, pretrained: str | None) -> OpenCLIPModel:
    import open_clip

    if name not in open_clip.list_models():
        raise ModelSpecError(
            f"unknown open_clip model {name!r} in {spec!r}; accepted forms: {FORMS} "
            f"(NAME one of `python -c 'import open_clip; print(open_clip.list_models())'`)"
        )
    try:
        module, _, transform = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, weights_only=True, load_weights=pretrained is not None,
        )
    except Exception as exc:  # hub unreachable offline, bad tag, unreadable or garbage file
        raise ModelSpecError(f"cannot load {spec!r}: {load_reason(exc)}; accepted forms: {FORMS}") from exc
    config = {**open_clip.get_model_config(name),
              "preprocess_cfg": dict(open_clip.get_model_preprocess_cfg(module))}
    return OpenCLIPModel(spec, module, open_clip.get_tokenizer(name), transform, config)


def _from_config_file(spec: str, path: Path, weights: str | None) -> OpenCLIPModel:
    if not path.is_file():
        raise ModelSpecError(f"model config {str(path)!r} not found (spec {spec!r}); accepted forms: {FORMS}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ModelSpecError(f"model config {str(path)!r} is not valid JSON: {load_reason(exc)}") from exc
    if not isinstance(config, dict):
        raise ModelSpecError(f"model config {str(path)!r} holds a JSON {type(config).__name__}; allowed: an "
                             f"open_clip model config object (embed_dim, vision_cfg, text_cfg)")
    module, tokenizer, transform = build_from_config(config, base_dir=path.parent, spec=spec)
    if weights:
        load_weights_file(module, Path(weights), spec)
    return OpenCLIPModel(spec, module, tokenizer, transform, config)


def build_from_config(config: dict, base_dir: Path | None = None, spec: str = "") -> tuple[nn.Module, object, object]:
    """Module, tokenizer and eval transform from an OpenCLIP config dict (model_configs format)."""
    import open_clip
    from open_clip.model import CLIP, CustomTextCLIP

    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config]
    if missing:
        raise ModelSpecError(f"model config for {spec!r} lacks {missing}; it needs embed_dim, vision_cfg, text_cfg")
    odd = next((key for key in ("vision_cfg", "text_cfg") if not isinstance(config[key], dict)), None)
    if odd:
        raise ModelSpecError(f"model config for {spec!r}: {odd} is a {type(config[odd]).__name__}; allowed: an object")
    config = dict(config)
    text_cfg = dict(config["text_cfg"])
    for key in ("hf_model_name", "hf_tokenizer_name"):
        # A relative HF path in a config file means "next to the config file".
        if base_dir is not None and text_cfg.get(key) and (base_dir / text_cfg[key]).exists():
            text_cfg[key] = str(base_dir / text_cfg[key])
    preprocess = config.pop("preprocess_cfg", {})
    custom_text = config.pop("custom_text", False) or bool(text_cfg.get("hf_model_name"))
    kwargs = {k: v for k, v in config.items() if k not in ("text_cfg",)}
    try:
        cls = CustomTextCLIP if custom_text else CLIP
        module = cls(**kwargs, text_cfg=text_cfg)
    except (TypeError, ValueError, OSError, KeyError, AttributeError, RuntimeError) as exc:
        raise ModelSpecError(f"cannot build open_clip model from config {spec!r}: {load_reason(exc)}") from exc

    context_length = text_cfg.get("context_length", 77)
    if text_cfg.get("hf_tokenizer_name"):
        tokenizer = open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length)
    else:
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    image_size = config["vision_cfg"].get("image_size", 224)
    transform = open_clip.image_transform(
        image_size, is_train=False,
        mean=preprocess.get("mean"), std=preprocess.get("std"),
        interpolation=preprocess.get("interpolation"), resize_mode=preprocess.get("resize_mode"),
    )
    return module, tokenizer, transform


def load_weights_file(module: nn.Module, path: Path, spec: str) -> None:
    """Load a full state dict from safetensors (or a weights-only torch checkpoint)."""
    if not path.is_file():
        raise ModelSpecError(f"weights file {str(path)!r} not found (spec {spec!r})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except LOAD_ERRORS as exc:
        raise ModelSpecError(f"weights file {str(path)!r} cannot be read (spec {spec!r}): {load_reason(exc)}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelSpecError(f"weights file {str(path)!r} holds no state dict (spec {spec!r}); "
                             f"allowed: a safetensors file or a torch checkpoint of name → tensor")
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise ModelSpecError(f"weights {str(path)!r} do not match the model of {spec!r}: {load_reason(exc)}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ModelSpecError(
            f"weights {str(path)!r} do not match the model of {spec!r}: "
            f"{len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected keys "
            f"(first: {(result.missing_keys or result.unexpected_keys)[0]!r})"
        )
