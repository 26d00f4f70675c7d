"""One interface for every vision-language model rcc can compress and evaluate."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from PIL import Image
from torch import nn

from rcc.errors import EvalError
from rcc.schema.layers import LayerInfo, Tower

TextBatch = dict[str, torch.Tensor]


def real_tokens(tokens: TextBatch) -> torch.Tensor:
    """Which token positions are text: the attention mask, else ids ≠ 0 (pad in OpenCLIP / BERT)."""
    mask = tokens.get("attention_mask")
    return mask.bool() if mask is not None else tokens["input_ids"] != 0


def cut_to_longest(tokens: TextBatch) -> TextBatch:
    """Every tensor of the batch without the trailing positions that are padding in every row."""
    used = real_tokens(tokens).any(dim=0).nonzero()
    width = int(used[-1]) + 1 if used.numel() else 1
    return {k: v[:, :width] for k, v in tokens.items()}


class VLModel(ABC):
    """A loaded model: its torch module plus the knowledge of how to feed and measure it.

    Subclasses name their family, tokenise, preprocess, encode, and list their layers.
    ``encode_image`` / ``encode_text`` return unnormalised embeddings; callers normalise.
    """

    family: str = ""
    tasks: frozenset[str] = frozenset({"zeroshot", "retrieval"})

    def __init__(self, spec: str, module: nn.Module):
        self.spec = spec
        self.module = module.eval()

    # -- feeding -------------------------------------------------------------------------
    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        """Token tensors for a batch of texts (always a dict: input_ids [+ attention_mask])."""

    @abstractmethod
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The model's own preprocessing of one PIL image into a (C, H, W) float tensor."""

    def preprocess_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.preprocess(img) for img in images])

    def trim_text_padding(self, tokens: TextBatch) -> TextBatch:
        """The batch cut to its longest text, where that cannot change what real tokens compute.

        Calibration only records real tokens, so positions past every text's end are wasted
        work (64 sentences of about 17 tokens in OpenCLIP's 77 positions: three quarters).
        Models whose real tokens attend to padding must keep it: the default keeps the batch.
        """
        return tokens

    # -- encoding ------------------------------------------------------------------------
    @abstractmethod
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, D) for preprocessed pixels (B, C, H, W)."""

    @abstractmethod
    def encode_text(self, tokens: TextBatch) -> torch.Tensor:
        """Text embeddings (B, D) for a token batch."""

    def encode_text_for_export(self, tokens: TextBatch) -> torch.Tensor:
        """``encode_text`` as one code path for every text length a trimmed batch can have (what an
        exporter traces with a dynamic length); the default is ``encode_text`` itself."""
        return self.encode_text(tokens)

    def generate_captions(self, pixels: torch.Tensor, max_new_tokens: int = 30, num_beams: int = 1) -> list[str]:
        raise EvalError(f"model {self.spec!r} cannot caption; allowed tasks: {sorted(self.tasks)}")

    # -- image-grounded text (BLIP's fusion encoder and caption decoder) ------------------
    # A model whose text path attends to the image (cross-attention) says so with
    # ``grounds_text``; calibration, ITM re-ranking, caption probes and recovery training then
    # run image–text pairs through it: ``image_states`` once per image, ``grounded_tokens`` for
    # the texts, ``ground_text`` for the pairs.

    @property
    def embeds_text(self) -> bool:
        """Whether ``encode_text`` works: a text embedding to match images with (zero-shot, retrieval)."""
        return bool({"zeroshot", "retrieval"} & set(self.tasks))

    @property
    def grounds_text(self) -> bool:
        """Whether a text path of this model reads the image (cross-attention)."""
        return False

    @property
    def can_match(self) -> bool:
        """Whether the model has an image–text matching (ITM) head over grounded text."""
        return False

    @property
    def can_caption(self) -> bool:
        return "caption" in self.tasks

    def image_states(self, pixels: torch.Tensor) -> torch.Tensor:
        """The image's token states (B, N, D) that grounded text attends to."""
        raise EvalError(f"model {self.spec!r} has no image-grounded text path")

    def image_embedding(self, states: torch.Tensor) -> torch.Tensor:
        """``encode_image`` from ``image_states``: encode_image(p) = image_embedding(image_states(p))."""
        raise EvalError(f"model {self.spec!r} has no image-grounded text path")

    def grounded_tokens(self, texts: Sequence[str]) -> TextBatch:
        """Token batch of texts for ``ground_text`` (a decoder's starts with its bos token)."""
        raise EvalError(f"model {self.spec!r} has no image-grounded text path")

    def ground_text(self, states: torch.Tensor, tokens: TextBatch) -> torch.Tensor:
        """Run row i of ``tokens`` attending to image states ``states[i]``: fused states or caption logits."""
        raise EvalError(f"model {self.spec!r} has no image-grounded text path")

    def match_logits(self, states: torch.Tensor, tokens: TextBatch) -> torch.Tensor:
        """ITM logits (B, 2) = (no match, match) of row i of ``tokens`` against image states ``states[i]``."""
        raise EvalError(f"model {self.spec!r} has no image-text matching head; allowed: a BLIP retrieval model")

    def reads_image_states(self, layer: LayerInfo) -> bool:
        """Whether a layer's input rows are image tokens (vision tower, cross-attention keys and values)."""
        return layer.tower == "vision"

    # -- structure -----------------------------------------------------------------------
    @abstractmethod
    def layers(self) -> list[LayerInfo]:
        """Every compressible weight matrix, in model order."""

    @abstractmethod
    def tower_of_param(self, name: str) -> Tower | None:
        """Which tower a state-dict entry belongs to (None: shared, e.g. logit_scale)."""

    @property
    def layer_index(self) -> dict[str, LayerInfo]:
        # Not cached: compression replaces modules (unfused attention, factorised layers).
        return {layer.name: layer for layer in self.layers()}

    # -- placement -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> VLModel:
        self.module.to(device=device, dtype=dtype)
        return self

    def tokens_to_device(self, tokens: TextBatch) -> TextBatch:
        return {k: v.to(self.device) for k, v in tokens.items()}

    # -- identity ------------------------------------------------------------------------
    def fingerprint(self, tower: Tower | None = None) -> str:
        """A content hash of the weights of one tower (or of the whole model).

        Keys the feature cache: embeddings of an unchanged tower are reused, any weight
        change in that tower (compression, training) gives a new key.
        """
        digest = hashlib.blake2b(self.family.encode(), digest_size=16)
        for name, tensor in sorted(self.module.state_dict().items()):
            if tower is not None and self.tower_of_param(name) != tower:
                continue
            digest.update(name.encode())
            digest.update(str(tensor.dtype).encode())
            data = tensor.detach().contiguous().cpu().reshape(-1)  # 0-dim tensors cannot change dtype view
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        return digest.hexdigest()

    def num_parameters(self) -> int:
        """Every weight entry, int8 values and their scales included (they are parameters stored as buffers)."""
        from rcc.models.stored_weights import stored_tensors

        return sum(p.numel() for p in stored_tensors(self.module))
