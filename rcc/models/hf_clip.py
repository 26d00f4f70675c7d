"""Hugging Face ``transformers`` CLIP (``CLIPModel``) as a ``VLModel``.

Also home of the loading helpers shared with ``hf_blip``: turning a failed ``from_pretrained``
into a one-line ``ModelSpecError`` and loading the tokenizer and image processor that ship with
a checkpoint. ``trust_remote_code`` is never passed, so only built-in ``transformers`` code runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from PIL import Image
from torch import nn

from rcc.errors import ModelSpecError
from rcc.models.adapter import TextBatch, VLModel, cut_to_longest
from rcc.models.inventory import block_index, linear_layers
from rcc.schema.layers import LayerInfo, LayerKind, Tower
from rcc.models.load_errors import LOAD_ERRORS, load_reason

ACCEPTED_FORMS = "hf:ID_OR_LOCAL_DIR, hf-blip:ID_OR_LOCAL_DIR"


T = TypeVar("T")


# -- loading helpers shared by the Hugging Face adapters ---------------------------------------

def resolve_source(source: str) -> str:
    """A local path with ``~`` expanded; hub ids pass through unchanged."""
    return os.path.expanduser(source) if source.startswith("~") else source


def _looks_like_path(source: str) -> bool:
    return source.startswith((os.sep, ".", "~")) or source.count("/") > 1


def load_failure_reason(source: str, exc: BaseException) -> str:
    """A short, human reason why ``source`` could not be loaded."""
    if os.path.isdir(source):
        if not os.path.isfile(os.path.join(source, "config.json")):
            return f"directory {source!r} has no config.json"
    elif os.path.exists(source):
        return f"{source!r} is a file, not a model directory"
    elif _looks_like_path(source):
        return f"no such directory {source!r}"
    elif "couldn't connect" in str(exc) or "offline" in str(exc).lower():
        return ("not a local directory and not in the Hugging Face cache, "
                "and the hub is unreachable (offline)")
    return load_reason(exc)


def spec_error(spec: str, reason: str) -> ModelSpecError:
    """The one-line error every Hugging Face loading failure becomes."""
    return ModelSpecError(f"cannot load {spec!r}: {reason}; accepted forms: {ACCEPTED_FORMS}")


def load_or_spec_error(spec: str, source: str, load: Callable[[], T]) -> T:
    """Run ``load()``; a source-related failure becomes a ``ModelSpecError`` naming ``spec``."""
    try:
        return load()
    except LOAD_ERRORS as exc:
        raise spec_error(spec, load_failure_reason(source, exc)) from exc


def load_hf_config(spec: str, source: str, model_type: str, hint: str):
    """The checkpoint's config, checked to be of ``model_type`` (``hint`` says what to use instead)."""
    from transformers import AutoConfig

    config = load_or_spec_error(spec, source, lambda: AutoConfig.from_pretrained(source))
    if config.model_type != model_type:
        raise spec_error(spec, f"checkpoint is a {config.model_type!r} model, not {model_type!r} ({hint})")
    return config


def load_hf_preprocessors(spec: str, source: str):
    """(tokenizer, image processor) saved with the checkpoint."""
    from transformers import AutoImageProcessor, AutoTokenizer

    tokenizer = load_or_spec_error(spec, source, lambda: AutoTokenizer.from_pretrained(source))
    # transformers 5 builds a tokenizer from the config alone when no tokenizer files exist; it
    # knows only its special tokens and would silently map every text to unknowns.
    if len(tokenizer.get_vocab()) <= len(set(tokenizer.all_special_tokens)):
        raise spec_error(spec, "no tokenizer saved with the checkpoint "
                               "(tokenizer.json, vocab.json or vocab.txt)")
    image_processor = load_or_spec_error(spec, source, lambda: AutoImageProcessor.from_pretrained(source))
    return tokenizer, image_processor


def text_max_length(tokenizer, max_positions: int) -> int:
    """Truncation length: the tokenizer's limit, never past the model's position table."""
    limit = getattr(tokenizer, "model_max_length", None) or max_positions
    return int(min(limit, max_positions))


class HFPreprocessing:
    """Tokenising and image preprocessing with a checkpoint's own tokenizer and image processor."""

    tokenizer: object
    image_processor: object
    max_text_length: int

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_length,
            return_tensors="pt",
        )
        # Only what the text towers take: BERT-style tokenizers also emit token_type_ids.
        return {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}

    def trim_text_padding(self, tokens: TextBatch) -> TextBatch:
        # Hugging Face text towers mask padding out of attention and pooling: cutting it is exact.
        return cut_to_longest(tokens)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        pixels = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        return pixels[0].float()

    def preprocess_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        # One processor call for the whole batch: same numbers as per image, less overhead.
        if not images:
            return torch.empty(0)
        return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"].float()


# -- CLIP ---------------------------------------------------------------------------------------

_CLIP_KINDS: dict[str, LayerKind] = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.out_proj": "attn_out",
    "mlp.fc1": "mlp_in",
    "mlp.fc2": "mlp_out",
}

_CLIP_TOWERS: dict[str, Tower] = {
    "vision_model": "vision",
    "visual_projection": "vision",
    "text_model": "text",
    "text_projection": "text",
}


def classify_clip_linear(name: str) -> tuple[Tower, int | None, LayerKind] | None:
    """(tower, block, kind) of a ``CLIPModel`` Linear, e.g. ``vision_model.encoder.layers.3.mlp.fc1``."""
    root = name.split(".", 1)[0]
    if root in ("visual_projection", "text_projection") and name == root:
        return _CLIP_TOWERS[root], None, "projection"
    if root not in ("vision_model", "text_model"):
        return None
    block = block_index(name, "layers")
    if block is None:
        return None
    rest = name.split(f".layers.{block}.", 1)[1]
    kind = _CLIP_KINDS.get(rest)
    return None if kind is None else (_CLIP_TOWERS[root], block, kind)


class HFCLIPModel(HFPreprocessing, VLModel):
    """A ``transformers.CLIPModel`` with its own tokenizer and image processor."""

    family = "hf_clip"
    tasks = frozenset({"zeroshot", "retrieval"})

    def __init__(self, spec: str, module: nn.Module, tokenizer, image_processor):
        super().__init__(spec, module)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_text_length = text_max_length(
            tokenizer, module.config.text_config.max_position_embeddings)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """visual_projection(pooled CLS state), as ``CLIPModel.get_image_features``."""
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        return self.module.get_image_features(pixel_values=pixels).pooler_output

    def encode_text(self, tokens: TextBatch) -> torch.Tensor:
        """text_projection(EOS state), as ``CLIPModel.get_text_features``."""
        tokens = self.tokens_to_device(tokens)
        return self.module.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask"),
        ).pooler_output

    def layers(self) -> list[LayerInfo]:
        return linear_layers(self.module, classify_clip_linear)

    def tower_of_param(self, name: str) -> Tower | None:
        return _CLIP_TOWERS.get(name.split(".", 1)[0])


def load_hf_clip(spec: str, source: str) -> HFCLIPModel:
    """Load a ``CLIPModel`` (hub id or local dir) in fp32 with its tokenizer and image processor."""
    from transformers import CLIPModel

    source = resolve_source(source)
    load_hf_config(spec, source, "clip", "use hf-blip: for BLIP checkpoints")
    module = load_or_spec_error(
        spec, source, lambda: CLIPModel.from_pretrained(source, dtype=torch.float32))
    tokenizer, image_processor = load_hf_preprocessors(spec, source)
    return HFCLIPModel(spec, module, tokenizer, image_processor)
