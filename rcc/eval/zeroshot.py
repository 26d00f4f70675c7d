"""Zero-shot classification, with the math of LAION's CLIP_benchmark and open_clip."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from rcc.data.feature_cache import FeatureCache, cache_key
from rcc.data.types import ClassificationDataset
from rcc.eval.encode import CancelCheck, Progress, encode_images, encode_texts
from rcc.eval.templates import fill
from rcc.models.adapter import VLModel


@dataclass(frozen=True)
class ZeroShotResult:
    top1: float
    top5: float | None
    mean_per_class_recall: float
    n: int
    predictions: tuple[int, ...] = ()

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("predictions")
        return out


def build_classifier(
    model: VLModel, classnames: Sequence[str], templates: Sequence[str], precision: str = "fp32",
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """Class weights (D, C): c_k = normalise(mean_t normalise(f_text(template_t(class_k))))."""
    prompts = [fill(t, name) for name in classnames for t in templates]
    embeddings = encode_texts(model, prompts, precision=precision, cancel=cancel)
    per_class = embeddings.view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1).t().contiguous()


def zeroshot_logits(image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """logits = 100 · normalise(image) @ classifier, as open_clip's zero-shot evaluation."""
    return 100.0 * F.normalize(image_features, dim=-1) @ classifier


def zeroshot_metrics(logits: torch.Tensor, labels: torch.Tensor) -> ZeroShotResult:
    """Top-1, top-5 (when there are ≥ 5 classes) and mean per-class recall (balanced accuracy)."""
    n_classes = logits.shape[1]
    predictions = logits.argmax(dim=1)
    top1 = (predictions == labels).double().mean().item()
    top5 = None
    if n_classes >= 5:
        top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).double().mean().item()
    recalls = [
        (predictions[labels == k] == k).double().mean().item() for k in range(n_classes) if (labels == k).any()
    ]
    return ZeroShotResult(
        top1=top1, top5=top5, mean_per_class_recall=sum(recalls) / len(recalls), n=len(labels),
        predictions=tuple(predictions.tolist()),
    )


def image_features_cached(
    model: VLModel, dataset, cache: FeatureCache | None, precision: str = "fp32",
    progress: Progress | None = None, cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """Normalised image features of a dataset, reused from the cache when the tower is unchanged."""
    key = None
    if cache is not None:
        key = cache_key(kind="image", tower=model.fingerprint("vision"), data=dataset.images.identity,
                        precision=precision, device=model.device.type)
        hit = cache.get(key)
        if hit is not None:
            return hit
    features = encode_images(model, dataset.images, precision=precision, progress=progress, cancel=cancel)
    if cache is not None:
        cache.put(key, features)
    return features


def classifier_cached(
    model: VLModel, classnames: Sequence[str], templates: Sequence[str], cache: FeatureCache | None,
    precision: str = "fp32", cancel: CancelCheck | None = None,
) -> torch.Tensor:
    key = None
    if cache is not None:
        key = cache_key(kind="classifier", tower=model.fingerprint("text"), classnames=list(classnames),
                        templates=list(templates), precision=precision, device=model.device.type)
        hit = cache.get(key)
        if hit is not None:
            return hit
    classifier = build_classifier(model, classnames, templates, precision=precision, cancel=cancel)
    if cache is not None:
        cache.put(key, classifier)
    return classifier


def evaluate_zeroshot(
    model: VLModel, dataset: ClassificationDataset, templates: Sequence[str],
    cache: FeatureCache | None = None, precision: str = "fp32",
    progress: Progress | None = None, cancel: CancelCheck | None = None,
) -> ZeroShotResult:
    """Zero-shot top-1 / top-5 / mean per-class recall of ``model`` on ``dataset``."""
    classifier = classifier_cached(model, dataset.classnames, templates, cache, precision, cancel)
    features = image_features_cached(model, dataset, cache, precision, progress, cancel)
    logits = zeroshot_logits(features, classifier)
    return zeroshot_metrics(logits, torch.tensor(dataset.labels))
