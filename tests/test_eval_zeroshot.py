"""Zero-shot classification against an independent computation from raw embeddings."""

import json

import numpy as np
import pytest
import torch

from openclip_tiny import TINY_OPEN_CLIP_CONFIG
from rcc.data.feature_cache import FeatureCache
from rcc.data.images import ArrayImages
from rcc.data.types import ClassificationDataset
from rcc.eval.zeroshot import evaluate_zeroshot, zeroshot_metrics
from rcc.models.registry import load_model

TEMPLATES = ("a photo of a {c}.", "a drawing of the {c}.", "{c}")
CLASSNAMES = ("cat", "dog", "car", "tree", "boat", "house")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    torch.manual_seed(3)
    return load_model(f"open_clip:{path}")


@pytest.fixture(scope="module")
def dataset():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(30, 16, 16, 3), dtype=np.uint8)
    labels = tuple(int(x) for x in rng.integers(0, len(CLASSNAMES), size=30))
    return ClassificationDataset("synthetic", "test", ArrayImages(pixels), labels, CLASSNAMES)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_matches_independent_numpy_computation(tiny_model, dataset):
    # Expected: raw module outputs, then CLIP_benchmark's recipe written out in numpy.
    with torch.no_grad():
        raw_images = tiny_model.module.encode_image(
            torch.stack([tiny_model.preprocess(dataset.images[i]) for i in range(len(dataset))])).numpy()
        classifier = []
        for name in CLASSNAMES:
            ids = tiny_model.tokenize([t.replace("{c}", name) for t in TEMPLATES])["input_ids"]
            per_template = _normalise(tiny_model.module.encode_text(ids).numpy())
            classifier.append(_normalise(per_template.mean(axis=0)))
    logits = 100 * _normalise(raw_images) @ np.stack(classifier).T
    labels = np.array(dataset.labels)
    predicted = logits.argmax(axis=1)
    expected_top1 = float((predicted == labels).mean())
    top5 = np.argsort(-logits, axis=1)[:, :5]
    expected_top5 = float(np.mean([labels[i] in top5[i] for i in range(len(labels))]))
    recalls = [float((predicted[labels == k] == k).mean()) for k in range(len(CLASSNAMES)) if (labels == k).any()]

    result = evaluate_zeroshot(tiny_model, dataset, TEMPLATES)
    assert result.n == 30
    assert result.top1 == pytest.approx(expected_top1, abs=1e-9)
    assert result.top5 == pytest.approx(expected_top5, abs=1e-9)
    assert result.mean_per_class_recall == pytest.approx(float(np.mean(recalls)), abs=1e-9)
    assert list(result.predictions) == predicted.tolist()


def test_metrics_on_hand_made_logits():
    # 4 examples, 5 classes. Row 0 right; row 1 wrong but label 2nd; row 2 wrong, label last; row 3 right.
    logits = torch.tensor([
        [9.0, 1, 0, 0, 0],
        [5.0, 4, 0, 0, 0],
        [5.0, 4, 3, 2, 1],
        [0.0, 0, 0, 7, 0],
    ])
    labels = torch.tensor([0, 1, 4, 3])
    result = zeroshot_metrics(logits, labels)
    assert result.top1 == 0.5
    assert result.top5 == 1.0
    # Per-class recall: class 0 → 1, class 1 → 0, class 3 → 1, class 4 → 0 (class 2 absent).
    assert result.mean_per_class_recall == 0.5
    assert zeroshot_metrics(logits[:, :3], torch.tensor([0, 1, 2, 2])).top5 is None


def test_feature_cache_reuses_unchanged_towers_and_misses_after_a_change(tiny_model, dataset, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    first = evaluate_zeroshot(tiny_model, dataset, TEMPLATES, cache=cache)
    assert (cache.hits, cache.misses) == (0, 2)
    second = evaluate_zeroshot(tiny_model, dataset, TEMPLATES, cache=cache)
    assert (cache.hits, cache.misses) == (2, 2)
    assert second == first
    # Change one vision weight: the text classifier is reused, the image features are recomputed.
    weight = tiny_model.module.visual.transformer.resblocks[0].mlp.c_fc.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(-1.0)
        evaluate_zeroshot(tiny_model, dataset, TEMPLATES, cache=cache)
        assert (cache.hits, cache.misses) == (3, 3)
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_torn_cache_file_is_a_miss_not_an_error(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put("ab" * 20, torch.ones(3, 2))
    assert torch.equal(cache.get("ab" * 20), torch.ones(3, 2))
    (tmp_path / "ab" / f"{'ab' * 20}.safetensors").write_bytes(b"garbage")
    assert cache.get("ab" * 20) is None


def test_bf16_autocast_agrees_with_fp32_on_the_demo(rcc_mini):
    from rcc.data.registry import load_dataset
    from rcc.eval.templates import DIGIT_TEMPLATES

    test = load_dataset("digits", "test")
    fp32 = evaluate_zeroshot(rcc_mini, test, DIGIT_TEMPLATES)
    bf16 = evaluate_zeroshot(rcc_mini, test, DIGIT_TEMPLATES, precision="bf16")
    assert fp32.top1 >= 0.90
    agreement = sum(a == b for a, b in zip(fp32.predictions, bf16.predictions)) / fp32.n
    assert agreement >= 0.97 and abs(fp32.top1 - bf16.top1) <= 0.02
