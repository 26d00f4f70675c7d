"""Calibration statistics: what each layer sees as input on a small, fixed set of data.

For a layer with inputs X (in × N, one column per token), we keep
- ``sq_norms`` = Σ_t x_t² per input channel (so ‖X_j‖₂ = √sq_norms_j, for Wanda),
- ``absmax`` = max_t |x_tj| per input channel (SmoothQuant's activation range, for the quant stage),
- ``sums`` = Σ_t x_t per input channel (the mean μ = sums / count, for structured pruning's bias
  compensation and fluctuation scores), and
- ``gram`` = X Xᵀ (in × in, for whitened SVD and AlphaEdit), only when asked: it is in² floats.
Images feed the vision tower, texts the text tower, and image–text pairs the paths where text
attends to the image (``VLModel.grounds_text``: BLIP's fusion encoder, with its cross-attention,
and its caption decoder, teacher-forced): each image's token states are computed once and
its paired text is run against them, so every BLIP layer gets inputs. Layers no input reaches
get no entry (bare projection parameters): stages fall back to data-free behaviour for them.
Text rows that are padding are left out; rows of image tokens (the vision tower, cross-attention
keys and values) are all kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rcc.compression.layers import layer_module
from rcc.data.types import ImageList
from rcc.eval.encode import CancelCheck, Progress, check_cancel
from rcc.models.adapter import VLModel, real_tokens
from rcc.schema.layers import LayerInfo


# Texts per calibration batch: small batches of length-sorted texts waste little on padding
# (bench.speed's 64 sentences in OpenCLIP's 77 positions: 4,928 positions uncut, 3,520 cut as one
# batch, 1,648 sorted and cut in batches of 16).
_TEXT_BATCH = 16


@dataclass
class InputStats:
    sq_norms: torch.Tensor
    gram: torch.Tensor | None
    count: int
    absmax: torch.Tensor | None = None
    sums: torch.Tensor | None = None

    @property
    def norms(self) -> torch.Tensor:
        return self.sq_norms.sqrt()

    @property
    def mean(self) -> torch.Tensor | None:
        return None if self.sums is None or not self.count else self.sums / self.count

    def centred_gram(self, device=None) -> torch.Tensor:
        """Σ = C − s sᵀ / N (the Gram of the inputs less their mean) in float64; C itself without sums."""
        gram = self.gram.to(device=device, dtype=torch.float64)
        if self.sums is None or not self.count:
            return gram
        sums = self.sums.to(device=gram.device, dtype=torch.float64)
        return gram - torch.outer(sums, sums) / self.count

    @property
    def sq_deviations(self) -> torch.Tensor | None:
        """Σ_t (x_tj − μ_j)² = Σ x² − (Σ x)² / N per channel (clamped at 0 against rounding)."""
        if self.sums is None or not self.count:
            return None
        return (self.sq_norms - self.sums * self.sums / self.count).clamp_min(0)


@dataclass(frozen=True)
class CalibrationData:
    """What calibration runs through the model: images (vision), texts (text tower), and one
    text per image (``pair_texts``, empty or as long as ``images``: its caption or class prompt)
    for the image-grounded text paths of models that have them."""

    images: ImageList | None
    texts: tuple[str, ...]
    pair_texts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.pair_texts and len(self.pair_texts) != (len(self.images) if self.images is not None else 0):
            raise ValueError(f"pair_texts has {len(self.pair_texts)} texts for "
                             f"{0 if self.images is None else len(self.images)} images; it needs one per image")


@torch.no_grad()
def collect_input_stats(
    model: VLModel, layers: Sequence[LayerInfo], data: CalibrationData, gram: bool = True,
    batch_size: int = 64, progress: Progress | None = None, cancel: CancelCheck | None = None,
) -> dict[str, InputStats]:
    """Input statistics of every given layer that is a Linear / LowRankLinear module.

    ``progress(done, total, what)`` is called once at the start (``done = 0``) and after every
    batch, ``total`` counting the images and texts run through the model.
    """
    stats: dict[str, InputStats] = {}
    handles = []
    # Token rows that are real text (not padding) for the batch in flight; None = all rows.
    valid_rows: list[torch.Tensor | None] = [None]

    def hook_for(name: str, image_rows: bool):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            valid = valid_rows[0]
            if valid is not None and not image_rows and valid.numel() == x.shape[0]:
                x = x[valid.to(x.device)]
            entry = stats.get(name)
            if entry is None:
                width = x.shape[1]
                entry = stats[name] = InputStats(torch.zeros(width, device=x.device),
                                                 torch.zeros(width, width, device=x.device) if gram else None,
                                                 0, absmax=torch.zeros(width, device=x.device),
                                                 sums=torch.zeros(width, device=x.device))
            entry.sq_norms += (x * x).sum(dim=0)
            if x.shape[0]:
                torch.maximum(entry.absmax, x.abs().amax(dim=0), out=entry.absmax)
            entry.sums += x.sum(dim=0)
            if entry.gram is not None:
                entry.gram.addmm_(x.t(), x)
            entry.count += x.shape[0]
        return hook

    for layer in layers:
        target = layer_module(model.module, layer)
        if target is not None:
            handles.append(target.register_forward_pre_hook(hook_for(layer.name, model.reads_image_states(layer))))
    try:
        images = data.images
        texts = list(data.texts) if model.embeds_text else []
        total = (len(images) if images is not None else 0) + len(texts)
        done = 0
        pairs = bool(data.pair_texts) and model.grounds_text
        if progress:  # the phase shows from its start, not after its first batch
            progress(0, total, "images" if images is not None else "texts")
        if images is not None:
            for start in range(0, len(images), batch_size):
                check_cancel(cancel)
                stop = min(start + batch_size, len(images))
                pixels = model.preprocess_batch([images[i] for i in range(start, stop)]).to(model.device, model.dtype)
                if pairs:
                    states = model.image_states(pixels)
                    model.image_embedding(states)
                    tokens = model.trim_text_padding(model.grounded_tokens(data.pair_texts[start:stop]))
                    valid_rows[0] = real_tokens(tokens).reshape(-1)
                    model.ground_text(states, tokens)
                    valid_rows[0] = None
                else:
                    model.encode_image(pixels)
                done = stop
                if progress:
                    progress(done, total, "images and their texts" if pairs else "images")
        if texts:
            # Sorted by length and cut to each batch's longest text (where the model allows it),
            # so short sentences do not pay for the longest one's padding.
            tokens = model.tokenize(texts)
            order = torch.argsort(real_tokens(tokens).sum(dim=1), stable=True)
            for rows in order.split(min(batch_size, _TEXT_BATCH)):
                check_cancel(cancel)
                batch = model.trim_text_padding({k: v[rows] for k, v in tokens.items()})
                valid_rows[0] = real_tokens(batch).reshape(-1)
                model.encode_text(model.tokens_to_device(batch))
                done += len(rows)
                if progress:
                    progress(done, total, "texts")
    finally:
        valid_rows[0] = None
        for handle in handles:
            handle.remove()
    return stats

