"""Stage ablation / ordering and the run profiler, on the tiny OpenCLIP model with a real evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_tiny import random_images
from rcc.analysis.ablation import ablation_variants, run_ablation
from rcc.analysis.errors import AnalysisError
from rcc.analysis.probe import metric_of, outcome_probe
from rcc.analysis.profile import profile_cascade, profile_from_result
from rcc.compression.calibration import CalibrationData
from rcc.compression.cascade import CascadeConfig, run_cascade
from rcc.compression.plan import CompressionPlan, Rule
from rcc.data.images import ArrayImages
from rcc.data.types import ClassificationDataset
from rcc.models.registry import load_model

RCC_STAGES = ("dare", "nullu", "alphaedit")  # the method's three; quant is ablated only when bits are planned

pytestmark = pytest.mark.usefixtures("one_thread")
CALIBRATION = CalibrationData(images=random_images(8, seed=1),
                              texts=("a photo of a cat", "two dogs on the grass", "a red car", "a small bird"))
# Text MLPs pruned and factorised, text attention pruned; everything corrected.
PLAN = CompressionPlan(rules=(
    Rule(tower="text", kind="mlp_in", settings={"sparsity": 0.3, "rank": 6, "correction": True}),
    Rule(tower="text", kind="mlp_out", settings={"sparsity": 0.3, "rank": 6, "correction": True}),
    Rule(tower="text", kind="attn_v", settings={"sparsity": 0.5, "method": "wanda", "correction": True}),
))
SELECTED = 6  # 2 blocks × (mlp_in, mlp_out, attn_v)


@pytest.fixture
def tiny(config_path):
    torch.manual_seed(0)
    return load_model(f"open_clip:{config_path}", device="cpu")


@pytest.fixture(scope="module")
def evaluate():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(16, 16, 16, 3), dtype=np.uint8)
    dataset = ClassificationDataset("synthetic", "test", ArrayImages(pixels), tuple(i % 4 for i in range(16)),
                                    ("cat", "dog", "car", "bird"))
    return metric_of(outcome_probe(dataset, templates=("a photo of a {c}.",)))


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def test_variants_are_the_full_sequence_each_removal_and_every_other_order():
    variants = ablation_variants(("dare", "nullu", "alphaedit"))
    assert [v.name for v in variants] == [
        "dare → nullu → alphaedit",
        "nullu → alphaedit", "dare → alphaedit", "dare → nullu",
        "dare → alphaedit → nullu", "nullu → dare → alphaedit", "nullu → alphaedit → dare",
        "alphaedit → dare → nullu", "alphaedit → nullu → dare",
    ]
    assert [v.kind for v in variants] == ["full"] + ["without"] * 3 + ["order"] * 5
    assert [v.removed for v in variants[1:4]] == ["dare", "nullu", "alphaedit"]
    assert len(ablation_variants(("dare", "nullu"), removals=False)) == 2
    assert [v.name for v in ablation_variants(("nullu",))] == ["nullu"]
    for bad in ((), ("dare", "dare"), ("prune",)):
        with pytest.raises(AnalysisError, match="stages"):
            ablation_variants(bad)


def test_every_variant_starts_from_the_same_model_and_the_model_is_left_alone(tiny, config_path, evaluate):
    saved = _state(tiny)
    config = CascadeConfig(threshold=0.0, stages=RCC_STAGES)  # nothing backed off: sizes depend on the stages only
    variants = ablation_variants(config.stages)
    seen = []
    result = run_ablation(tiny, PLAN, evaluate, CALIBRATION, None, config, test_evaluate=evaluate,
                          variants=variants, progress=lambda i, n, name: seen.append((i, n, name)))
    now = tiny.module.state_dict()
    assert set(now) == set(saved) and all(torch.equal(now[k], v) for k, v in saved.items())
    assert seen[0] == (0, 9, "dare → nullu → alphaedit") and seen[-1] == (9, 9, "done")
    by_name = {v.name: v for v in result.variants}
    full = by_name["dare → nullu → alphaedit"]
    # The full variant equals a cascade on a fresh copy of the same model.
    torch.manual_seed(0)
    fresh = load_model(f"open_clip:{config_path}", device="cpu")
    direct = run_cascade(fresh, PLAN, evaluate, CALIBRATION, None, config)
    assert (full.metric, full.params_after) == (direct.final_metric, direct.params_after)
    assert result.dense_metric == direct.dense_metric
    assert result.dense_test == pytest.approx(direct.dense_metric)  # same data for both evaluators here
    # Removing Nullu keeps the MLPs dense (pruned only): fewer numbers removed than with it.
    assert by_name["dare → alphaedit"].params_after > full.params_after
    # AlphaEdit corrects values, never sizes.
    assert by_name["dare → nullu"].params_after == full.params_after
    # Either order stores the same numbers: a layer pruned then factorised keeps its sparsity on the factors.
    assert by_name["nullu → dare → alphaedit"].params_after == full.params_after
    for variant in result.variants:
        assert set(variant.stage_seconds) == set(variant.stages) and variant.cpu_seconds > 0
        assert variant.attempts_undone == 0 and variant.skipped == ()
        assert variant.test_metric == pytest.approx(variant.metric)
        assert variant.params_before == full.params_before
    best = result.best()
    assert best.metric == max(v.metric for v in result.variants)
    assert best.removed_fraction == max(v.removed_fraction for v in result.variants if v.metric == best.metric)
    assert result.as_dict()["variants"][0]["name"] == "dare → nullu → alphaedit"


def test_the_profile_times_every_layer_of_every_attempt(tiny, evaluate):
    config = CascadeConfig(threshold=0.0, stages=RCC_STAGES)
    result, profile = profile_cascade(tiny, PLAN, evaluate, CALIBRATION, None, config)
    assert [(a.stage, a.attempt) for a in profile.attempts] == [(a.stage, a.attempt) for a in result.attempts]
    assert profile.source == "measured" and profile.setup_seconds >= 0
    assert profile.peak_rss_bytes > 0
    for attempt, recorded in zip(profile.attempts, result.attempts):
        assert attempt.seconds == recorded.seconds
        assert len(attempt.layers) == SELECTED if attempt.stage in ("dare", "alphaedit") else 4  # nullu: MLPs
        assert sum(t.seconds for t in attempt.layers) <= attempt.seconds + 1e-3
        assert attempt.evaluate_seconds is not None and 0 < attempt.evaluate_seconds <= attempt.seconds
        assert attempt.peak_rss_bytes > 0 and attempt.peak_cuda_bytes is None
    assert set(profile.stage_seconds) == {"dare", "nullu", "alphaedit"}
    slowest = profile.slowest_layers(3)
    assert len(slowest) == 3 and slowest[0][2] >= slowest[-1][2]

    recorded = profile_from_result(result.as_dict(), "recorded")
    assert [(a.stage, a.seconds) for a in recorded.attempts] == [(a.stage, a.seconds) for a in result.attempts]
    assert recorded.stage_seconds == pytest.approx(profile.stage_seconds)
    with pytest.raises(AnalysisError, match="no timings"):
        profile_from_result({}, "op 3")
