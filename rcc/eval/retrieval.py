"""Image–text retrieval recall@k, with LAION CLIP_benchmark's hit@k definitions.

The ITC figures (``text_to_image_recall@k`` …) are CLIP_benchmark's, from the embeddings alone.
Models with an image–text matching head (BLIP) also report ``itm_…`` figures: the same recall
definitions on BLIP's re-ranked scores, where each query's top ``itm_k`` ITC candidates are
re-scored by the ITM head (``rcc.eval.itm_rerank``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from rcc.data.types import CaptionDataset
from rcc.errors import EvalError
from rcc.eval.encode import CancelCheck, Progress, encode_images, encode_texts
from rcc.eval.itm_rerank import RerankedScores, check_itm_k, itm_rerank
from rcc.models.adapter import VLModel

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


@dataclass(frozen=True)
class RetrievalResult:
    """Recall@k in both directions; ``text_to_image[i]`` is the recall at ``ks[i]``."""

    ks: tuple[int, ...]
    text_to_image: tuple[float, ...]
    image_to_text: tuple[float, ...]
    n_images: int
    n_texts: int
    itm: RetrievalResult | None = None  # the same recalls after ITM re-ranking, if run
    itm_k: int = 0
    itm_pairs: int = 0

    def recall(self, direction: str, k: int) -> float:
        """One recall value; ``direction`` is ``"text_to_image"`` or ``"image_to_text"``."""
        if direction not in ("text_to_image", "image_to_text"):
            raise EvalError(f"unknown retrieval direction {direction!r}; allowed: text_to_image, image_to_text")
        if k not in self.ks:
            raise EvalError(f"recall@{k} was not computed; computed ks: {list(self.ks)}")
        return getattr(self, direction)[self.ks.index(k)]

    def as_dict(self) -> dict:
        out: dict = {"n_images": self.n_images, "n_texts": self.n_texts}
        for k, value in zip(self.ks, self.text_to_image):
            out[f"text_to_image_recall@{k}"] = value
        for k, value in zip(self.ks, self.image_to_text):
            out[f"image_to_text_recall@{k}"] = value
        if self.itm is not None:
            out["itm_k"] = self.itm_k
            out["itm_pairs"] = self.itm_pairs
            out.update({f"itm_{name}": value for name, value in self.itm.as_dict().items() if "@" in name})
        return out


def retrieval_recall(
    scores: torch.Tensor, text_to_image: Sequence[int], ks: Sequence[int] = DEFAULT_KS
) -> RetrievalResult:
    """Recall@k from a similarity matrix ``scores[image, text]``, as CLIP_benchmark defines it.

    text→image R@k = mean_t 1[img(t) ∈ topk_i scores[:, t]]
    image→text R@k = mean_i 1[∃ t with img(t) = i, t ∈ topk_t scores[i, :]]

    A k larger than the number of candidates is clamped to it (every candidate is then in
    the top k). Ties are broken by ``torch.topk``, which picks among equal scores in an
    unspecified order, as CLIP_benchmark does; a single top-max(k) call is sliced for the
    smaller ks, so recall never decreases as k grows.
    """
    if scores.ndim != 2:
        raise EvalError(f"scores must be a 2-D (n_images, n_texts) matrix, got shape {tuple(scores.shape)}")
    n_images, n_texts = scores.shape
    if n_images == 0 or n_texts == 0:
        raise EvalError(f"retrieval needs at least one image and one text, got {n_images} images, {n_texts} texts")
    owner = torch.as_tensor(list(text_to_image), dtype=torch.long)
    if owner.shape != (n_texts,):
        raise EvalError(f"text_to_image has {owner.numel()} entries; it must have one per text ({n_texts})")
    if owner.min() < 0 or owner.max() >= n_images:
        raise EvalError(f"text_to_image holds image indices outside 0..{n_images - 1}")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise EvalError(f"ks must be positive integers, got {list(ks)}")

    scores = scores.detach().float().cpu()

    # text→image: each text ranks the images (one topk for the largest k, prefix-sliced).
    k_img = min(max(ks), n_images)
    top_images = scores.t().topk(k_img, dim=1).indices  # (n_texts, k_img)
    t2i_hits = (top_images == owner[:, None]).cumsum(dim=1) > 0  # hit within the first j+1

    # image→text: each image ranks the texts; a hit is any of its own captions.
    k_txt = min(max(ks), n_texts)
    top_texts = scores.topk(k_txt, dim=1).indices  # (n_images, k_txt)
    own = owner[top_texts] == torch.arange(n_images)[:, None]
    i2t_hits = own.cumsum(dim=1) > 0

    t2i = tuple(t2i_hits[:, min(k, n_images) - 1].float().mean().item() for k in ks)
    i2t = tuple(i2t_hits[:, min(k, n_texts) - 1].float().mean().item() for k in ks)
    return RetrievalResult(ks=ks, text_to_image=t2i, image_to_text=i2t, n_images=n_images, n_texts=n_texts)


def evaluate_retrieval(
    model: VLModel,
    dataset: CaptionDataset,
    batch_size: int = 64,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    precision: str = "fp32",
    itm_k: int = 0,
) -> RetrievalResult:
    """Encode every image and caption, score ``normalise(image) @ normalise(text)ᵀ``, take recall@k.

    ``itm_k`` > 0 (models with an ITM head): also re-rank each query's top ``itm_k`` candidates
    with it, as BLIP does, and report those recalls too (``result.itm``).
    ``progress`` is called per batch, first with ``(done, n_images, "images")``, then
    ``(done, n_texts, "texts")`` (then ``(done, pairs, "ITM pairs")``); ``cancel`` is polled
    before each batch (raises ``Cancelled``).
    """
    if "retrieval" not in model.tasks:
        raise EvalError(f"model {model.spec!r} cannot do retrieval; allowed tasks: {sorted(model.tasks)}")
    if batch_size < 1:
        raise EvalError(f"batch_size must be at least 1, got {batch_size}")
    n_images = len(dataset.images)
    if len(dataset.captions) != n_images:
        raise EvalError(f"dataset {dataset.spec!r} has {n_images} images but {len(dataset.captions)} caption lists")
    texts, owner = flatten_captions(dataset)
    if n_images == 0 or not texts:
        raise EvalError(f"dataset {dataset.spec!r} has no images or no captions to retrieve")

    check_itm_k(itm_k, model)

    image_emb = encode_images(model, dataset.images, batch_size, precision, progress, cancel)
    text_emb = encode_texts(model, texts, batch_size, precision, progress, cancel)
    itc = image_emb @ text_emb.t()
    result = retrieval_recall(itc, owner, ks)
    if not itm_k:
        return result
    reranked = itm_rerank(model, dataset.images, texts, itc, itm_k, batch_size, precision, progress, cancel)
    return replace(result, itm=reranked_recall(reranked, owner, ks), itm_k=itm_k, itm_pairs=reranked.pairs)


def reranked_recall(scores: RerankedScores, text_to_image: Sequence[int], ks: Sequence[int] = DEFAULT_KS
                    ) -> RetrievalResult:
    """Recall@k of re-ranked scores: text→image from the matrix ranking images, image→text from the other."""
    t2i = retrieval_recall(scores.text_to_image, text_to_image, ks)
    i2t = retrieval_recall(scores.image_to_text, text_to_image, ks)
    return replace(t2i, image_to_text=i2t.image_to_text)


def flatten_captions(dataset: CaptionDataset) -> tuple[list[str], list[int]]:
    """All captions in dataset order, and the index of the image each one describes."""
    texts: list[str] = []
    owner: list[int] = []
    for image_index, captions in enumerate(dataset.captions):
        texts.extend(captions)
        owner.extend([image_index] * len(captions))
    return texts, owner
