"""Per-example outcomes of an evaluation: what bootstraps resample and paired tests compare.

The aggregate evaluators (``zeroshot``, ``retrieval``) report means; significance needs the
individual hits and predictive distributions behind them, computed the same way:

- zero-shot: example i is a hit when argmax_k logits_ik = label_i, with
  logits = 100 · normalise(image) @ classifier (open_clip's recipe); its distribution is
  p_i = softmax(logits_i) over the classes;
- retrieval: text t is a text→image hit when its image is in the top k of scores[:, t], image i
  an image→text hit when any of its captions is in the top k of scores[i, :] (CLIP_benchmark);
  distributions are softmax(100 · scores) over the candidates of each query.

``primary_from_outcomes`` gives the same number as ``rcc.eval.suite.primary_metric``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rcc.data.feature_cache import FeatureCache
from rcc.data.types import CaptionDataset, ClassificationDataset, Dataset
from rcc.errors import EvalError
from rcc.eval.encode import CancelCheck, encode_images, encode_texts
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

    @property
    def n(self) -> int:
        """Units resampled by a bootstrap: images (both tasks)."""
        return len(self.hits["top1"]) if self.task == "zeroshot" else len(self.hits[f"image_to_text@{self.k}"])

    def as_dict(self) -> dict:
        """The JSON form (hits and groups; distributions are left out)."""
        return {"task": self.task, "k": self.k, "groups": list(self.groups),
                "hits": {name: [int(h) for h in values] for name, values in self.hits.items()}}


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
    cancel: CancelCheck | None = None,
) -> ExampleOutcomes:
    """Recall@k hits of every text (text→image) and every image (image→text), and their distributions."""
    from rcc.eval.retrieval import flatten_captions

    if k < 1:
        raise EvalError(f"k {k} is invalid; allowed: an integer ≥ 1")
    texts, owner = flatten_captions(dataset)
    if len(dataset.images) == 0 or not texts:
        raise EvalError(f"dataset {dataset.spec!r} has no images or no captions to retrieve")
    images = encode_images(model, dataset.images, batch_size, precision, cancel=cancel)
    text_emb = encode_texts(model, texts, batch_size, precision, cancel=cancel)
    scores = (images @ text_emb.t()).double()
    return outcomes_from_scores(scores, owner, k)


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


def example_outcomes(
    model: VLModel, dataset: Dataset, templates: Sequence[str] | None = None, cache: FeatureCache | None = None,
    k: int = 1, cancel: CancelCheck | None = None,
) -> ExampleOutcomes:
    """Zero-shot outcomes for labelled images, retrieval outcomes (at k) for captions."""
    if isinstance(dataset, ClassificationDataset):
        return zeroshot_outcomes(model, dataset, templates, cache, cancel=cancel)
    if isinstance(dataset, CaptionDataset):
        if "retrieval" not in model.tasks:
            raise EvalError(f"model {model.spec!r} cannot do retrieval; its tasks: {', '.join(sorted(model.tasks))}")
        return retrieval_outcomes(model, dataset, k, cancel=cancel)
    raise EvalError(f"dataset {getattr(dataset, 'spec', dataset)!r} is neither labelled images nor captions")


def primary_from_outcomes(outcomes: ExampleOutcomes) -> float:
    """Top-1 accuracy, or the mean of text→image and image→text recall@k (``suite.primary_metric``)."""
    if outcomes.task == "zeroshot":
        hits = outcomes.hits["top1"]
        return sum(hits) / len(hits)
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
