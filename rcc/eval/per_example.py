"""Per-example outcomes of an evaluation: what bootstraps resample and paired tests compare.

The aggregate evaluators (``zeroshot``, ``retrieval``) report means; significance needs the
individual hits and predictive distributions behind them, computed the same way:

- zero-shot: example i is a hit when argmax_k logits_ik = label_i, with
  logits = 100 · normalise(image) @ classifier (open_clip's recipe); its distribution is
  p_i = softmax(logits_i) over the classes;
- retrieval: text t is a text→image hit when its image is in the top k of scores[:, t], image i
  an image→text hit when any of its captions is in the top k of scores[i, :] (CLIP_benchmark);
  distributions are softmax(100 · scores) over the candidates of each query. With an ITM head
  (BLIP), hits are taken on the ITM re-ranked scores (``rcc.eval.itm_rerank``), and a third
  distribution is the ITM head's (no match, match) on fixed pairs: each text with its own image
  and with the next image ((owner + 1) mod n), so the fusion layers' drift is measured on the
  same pairs whatever the ITC ranking does;
- captioning: each image's CIDEr of its generated caption (their mean is the corpus CIDEr), and
  the teacher-forced next-token distributions along its first reference caption, over the token
  ids of those captions plus one bin for the rest of the vocabulary (``binned_log_probs``).

``primary_from_outcomes`` gives the same number as ``rcc.eval.suite.primary_metric``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from rcc.data.feature_cache import FeatureCache
from rcc.data.types import CaptionDataset, ClassificationDataset, Dataset
from rcc.errors import EvalError
from rcc.eval.encode import CancelCheck, check_cancel, encode_images, encode_texts
from rcc.models.adapter import VLModel

LOGIT_SCALE = 100.0  # the fixed temperature of open_clip's zero-shot evaluation


@dataclass(frozen=True)
class ExampleOutcomes:
    """Hits per example (zero-shot) or per query (retrieval), plus the predictive distributions.

    ``hits`` maps a measure to one bool per unit: ``"top1"`` per image (zero-shot), or
    ``"text_to_image@k"`` per text and ``"image_to_text@k"`` per image (retrieval).
    ``groups`` is the class label of each image (zero-shot) or the image of each text
    (retrieval): what per-class recall and the image-level (cluster) bootstrap need.
    ``log_probs`` maps a direction to log p (queries × candidates), for prediction drift.
    """

    task: str
    hits: dict[str, tuple[bool, ...]]
    groups: tuple[int, ...]
    log_probs: dict[str, torch.Tensor]
    k: int = 1
    itm_k: int = 0  # retrieval hits after ITM re-ranking of each query's top itm_k (0: ITC)
    values: dict[str, tuple[float, ...]] = field(default_factory=dict)  # captioning: "cider" per image

    @property
    def n(self) -> int:
        """Units resampled by a bootstrap: images (every task)."""
        if self.task == "caption":
            return len(self.values["cider"])
        return len(self.hits["top1"]) if self.task == "zeroshot" else len(self.hits[f"image_to_text@{self.k}"])

    def as_dict(self) -> dict:
        """The JSON form (hits, values and groups; distributions are left out)."""
        return {"task": self.task, "k": self.k, "itm_k": self.itm_k, "groups": list(self.groups),
                "hits": {name: [int(h) for h in values] for name, values in self.hits.items()},
                "values": {name: list(values) for name, values in self.values.items()}}


def zeroshot_outcomes(
    model: VLModel, dataset: ClassificationDataset, templates: Sequence[str] | None = None,
    cache: FeatureCache | None = None, precision: str = "fp32", cancel: CancelCheck | None = None,
) -> ExampleOutcomes:
    """Top-1 hit and class distribution of every image (the recipe of ``rcc.eval.zeroshot``)."""
    from rcc.eval.templates import default_templates
    from rcc.eval.zeroshot import classifier_cached, image_features_cached, zeroshot_logits

    templates = tuple(templates or default_templates(dataset.spec))
    classifier = classifier_cached(model, dataset.classnames, templates, cache, precision, cancel)
    features = image_features_cached(model, dataset, cache, precision, cancel=cancel)
    logits = zeroshot_logits(features, classifier).double()
    labels = torch.tensor(dataset.labels)
    hits = tuple(bool(h) for h in (logits.argmax(dim=1) == labels).tolist())
    return ExampleOutcomes("zeroshot", {"top1": hits}, tuple(dataset.labels),
                           {"classes": torch.log_softmax(logits, dim=1)})


def retrieval_outcomes(
    model: VLModel, dataset: CaptionDataset, k: int = 1, batch_size: int = 64, precision: str = "fp32",
    cancel: CancelCheck | None = None, itm_k: int | None = None,
) -> ExampleOutcomes:
    """Recall@k hits of every text (text→image) and every image (image→text), and their distributions.

    ``itm_k`` (default: ``default_itm_k(model)``): hits after ITM re-ranking, plus the ITM distributions.
    """
    from rcc.eval.itm_rerank import candidate_pairs, check_itm_k, pair_match_logits, reranked_scores
    from rcc.eval.retrieval import flatten_captions
    from rcc.eval.suite import default_itm_k

    if k < 1:
        raise EvalError(f"k {k} is invalid; allowed: an integer ≥ 1")
    itm_k = default_itm_k(model) if itm_k is None else check_itm_k(itm_k, model)
    texts, owner = flatten_captions(dataset)
    if len(dataset.images) == 0 or not texts:
        raise EvalError(f"dataset {dataset.spec!r} has no images or no captions to retrieve")
    images = encode_images(model, dataset.images, batch_size, precision, cancel=cancel)
    text_emb = encode_texts(model, texts, batch_size, precision, cancel=cancel)
    scores = (images @ text_emb.t()).double()
    outcomes = outcomes_from_scores(scores, owner, k)
    if not itm_k:
        return outcomes
    top_texts, top_images, candidates = candidate_pairs(scores.float(), itm_k)
    fixed = fixed_pair_keys(owner, len(dataset.images))
    keys = torch.unique(torch.cat([candidates, fixed]))
    logits = pair_match_logits(model, dataset.images, texts, keys, batch_size, precision, cancel=cancel)
    reranked = reranked_scores(scores.float(), top_texts, top_images, keys, logits[:, 1], itm_k)
    t2i = outcomes_from_scores(reranked.text_to_image.double(), owner, k).hits[f"text_to_image@{k}"]
    i2t = outcomes_from_scores(reranked.image_to_text.double(), owner, k).hits[f"image_to_text@{k}"]
    match = torch.log_softmax(logits[torch.searchsorted(keys, fixed)].double(), dim=1)
    return replace(outcomes, hits={f"text_to_image@{k}": t2i, f"image_to_text@{k}": i2t},
                   log_probs={**outcomes.log_probs, "match": match}, itm_k=itm_k)


def fixed_pair_keys(owner: Sequence[int], n_images: int) -> torch.Tensor:
    """Keys i·n_txt + t of each text t with its own image and (if there are two) the next one."""
    owned = torch.as_tensor(list(owner), dtype=torch.long)
    texts = torch.arange(len(owned))
    own = owned * len(owned) + texts
    if n_images < 2:
        return own
    return torch.stack([own, (owned + 1) % n_images * len(owned) + texts], dim=1).reshape(-1)


def outcomes_from_scores(scores: torch.Tensor, owner: Sequence[int], k: int = 1) -> ExampleOutcomes:
    """Retrieval outcomes from a similarity matrix ``scores[image, text]`` and each text's image."""
    n_images, n_texts = scores.shape
    owned = torch.as_tensor(list(owner), dtype=torch.long)
    k_img, k_txt = min(k, n_images), min(k, n_texts)
    top_images = scores.t().topk(k_img, dim=1).indices
    t2i = (top_images == owned[:, None]).any(dim=1)
    top_texts = scores.topk(k_txt, dim=1).indices
    i2t = (owned[top_texts] == torch.arange(n_images)[:, None]).any(dim=1)
    hits = {f"text_to_image@{k}": tuple(bool(h) for h in t2i.tolist()),
            f"image_to_text@{k}": tuple(bool(h) for h in i2t.tolist())}
    log_probs = {"text_to_image": torch.log_softmax(LOGIT_SCALE * scores.t(), dim=1),
                 "image_to_text": torch.log_softmax(LOGIT_SCALE * scores, dim=1)}
    return ExampleOutcomes("retrieval", hits, tuple(int(i) for i in owned.tolist()), log_probs, k)


