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


@torch.inference_mode()
def encode_images(
    model: VLModel, images: ImageList, batch_size: int = 128, precision: str = "fp32",
    progress: Progress | None = None, cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """L2-normalised image embeddings (N, D), float32 on the CPU."""
    chunks = []
    total = len(images)
    for start in range(0, total, batch_size):
        check_cancel(cancel)
        batch = [images[i] for i in range(start, min(start + batch_size, total))]
        pixels = model.preprocess_batch(batch).to(device=model.device, dtype=model.dtype)
        with autocast(model.device.type, precision):
            features = model.encode_image(pixels)
        chunks.append(F.normalize(features.float(), dim=-1).cpu())
        if progress:
            progress(min(start + batch_size, total), total, "images")
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


@torch.inference_mode()
def encode_texts(
    model: VLModel, texts: Sequence[str], batch_size: int = 256, precision: str = "fp32",
    progress: Progress | None = None, cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """L2-normalised text embeddings (N, D), float32 on the CPU."""
    chunks = []
    total = len(texts)
    for start in range(0, total, batch_size):
        check_cancel(cancel)
        tokens = model.tokens_to_device(model.tokenize(texts[start:start + batch_size]))
        with autocast(model.device.type, precision):
            features = model.encode_text(tokens)
        chunks.append(F.normalize(features.float(), dim=-1).cpu())
        if progress:
            progress(min(start + batch_size, total), total, "texts")
    return torch.cat(chunks) if chunks else torch.empty(0, 0)
