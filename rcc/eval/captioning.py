"""Image captioning quality: BLEU-4 and CIDEr with the COCO caption scorers, no Java needed.

Captions are decoded greedily by default, or by beam search (``num_beams`` > 1, transformers'
``generate``: the highest-scoring of the beams, length penalty 1), as BLIP reports COCO
captioning (3 beams).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

from rcc.data.types import CaptionDataset
from rcc.errors import EvalError
from rcc.eval.encode import CancelCheck, Progress, check_cancel
from rcc.models.adapter import VLModel

# What the Stanford PTBTokenizer turns into one of PUNCTUATIONS (quotes → `` '', brackets →
# -LRB- …, dashes → --, ellipsis → ...) is dropped here directly.
_DROPPED = frozenset(PUNCTUATIONS) | frozenset('"()[]{}…–—')
_QUOTES = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"'})
_CONTRACTION = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(
    r"n't|'(?:s|re|ve|ll|d|m)\b"  # clitics split off by the contraction rule
    r"|[^\W_]+(?:(?:[-.'/&]|(?<=\d),(?=\d))[^\W_]+)*"  # words, hyphenated words, 3.5, 1,000
    r"|\.\.\.|--"
    r"|\S"  # any other symbol on its own
)


@dataclass(frozen=True)
class CaptionScores:
    """Corpus BLEU-4 (0..1) and CIDEr (CIDEr-D style, ×10 scale as in coco-caption).

    ``cider_per_image``: each image's CIDEr (their mean is ``cider``), what per-example analyses use.
    """

    bleu4: float
    cider: float
    n_images: int
    cider_per_image: tuple[float, ...] = ()

    def as_dict(self) -> dict:
        return {"bleu4": self.bleu4, "cider": self.cider, "n_images": self.n_images}


@dataclass(frozen=True)
class CaptioningResult:
    """Scores of a model's captions on a dataset, plus every caption it generated."""

    scores: CaptionScores
    captions: tuple[str, ...]
    references: tuple[tuple[str, ...], ...]

    def as_dict(self, examples: int = 5) -> dict:
        out = self.scores.as_dict()
        out["examples"] = [
            {"generated": caption, "references": list(refs)}
            for caption, refs in zip(self.captions[:examples], self.references[:examples])
        ]
        return out


def ptb_tokenize(text: str) -> str:
    """Mimic coco-caption's PTBTokenizer: lowercase, split clitics and punctuation, drop PUNCTUATIONS.

    Differences from Stanford's tokenizer are limited to rare cases (abbreviations such as
    "u.s." lose their final period; square brackets are dropped rather than kept as -LSB-).
    """
    text = text.replace("\n", " ").translate(_QUOTES).lower()
    text = _CONTRACTION.sub(r" \1", text)
    text = re.sub(r"\bcannot\b", "can not", text)
    return " ".join(tok for tok in _TOKEN.findall(text) if tok not in _DROPPED)


def caption_scores(candidates: list[str], references: list[list[str]]) -> CaptionScores:
    """Corpus BLEU-4 (closest reference length) and CIDEr over PTB-style tokenised captions.

    BLEU-4 = BP · exp(¼ Σₙ log pₙ), pₙ clipped n-gram precision, BP = min(1, e^{1 − r/c});
    CIDEr = 10 · mean_images mean_refs mean_{n≤4} cos(tfidfₙ(cand), tfidfₙ(ref)) · e^{−(lc−lr)²/2σ²}.
    The idf comes from the references of this corpus, so a single image scores CIDEr 0.
    """
    if len(candidates) != len(references):
        raise EvalError(f"{len(candidates)} candidate captions for {len(references)} reference lists; they must match")
    if not candidates:
        raise EvalError("captioning scores need at least one image")
    for index, refs in enumerate(references):
        if not refs:
            raise EvalError(f"image {index} has no reference captions; each image needs at least one")
    res = {i: [ptb_tokenize(c)] for i, c in enumerate(candidates)}
    gts = {i: [ptb_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, per_image = Cider().compute_score(gts, res)
    return CaptionScores(bleu4=float(bleu[3]), cider=float(cider), n_images=len(candidates),
                         cider_per_image=tuple(float(v) for v in per_image))


def check_num_beams(num_beams: int) -> int:
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise EvalError(f"num_beams {num_beams!r} is invalid; allowed: an integer ≥ 1 (1: greedy decoding)")
    return num_beams


def evaluate_captioning(
    model: VLModel,
    dataset: CaptionDataset,
    batch_size: int = 16,
    max_new_tokens: int = 30,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    num_beams: int = 1,
) -> CaptioningResult:
    """Caption every image with ``model.generate_captions`` (greedy, or beam search with
    ``num_beams`` > 1) and score against the references."""
    if "caption" not in model.tasks:
        raise EvalError(f"model {model.spec!r} cannot caption; allowed tasks: {sorted(model.tasks)}")
    if batch_size < 1:
        raise EvalError(f"batch_size must be at least 1, got {batch_size}")
    if max_new_tokens < 1:
        raise EvalError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    check_num_beams(num_beams)
    n_images = len(dataset.images)
    if len(dataset.captions) != n_images:
        raise EvalError(f"dataset {dataset.spec!r} has {n_images} images but {len(dataset.captions)} caption lists")
    if n_images == 0:
        raise EvalError(f"dataset {dataset.spec!r} has no images to caption")

    generated: list[str] = []
    with torch.inference_mode():
        for start in range(0, n_images, batch_size):
            check_cancel(cancel)
            stop = min(start + batch_size, n_images)
            pixels = model.preprocess_batch([dataset.images[i] for i in range(start, stop)])
            pixels = pixels.to(device=model.device, dtype=model.dtype)
            batch = model.generate_captions(pixels, max_new_tokens=max_new_tokens, num_beams=num_beams)
            if len(batch) != stop - start:
                raise EvalError(f"model {model.spec!r} returned {len(batch)} captions for {stop - start} images")
            generated.extend(batch)
            if progress is not None:
                progress(stop, n_images, "captions")

    references = [list(refs) for refs in dataset.captions]
    scores = caption_scores(generated, references)
    return CaptioningResult(
        scores=scores, captions=tuple(generated), references=tuple(tuple(r) for r in dataset.captions)
    )