def caption_outcomes(
    model: VLModel, dataset: CaptionDataset, batch_size: int = 16, num_beams: int = 1,
    cancel: CancelCheck | None = None,
) -> ExampleOutcomes:
    """Per-image CIDEr of the generated captions, and the teacher-forced token distributions."""
    from rcc.eval.captioning import evaluate_captioning
    from rcc.eval.teacher_forcing import binned_log_probs, next_token_logits

    result = evaluate_captioning(model, dataset, batch_size=batch_size, cancel=cancel, num_beams=num_beams)
    first = [refs[0] for refs in dataset.captions]
    bins = torch.unique(model.grounded_tokens(first)["input_ids"][:, 1:])
    rows = []
    with torch.inference_mode():
        for start in range(0, len(first), batch_size):
            check_cancel(cancel)
            stop = min(start + batch_size, len(first))
            pixels = model.preprocess_batch([dataset.images[i] for i in range(start, stop)])
            forced = next_token_logits(model, model.image_states(pixels), first[start:stop])
            log_probs = torch.log_softmax(forced.logits[forced.mask].double(), dim=-1)
            rows.append(binned_log_probs(log_probs, bins.to(log_probs.device)).cpu())
    return ExampleOutcomes("caption", {}, tuple(range(len(first))), {"tokens": torch.cat(rows)},
                           values={"cider": result.scores.cider_per_image})


