"""ITM re-ranking, as BLIP evaluates retrieval: ITC top-k candidates, re-scored by the ITM head.

With s(i, t) the ITC cosine of image i and text t, and m(i, t) the ITM head's "match" logit of
the pair (text t run through the fusion encoder attending to image i's token states), BLIP's
evaluation (``train_retrieval.py``: ``score_matrix_i2t[i, topk] = itm[:, 1] + topk_sim``) scores

    image→text query i:  S(i, t) = m(i, t) + s(i, t)   for t among the k texts of highest s(i, ·)
    text→image query t:  S(i, t) = m(i, t) + s(i, t)   for i among the k images of highest s(·, t)

and −100 elsewhere. Here the non-candidates get ``floor + s(i, t)``, floor three below the lowest
candidate score: the same ranking within the top k (every candidate still outranks every
non-candidate), and beyond it the ITC order where BLIP's ties at −100 leave it arbitrary.
Each distinct (image, text) pair is scored once, though it may be a candidate both ways; every
image's token states are computed once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rcc.data.types import ImageList
from rcc.errors import EvalError
from rcc.eval.encode import CancelCheck, Progress, check_cancel
from rcc.models.adapter import VLModel
from rcc.precision import autocast

# BLIP re-ranks the top 256 (COCO) or 128 (Flickr30k) on 8 GPUs. Every pair re-projects its
# image's 577 tokens into each cross-attention's keys and values (~16 GFLOP per pair for
# BLIP-base at 384 px; 1.2 s per pair measured on 2 loaded CPU cores), so the cascade's repeated
# evaluations take 16: at most (images + texts) · 16 pairs (480k for COCO's 5k test images),
# enough for recall@1, 5 and 10.
DEFAULT_ITM_K = 16
_IMAGES_PER_BATCH = 16


@dataclass(frozen=True)
class RerankedScores:
    """Re-ranked score matrices ``[image, text]``: rows rank texts for ``image_to_text``, columns
    rank images for ``text_to_image``; ``pairs`` ITM evaluations were run."""

    image_to_text: torch.Tensor
    text_to_image: torch.Tensor
    k: int
    pairs: int


def check_itm_k(k: int, model: VLModel | None = None) -> int:
    """``k`` if it is a re-ranking depth ``model`` (when given) can take; else a one-line EvalError."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise EvalError(f"itm_k {k!r} is invalid; allowed: an integer ≥ 1 (candidates re-ranked by ITM per "
                        f"query), or 0 for ITC alone")
    if k and model is not None and not model.can_match:
        raise EvalError(f"model {model.spec!r} has no image-text matching head; allowed: itm_k 0 (ITC alone)")
    return k


def candidate_pairs(itc: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(texts of each image (n_img, k'), images of each text (n_txt, k''), sorted distinct keys i·n_txt + t)."""
    n_images, n_texts = itc.shape
    top_texts = itc.topk(min(k, n_texts), dim=1).indices
    top_images = itc.t().topk(min(k, n_images), dim=1).indices
    i2t_keys = torch.arange(n_images)[:, None] * n_texts + top_texts
    t2i_keys = top_images * n_texts + torch.arange(n_texts)[:, None]
    return top_texts, top_images, torch.unique(torch.cat([i2t_keys.reshape(-1), t2i_keys.reshape(-1)]))


@torch.no_grad()
def pair_match_logits(
    model: VLModel, images: ImageList, texts: Sequence[str], keys: torch.Tensor, batch_size: int = 64,
    precision: str = "fp32", progress: Progress | None = None, cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """ITM logits (no match, match) of every pair key i·n_txt + t (sorted): (len(keys), 2), float32, CPU."""
    n_texts = len(texts)
    owners = keys // n_texts
    scores = torch.empty(len(keys), 2)
    done = 0
    for first in range(0, len(images), _IMAGES_PER_BATCH):
        last = min(first + _IMAGES_PER_BATCH, len(images))
        lo, hi = (int(v) for v in torch.searchsorted(keys, torch.tensor([first, last]) * n_texts))
        if lo == hi:
            continue
        check_cancel(cancel)
        with torch.inference_mode(), autocast(model.device.type, precision):
            states = model.image_states(model.preprocess_batch([images[i] for i in range(first, last)]))
            for start in range(lo, hi, batch_size):
                check_cancel(cancel)
                stop = min(start + batch_size, hi)
                rows = (owners[start:stop] - first).to(states.device)
                tokens = model.trim_text_padding(model.tokenize([texts[int(t)] for t in keys[start:stop] % n_texts]))
                scores[start:stop] = model.match_logits(states[rows], tokens).float().cpu()
                done += stop - start
                if progress:
                    progress(done, len(keys), "ITM pairs")
    return scores


def reranked_scores(itc: torch.Tensor, top_texts: torch.Tensor, top_images: torch.Tensor, keys: torch.Tensor,
                    match: torch.Tensor, k: int) -> RerankedScores:
    """BLIP's re-ranked matrices (module docstring) from ITC scores and the candidates' ITM logits."""
    itc = itc.float()
    n_images, n_texts = itc.shape
    rows = torch.arange(n_images)[:, None]
    cols = torch.arange(n_texts)[:, None]

    def match_of(pair_keys: torch.Tensor) -> torch.Tensor:
        return match[torch.searchsorted(keys, pair_keys.reshape(-1))].reshape(pair_keys.shape)

    i2t_values = match_of(rows * n_texts + top_texts) + itc[rows, top_texts]
    t2i_values = match_of(top_images * n_texts + cols) + itc.t()[cols, top_images]
    floor = float(torch.cat([i2t_values.reshape(-1), t2i_values.reshape(-1)]).min()) - 3.0
    image_to_text = itc + floor
    image_to_text[rows, top_texts] = i2t_values
    text_to_image = itc + floor
    text_to_image.t()[cols, top_images] = t2i_values
    return RerankedScores(image_to_text, text_to_image, k, int(len(keys)))


def itm_rerank(
    model: VLModel, images: ImageList, texts: Sequence[str], itc: torch.Tensor, k: int = DEFAULT_ITM_K,
    batch_size: int = 64, precision: str = "fp32", progress: Progress | None = None,
    cancel: CancelCheck | None = None,
) -> RerankedScores:
    """Re-rank ITC scores ``itc[image, text]`` with the model's ITM head over each query's top ``k``."""
    if check_itm_k(k, model) < 1:
        raise EvalError("itm_k 0 re-ranks nothing; allowed: an integer ≥ 1")
    top_texts, top_images, keys = candidate_pairs(itc.float().cpu(), k)
    match = pair_match_logits(model, images, texts, keys, batch_size, precision, progress, cancel)[:, 1]
    return reranked_scores(itc.float().cpu(), top_texts, top_images, keys, match, k)
