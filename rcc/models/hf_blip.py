"""Hugging Face ``transformers`` BLIP as a ``VLModel``: retrieval (ITC) or captioning.

``BlipForImageTextRetrieval`` gives zero-shot and retrieval with exactly the embeddings BLIP's
image-text contrastive (ITC) similarity uses::

    image = vision_proj(vision_model(pixels).last_hidden_state[:, 0])
    text  = text_proj(text_encoder(ids, mask).last_hidden_state[:, 0])   # unimodal: no image,
                                                                         # so no cross-attention

``BlipForConditionalGeneration`` gives captioning (greedy or beam search).

Both classes ground text in the image through cross-attention, as transformers runs them:

    states = vision_model(pixels).last_hidden_state                     # (B, N, D), every token
    ITM    = itm_head(text_encoder(ids, mask, encoder_hidden_states=states)[:, 0])   # (no, yes)
    logits = text_decoder(ids', mask, encoder_hidden_states=states)     # ids' = ids with [0] = bos

the retrieval model's ITM exactly as ``BlipForImageTextRetrieval(use_itm_head=True)`` (first
token as the tokenizer gives it: [CLS]; the original BLIP code swaps in an [ENC] token that
transformers' forward does not), the captioner's teacher forcing as ``generate`` starts a prompt
(its first token replaced by bos, [DEC]). Every image token is attended (an all-ones image mask).

BLIP's vision attention stores q, k and v in one fused ``qkv`` Linear (rows stacked q, k, v);
the inventory exposes it as three row slices ``...self_attn.qkv.q`` / ``.k`` / ``.v``, like
OpenCLIP's ``in_proj``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from rcc.errors import EvalError
from rcc.models.adapter import TextBatch, VLModel
from rcc.models.hf_clip import (
    HFPreprocessing,
    load_hf_config,
    load_hf_preprocessors,
    load_or_spec_error,
    resolve_source,
    spec_error,
    text_max_length,
)
from rcc.models.inventory import block_index, linear_layers
from rcc.schema.layers import LayerInfo, LayerKind, Tower

RETRIEVAL = "BlipForImageTextRetrieval"
CAPTION = "BlipForConditionalGeneration"
ARCHITECTURE_TASKS: dict[str, frozenset[str]] = {
    RETRIEVAL: frozenset({"zeroshot", "retrieval"}),
    CAPTION: frozenset({"caption"}),
}

_VISION_KINDS: dict[str, LayerKind] = {
    "self_attn.projection": "attn_out",
    "mlp.fc1": "mlp_in",
    "mlp.fc2": "mlp_out",
    # After compression splits the fused qkv (rcc.compression.layers.SplitQKV).
    "self_attn.qkv.q": "attn_q",
    "self_attn.qkv.k": "attn_k",
    "self_attn.qkv.v": "attn_v",
}
_FUSED_QKV = "self_attn.qkv"

_TEXT_KINDS: dict[str, LayerKind] = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_out",
    "intermediate.dense": "mlp_in",
    "output.dense": "mlp_out",
}
_CROSS_KINDS: dict[str, LayerKind] = {
    f"cross{rest}": kind for rest, kind in _TEXT_KINDS.items() if rest.startswith("attention.")
}
# Cross-attention keys and values read the image's token states, not text tokens.
_CROSS_INPUTS = (".crossattention.self.key", ".crossattention.self.value")


def classify_blip_linear(name: str) -> tuple[Tower, int | None, LayerKind] | None:
    """(tower, block, kind) of a BLIP Linear; None for heads outside the embedding/decoding path."""
    root = name.split(".", 1)[0]
    if name == "vision_proj":
        return "vision", None, "projection"
    if name == "text_proj":
        return "text", None, "projection"
    if name == "text_decoder.cls.predictions.transform.dense":
        # The LM head's hidden→hidden transform. Its ``decoder`` Linear is tied to the word
        # embeddings (compressing it would silently change the input embeddings): left out.
        return "decoder", None, "projection"
    if root == "vision_model":
        block = block_index(name, "layers")
        if block is None:
            return None
        rest = name.split(f".layers.{block}.", 1)[1]
        if rest == _FUSED_QKV:
            return "vision", block, "attn_q"  # expanded into q/k/v row slices by blip_layers
        kind = _VISION_KINDS.get(rest)
        return None if kind is None else ("vision", block, kind)
    if root in ("text_encoder", "text_decoder"):
        block = block_index(name, "layer")
        if block is None:
            return None
        rest = name.split(f".layer.{block}.", 1)[1]
        if rest in _CROSS_KINDS:
            return ("fusion" if root == "text_encoder" else "decoder"), block, _CROSS_KINDS[rest]
        kind = _TEXT_KINDS.get(rest)
        if kind is None:
            return None
        return ("text" if root == "text_encoder" else "decoder"), block, kind
    return None  # itm_head, the tied LM decoder, anything unknown


def blip_layers(module: nn.Module) -> list[LayerInfo]:
    """The inventory of a BLIP module, fused vision ``qkv`` split into q, k and v row slices."""
    found: list[LayerInfo] = []
    for layer in linear_layers(module, classify_blip_linear):
        if not layer.name.endswith(f".{_FUSED_QKV}"):
            found.append(layer)
            continue
        rows, cols = layer.shape
        width = rows // 3
        for i, (suffix, kind) in enumerate((("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"))):
            found.append(replace(
                layer, name=f"{layer.name}.{suffix}", kind=kind, shape=(width, cols),
                rows=(i * width, (i + 1) * width),
            ))
    return found


def blip_tower_of_param(name: str) -> Tower | None:
    """Which tower a BLIP state-dict entry feeds (cross-attention of the text encoder: fusion)."""
    root = name.split(".", 1)[0]
    if root in ("vision_model", "vision_proj"):
        return "vision"
    if root == "text_encoder":
        return "fusion" if ".crossattention." in name else "text"
    if root == "text_proj":
        return "text"
    if root == "itm_head":
        return "fusion"
    if root == "text_decoder":
        return "decoder"
    return None


class HFBlipModel(HFPreprocessing, VLModel):
    """A ``transformers`` BLIP model (retrieval or captioning) with its own preprocessing."""

    family = "hf_blip"

    def __init__(self, spec: str, module: nn.Module, tokenizer, image_processor):
        super().__init__(spec, module)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.architecture = type(module).__name__
        if self.architecture not in ARCHITECTURE_TASKS:
            raise spec_error(spec, f"unsupported BLIP class {self.architecture}; "
                                   f"supported: {', '.join(ARCHITECTURE_TASKS)}")
        self.tasks = ARCHITECTURE_TASKS[self.architecture]
        self.max_text_length = text_max_length(
            tokenizer, module.config.text_config.max_position_embeddings)

    @property
    def can_caption(self) -> bool:
        return self.architecture == CAPTION

    @property
    def grounds_text(self) -> bool:
        return True

    @property
    def can_match(self) -> bool:
        return self.architecture == RETRIEVAL

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Retrieval: vision_proj(CLS state), as ITC uses it. Captioning: the pooled vision output."""
        return self.image_embedding(self.image_states(pixels))

    def image_states(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        return self.module.vision_model(pixel_values=pixels).last_hidden_state

    def image_embedding(self, states: torch.Tensor) -> torch.Tensor:
        if self.can_caption:
            # BlipVisionModel's pooler_output: the CLS state through post_layernorm once more.
            return self.module.vision_model.post_layernorm(states[:, 0, :])
        return self.module.vision_proj(states[:, 0, :])

    def grounded_tokens(self, texts: Sequence[str]) -> TextBatch:
        tokens = self.tokenize(texts)
        if self.can_caption:
            tokens["input_ids"][:, 0] = self.module.config.text_config.bos_token_id
        return tokens

    def ground_text(self, states: torch.Tensor, tokens: TextBatch) -> torch.Tensor:
        """Retrieval: the text encoder's states with cross-attention. Captioning: the decoder's logits."""
        tokens = self.tokens_to_device(tokens)
        image_mask = torch.ones(states.shape[:-1], dtype=torch.long, device=states.device)
        tower = self.module.text_decoder if self.can_caption else self.module.text_encoder
        out = tower(input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask"),
                    encoder_hidden_states=states, encoder_attention_mask=image_mask)
        return out.logits if self.can_caption else out.last_hidden_state

    def match_logits(self, states: torch.Tensor, tokens: TextBatch) -> torch.Tensor:
        if not self.can_match:
            return super().match_logits(states, tokens)
        return self.module.itm_head(self.ground_text(states, tokens)[:, 0, :])

    def reads_image_states(self, layer: LayerInfo) -> bool:
        return layer.tower == "vision" or layer.name.endswith(_CROSS_INPUTS)

    def encode_text(self, tokens: TextBatch) -> torch.Tensor:
        """text_proj(CLS state) of the text encoder run without an image (unimodal, as ITC)."""
        if self.can_caption:
            raise EvalError(f"model {self.spec!r} ({CAPTION}) has no text embedding; "
                            f"allowed tasks: {sorted(self.tasks)}")
        tokens = self.tokens_to_device(tokens)
        text = self.module.text_encoder(
            input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask"),
        )
        return self.module.text_proj(text.last_hidden_state[:, 0, :])

    @torch.no_grad()
    def generate_captions(self, pixels: torch.Tensor, max_new_tokens: int = 30, num_beams: int = 1) -> list[str]:
        """Greedy (``num_beams`` 1) or beam-search captions, one per image, special tokens removed."""
        if not self.can_caption:
            return super().generate_captions(pixels, max_new_tokens, num_beams)
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        ids = self.module.generate(
            pixel_values=pixels, max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams,
        )
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def layers(self) -> list[LayerInfo]:
        return blip_layers(self.module)

    def tower_of_param(self, name: str) -> Tower | None:
        return blip_tower_of_param(name)


def _blip_class(name: str):
    import transformers

    return getattr(transformers, name)


def _architecture_candidates(spec: str, config) -> Sequence[str]:
    named = [a for a in (getattr(config, "architectures", None) or []) if a]
    for arch in named:
        if arch in ARCHITECTURE_TASKS:
            return (arch,)
    if named:
        raise spec_error(spec, f"unsupported BLIP architecture {named[0]}; "
                               f"supported: {', '.join(ARCHITECTURE_TASKS)}")
    return (RETRIEVAL, CAPTION)  # config does not say: the one whose weights all load


def load_hf_blip(spec: str, source: str) -> HFBlipModel:
    """Load a BLIP checkpoint (hub id or local dir) in fp32, class chosen by its ``architectures``."""
    source = resolve_source(source)
    config = load_hf_config(spec, source, "blip", "use hf: for CLIP checkpoints")
    candidates = _architecture_candidates(spec, config)
    module = None
    for arch in candidates:
        cls = _blip_class(arch)
        loaded, info = load_or_spec_error(spec, source, lambda cls=cls: cls.from_pretrained(
            source, dtype=torch.float32, output_loading_info=True))
        # A named architecture is trusted; when guessing, a class that leaves weights random
        # (missing keys) is the wrong guess.
        if len(candidates) == 1 or not info.get("missing_keys"):
            module = loaded
            break
    if module is None:
        raise spec_error(spec, f"config names no architecture and neither "
                               f"{' nor '.join(candidates)} matches its weights")
    tokenizer, image_processor = load_hf_preprocessors(spec, source)
    return HFBlipModel(spec, module, tokenizer, image_processor)