def example_outcomes(
    model: VLModel, dataset: Dataset, templates: Sequence[str] | None = None, cache: FeatureCache | None = None,
    k: int = 1, cancel: CancelCheck | None = None,
) -> ExampleOutcomes:
    """Zero-shot outcomes for labelled images, retrieval outcomes (at k) for captions."""
    if isinstance(dataset, ClassificationDataset):
        return zeroshot_outcomes(model, dataset, templates, cache, cancel=cancel)
    if isinstance(dataset, CaptionDataset):
        if "retrieval" in model.tasks:
            return retrieval_outcomes(model, dataset, k, cancel=cancel)
        if model.can_caption and model.grounds_text:
            return caption_outcomes(model, dataset, cancel=cancel)
        raise EvalError(f"model {model.spec!r} cannot do retrieval; its tasks: {', '.join(sorted(model.tasks))}")
    raise EvalError(f"dataset {getattr(dataset, 'spec', dataset)!r} is neither labelled images nor captions")


def primary_from_outcomes(outcomes: ExampleOutcomes) -> float:
    """Top-1 accuracy, the mean of text→image and image→text recall@k, or mean per-image CIDEr
    (``suite.primary_metric``)."""
    if outcomes.task == "zeroshot":
        hits = outcomes.hits["top1"]
        return sum(hits) / len(hits)
    if outcomes.task == "caption":
        cider = outcomes.values["cider"]
        return sum(cider) / len(cider)
    t2i, i2t = outcomes.hits[f"text_to_image@{outcomes.k}"], outcomes.hits[f"image_to_text@{outcomes.k}"]
    return (sum(t2i) / len(t2i) + sum(i2t) / len(i2t)) / 2


def prediction_kl(reference: ExampleOutcomes, candidate: ExampleOutcomes) -> float:
    """Mean over queries of KL(p_ref ‖ p_cand) = Σ_c p_ref,c (log p_ref,c − log p_cand,c), in nats.

    Averaged over the directions (one for zero-shot, two for retrieval). 0 when the
    predictions do not move; continuous where the hit rate moves in steps of 1/n.
    """
    if reference.task != candidate.task or set(reference.log_probs) != set(candidate.log_probs):
        raise EvalError(f"outcomes of {reference.task!r} and {candidate.task!r} cannot be compared")
    values = []
    for direction, ref in reference.log_probs.items():
        cand = candidate.log_probs[direction]
        if ref.shape != cand.shape:
            raise EvalError(f"outcomes cover different examples ({tuple(ref.shape)} vs {tuple(cand.shape)})")
        values.append(float((ref.exp() * (ref - cand)).sum(dim=1).mean()))
    return sum(values) / len(values)
