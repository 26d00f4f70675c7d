"""Calibration statistics: what each layer sees as input on a small, fixed set of data.

For a layer with inputs X (in × N, one column per token), we keep
- ``sq_norms`` = Σ_t x_t² per input channel (so ‖X_j‖₂ = √sq_norms_j, for Wanda),
- ``absmax`` = max_t |x_tj| per input channel (SmoothQuant's activation range, for the quant stage), and
- ``gram`` = X Xᵀ (in × in, for whitened SVD and AlphaEdit), only when asked: it is in² floats.
Images feed the vision tower, texts the text tower; layers no input reaches get no entry
(bare projection parameters, cross-attention in unimodal encoding): stages fall back to
data-free behaviour for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rcc.compression.layers import layer_module
from rcc.data.types import ImageList
from rcc.eval.encode import CancelCheck, Progress, check_cancel
from rcc.models.adapter import VLModel, real_tokens
from rcc.models.inventory import LayerInfo


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

    @property
    def norms(self) -> torch.Tensor:
        return self.sq_norms.sqrt()


@dataclass(frozen=True)
class CalibrationData:
    """What calibration runs through the model: images (vision) and texts (text tower)."""

    images: ImageList | None
    texts: tuple[str, ...]


@torch.no_grad()
def collect_input_stats(
    model: VLModel, layers: Sequence[LayerInfo], data: CalibrationData, gram: bool = True,
    batch_size: int = 64, progress: Progress | None = None, cancel: CancelCheck | None = None,
) -> dict[str, InputStats]:
    """Input statistics of every given layer that is a Linear / LowRankLinear module."""
    stats: dict[str, InputStats] = {}
    handles = []
    # Token rows that are real text (not padding) for the batch in flight; None = all rows.
    valid_rows: list[torch.Tensor | None] = [None]

    def hook_for(name: str):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            valid = valid_rows[0]
            if valid is not None and valid.numel() == x.shape[0]:
                x = x[valid.to(x.device)]
            entry = stats.get(name)
            if entry is None:
                entry = stats[name] = InputStats(torch.zeros(x.shape[1], device=x.device),
                                                 torch.zeros(x.shape[1], x.shape[1], device=x.device) if gram else None,
                                                 0, torch.zeros(x.shape[1], device=x.device))
            entry.sq_norms += (x * x).sum(dim=0)
            if x.shape[0]:
                torch.maximum(entry.absmax, x.abs().amax(dim=0), out=entry.absmax)
            if entry.gram is not None:
                entry.gram.addmm_(x.t(), x)
            entry.count += x.shape[0]
        return hook

    for layer in layers:
        target = layer_module(model.module, layer)
        if target is not None:
            handles.append(target.register_forward_pre_hook(hook_for(layer.name)))
    try:
        images = data.images
        total = (len(images) if images is not None else 0) + len(data.texts)
        done = 0
        if images is not None:
            for start in range(0, len(images), batch_size):
                check_cancel(cancel)
                batch = [images[i] for i in range(start, min(start + batch_size, len(images)))]
                model.encode_image(model.preprocess_batch(batch).to(model.device, model.dtype))
                done += len(batch)
                if progress:
                    progress(done, total, "calibration images")
        texts = list(data.texts)
        if texts and {"zeroshot", "retrieval"} & set(model.tasks):
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
                    progress(done, total, "calibration texts")
    finally:
        valid_rows[0] = None
        for handle in handles:
            handle.remove()
    return stats

