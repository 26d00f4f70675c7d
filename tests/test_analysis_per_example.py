"""Per-example outcomes agree with the aggregate evaluators; prediction drift is a proper divergence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rcc.analysis.probe import MemoryFeatureCache, metric_of, outcome_probe
from rcc.data.images import ArrayImages
from rcc.data.types import CaptionDataset, ClassificationDataset
from rcc.errors import EvalError
from rcc.eval.per_example import example_outcomes, prediction_kl, primary_from_outcomes
from rcc.eval.suite import primary_metric, run_eval
from rcc.eval.zeroshot import evaluate_zeroshot
from rcc.models.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSNAMES = ("cat", "dog", "car", "tree", "boat")
TEMPLATES = ("a photo of a {c}.", "{c}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import json

    from openclip_tiny import TINY_OPEN_CLIP_CONFIG

    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    torch.manual_seed(7)
    return load_model(f"open_clip:{path}", device="cpu")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return ArrayImages(rng.integers(0, 256, size=(24, 16, 16, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def labelled(images):
    labels = tuple(int(i % len(CLASSNAMES)) for i in range(24))
    return ClassificationDataset("synthetic", "test", images, labels, CLASSNAMES)


@pytest.fixture(scope="module")
def captioned(images):
    words = ("red", "blue", "cat", "dog", "car", "tree", "boat", "two", "small", "large")
    captions = tuple((f"a {words[i % 10]} {words[(3 * i) % 10]}", f"the {words[(i + 4) % 10]}")
                     for i in range(24))
    return CaptionDataset("synthetic-captions", "test", images, captions)


def test_zeroshot_hits_are_the_predictions_of_the_aggregate_evaluator(tiny, labelled):
    outcomes = example_outcomes(tiny, labelled, templates=TEMPLATES)
    aggregate = evaluate_zeroshot(tiny, labelled, TEMPLATES)
    expected = tuple(p == y for p, y in zip(aggregate.predictions, labelled.labels))
    assert outcomes.task == "zeroshot" and outcomes.hits["top1"] == expected
    assert outcomes.groups == labelled.labels and outcomes.n == 24
    assert primary_from_outcomes(outcomes) == pytest.approx(aggregate.top1, abs=1e-12)
    assert outcomes.log_probs["classes"].shape == (24, len(CLASSNAMES))
    assert torch.allclose(outcomes.log_probs["classes"].exp().sum(dim=1), torch.ones(24, dtype=torch.float64))
    assert outcomes.as_dict()["hits"]["top1"] == [int(h) for h in expected]


def test_retrieval_primary_from_outcomes_equals_the_suite(tiny, captioned):
    outcomes = example_outcomes(tiny, captioned)
    assert outcomes.task == "retrieval" and outcomes.n == 24
    assert len(outcomes.hits["text_to_image@1"]) == 48 and outcomes.groups == tuple(i // 2 for i in range(48))
    expected = primary_metric(run_eval(tiny, captioned, task="retrieval"))
    assert primary_from_outcomes(outcomes) == pytest.approx(expected, abs=1e-6)  # the suite averages in float32
    at5 = example_outcomes(tiny, captioned, k=5)
    report = run_eval(tiny, captioned, task="retrieval").metrics
    assert sum(at5.hits["text_to_image@5"]) / 48 == pytest.approx(report["text_to_image_recall@5"])
    assert sum(at5.hits["image_to_text@5"]) / 24 == pytest.approx(report["image_to_text_recall@5"])


def test_prediction_drift_is_zero_for_the_same_model_and_positive_after_a_change(tiny, labelled):
    probe = outcome_probe(labelled, templates=TEMPLATES)
    before = probe(tiny)
    assert prediction_kl(before, probe(tiny)) == pytest.approx(0.0, abs=1e-12)
    layer = tiny.layer_index["transformer.resblocks.0.mlp.c_fc"]
    weight = tiny.module.get_parameter(layer.param)
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(0.0)
        after = probe(tiny)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    drift = prediction_kl(before, after)
    assert drift > 0
    manual = (before.log_probs["classes"].exp() * (before.log_probs["classes"] - after.log_probs["classes"])).sum(1)
    assert drift == pytest.approx(float(manual.mean()))
    assert metric_of(probe)(tiny) == pytest.approx(primary_metric(run_eval(tiny, labelled, templates=TEMPLATES)))


def test_the_probe_reuses_the_unchanged_tower_and_drift_refuses_other_examples(tiny, labelled, captioned):
    cache = MemoryFeatureCache(limit=2)
    example_outcomes(tiny, labelled, TEMPLATES, cache=cache)
    example_outcomes(tiny, labelled, TEMPLATES, cache=cache)
    assert (cache.hits, cache.misses) == (2, 2) and len(cache.entries) == 2
    cache.put("third", torch.zeros(1))
    assert len(cache.entries) == 2 and "third" in cache.entries
    with pytest.raises(EvalError, match="cannot be compared"):
        prediction_kl(example_outcomes(tiny, labelled, TEMPLATES), example_outcomes(tiny, captioned))
