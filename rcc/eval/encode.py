"""Batched, cancellable encoding of images and texts: the one place models are run for eval."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from rcc.data.types import ImageList
from rcc.errors import Cancelled
from rcc.models.adapter import VLModel
from rcc.precision import autocast

Progress = Callable[[int, int, str], None]
CancelCheck = Callable[[], bool]


def check_cancel(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("cancelled by the user")


def _encode_in_batches(
    model: VLModel, total: int, batch_size: int, encode_batch: Callable[[int, int], torch.Tensor],
    what: str, precision: str, progress: Progress | None, cancel: CancelCheck | None,
) -> torch.Tensor:
    """Run ``encode_batch(start, stop)`` over [0, total) in batches: autocast, normalise, gather on CPU."""
    chunks = []
    for start in range(0, total, batch_size):
        check_cancel(cancel)
        stop = min(start + batch_size, total)
        with torch.inference_mode(), autocast(model.device.type, precision):
            features = encode_batch(start, stop)
        chunks.append(F.normalize(features.float(), dim=-1).cpu())
        if progress:
            progress(stop, total, what)
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


def encode_images(
    model: VLModel, images: ImageList, batch_size: int = 128, precision: str = "fp32",
    progress: Progress | None = None, cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """L2-normalised image embeddings (N, D), float32 on the CPU."""

    def encode_batch(start: int, stop: int) -> torch.Tensor:
        pixels = model.preprocess_batch([images[i] for i in range(start, stop)])
        return model.encode_image(pixels.to(device=model.device, dtype=model.dtype))

    return _encode_in_batches(model, len(images), batch_size, encode_batch, "images", precision, progress, cancel)


def encode_texts(
    model: VLModel, texts: Sequence[str], batch_size: int = 256, precision: str = "fp32",
    progress: Progress | None = None, cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """L2-normalised text embeddings (N, D), float32 on the CPU."""

    def encode_batch(start: int, stop: int) -> torch.Tensor:
        return model.encode_text(model.tokens_to_device(model.tokenize(texts[start:stop])))

    return _encode_in_batches(model, len(texts), batch_size, encode_batch, "texts", precision, progress, cancel)
