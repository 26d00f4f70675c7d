"""rcc.eval encoding throughput vs a plain open_clip forward on the same batches.

    python -m bench.eval_throughput [--batches 3] [--batch-size 32] [--repeats 3]

Rows: ViT-B-32 (random weights) and rcc-mini; images/s and texts/s from PIL images and raw
strings (preprocessing and tokenising included on both sides), and the ratio rcc / plain.
Goal: ratio ≥ 0.9.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.report import median_seconds, report  # noqa: E402
from rcc.data.images import ArrayImages  # noqa: E402
from rcc.eval.encode import encode_images, encode_texts  # noqa: E402
from rcc.models.registry import load_model  # noqa: E402


def _inputs(n_images: int, n_texts: int, size: int):
    rng = np.random.default_rng(0)
    images = ArrayImages(rng.integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8))
    words = ["a", "photo", "of", "the", "small", "red", "dog", "number", "seven", "on", "grass", "blurry"]
    texts = [" ".join(rng.choice(words, size=8)) for _ in range(n_texts)]
    return images, texts


def _plain_images(model, images, batch_size: int) -> None:
    # What a user writes with open_clip alone: its transform per image, stack, encode, normalise.
    module, transform = model.module, model._transform
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(images[i]) for i in range(start, min(start + batch_size, len(images)))])
            torch.nn.functional.normalize(module.encode_image(batch), dim=-1)


def _plain_texts(model, texts, batch_size: int) -> None:
    module, tokenizer = model.module, model._tokenizer
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            torch.nn.functional.normalize(module.encode_text(tokenizer(texts[start:start + batch_size])), dim=-1)


def measure(spec: str, image_size: int, n_images: int, n_texts: int, batch_size: int, repeats: int) -> list[list]:
    model = load_model(spec, device="cpu")
    images, texts = _inputs(n_images, n_texts, image_size)
    rows = []
    for what, count, ours, plain in (
        ("images", n_images, lambda: encode_images(model, images, batch_size=batch_size),
         lambda: _plain_images(model, images, batch_size)),
        ("texts", n_texts, lambda: encode_texts(model, texts, batch_size=batch_size),
         lambda: _plain_texts(model, texts, batch_size)),
    ):
        # Interleave the two sides so machine drift hits both alike.
        ours_t, plain_t = [], []
        for _ in range(repeats):
            ours_t.append(median_seconds(ours, repeats=1, warmup=0 if ours_t else 1))
            plain_t.append(median_seconds(plain, repeats=1, warmup=0 if plain_t else 1))
        ours_rate, plain_rate = count / float(np.median(ours_t)), count / float(np.median(plain_t))
        rows.append([spec, what, round(ours_rate, 1), round(plain_rate, 1), round(ours_rate / plain_rate, 3)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.batches * args.batch_size
    rows = measure("open_clip:ViT-B-32", 224, n, 4 * n, args.batch_size, args.repeats)
    rows += measure("rcc-mini", 32, 4 * n, 4 * n, args.batch_size, args.repeats)
    report("eval_throughput", ["model", "input", "rcc items/s", "plain items/s", "ratio"], rows,
           {"goal": "ratio >= 0.9", "met": all(row[-1] >= 0.9 for row in rows)})


if __name__ == "__main__":
    main()
