"""Bootstrap intervals, exact McNemar, paired bootstrap and Spearman against scipy and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from rcc.analysis.errors import AnalysisError
from rcc.analysis.statistics import (
    average_ranks, bootstrap_accuracy, bootstrap_recall, bootstrap_weights, compare_outcomes, discordant_counts,
    mcnemar_exact, spearman,
)
from rcc.eval.per_example import ExampleOutcomes, outcomes_from_scores
from rcc.eval.retrieval import retrieval_recall


@pytest.mark.parametrize("b, c", [(0, 0), (0, 1), (1, 0), (3, 3), (2, 9), (9, 2), (0, 25), (17, 30), (40, 41),
                                  (120, 95), (1, 300)])
def test_exact_mcnemar_equals_scipy_binomtest_on_the_discordant_counts(b, c):
    expected = 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_mcnemar_is_symmetric_and_refuses_bad_counts():
    assert mcnemar_exact(4, 11) == mcnemar_exact(11, 4)
    assert mcnemar_exact(5, 5) == 1.0
    for bad in (-1, 1.5, True):
        with pytest.raises(AnalysisError, match="discordant count"):
            mcnemar_exact(bad, 3)


def test_discordant_counts_by_hand():
    a = [1, 1, 0, 0, 1, 0, 1]
    b = [1, 0, 1, 0, 0, 1, 1]
    assert discordant_counts(a, b) == (2, 2)
    assert discordant_counts([1, 1, 1], [0, 0, 1]) == (2, 0)
    with pytest.raises(AnalysisError, match="same examples"):
        discordant_counts([1, 0], [1, 0, 1])


def test_bootstrap_weights_are_seeded_multiplicities():
    weights = bootstrap_weights(7, 50, seed=3)
    assert weights.shape == (50, 7) and (weights.sum(axis=1) == 7).all() and (weights >= 0).all()
    assert np.array_equal(weights, bootstrap_weights(7, 50, seed=3))
    assert not np.array_equal(weights, bootstrap_weights(7, 50, seed=4))


def test_percentile_intervals_cover_the_true_rate_at_about_the_nominal_level():
    # 200 independent samples of 200 Bernoulli(0.8) trials; a 90 % interval should cover 0.8 in ≈ 90 % of them.
    rng = np.random.default_rng(12345)
    truth, covered = 0.8, 0
    for repetition in range(200):
        sample = rng.random(200) < truth
        interval = bootstrap_accuracy(sample, confidence=0.9, resamples=1000, seed=repetition)
        assert interval.low <= interval.estimate <= interval.high
        covered += interval.low <= truth <= interval.high
    assert 0.85 <= covered / 200 <= 0.95


def test_interval_width_matches_the_binomial_standard_error():
    hits = [1] * 90 + [0] * 10
    interval = bootstrap_accuracy(hits, confidence=0.95, resamples=4000, seed=0)
    se = np.sqrt(0.9 * 0.1 / 100)
    assert interval.estimate == 0.9
    assert interval.high - interval.low == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_per_class_recall_interval_is_centred_on_balanced_accuracy():
    labels = [0] * 50 + [1] * 10
    hits = [1] * 45 + [0] * 5 + [1] * 2 + [0] * 8  # class recalls 0.9 and 0.2
    interval = bootstrap_accuracy(hits, labels=labels, resamples=500, seed=1)
    assert interval.estimate == pytest.approx((0.9 + 0.2) / 2)
    assert interval.low < 0.55 < interval.high


def test_recall_intervals_resample_images_with_their_captions():
    torch.manual_seed(0)
    scores = torch.randn(30, 60)
    owner = [i // 2 for i in range(60)]
    for t in range(60):  # make most texts find their own image
        if t % 3:
            scores[owner[t], t] += 3.0
    outcomes = outcomes_from_scores(scores, owner, k=1)
    reference = retrieval_recall(scores, owner, ks=(1,))
    intervals = bootstrap_recall(outcomes, resamples=800, seed=0)
    assert intervals["text_to_image"].estimate == pytest.approx(reference.text_to_image[0])
    assert intervals["image_to_text"].estimate == pytest.approx(reference.image_to_text[0])
    assert intervals["mean"].estimate == pytest.approx((reference.text_to_image[0] + reference.image_to_text[0]) / 2)
    for interval in intervals.values():
        assert 0 <= interval.low <= interval.estimate <= interval.high <= 1
        assert interval.high > interval.low


def _zeroshot(hits) -> ExampleOutcomes:
    return ExampleOutcomes("zeroshot", {"top1": tuple(bool(h) for h in hits)}, tuple(range(len(hits))), {})


def test_paired_comparison_of_accuracy_uses_mcnemar_and_a_paired_interval():
    rng = np.random.default_rng(0)
    a = rng.random(300) < 0.8
    b = a.copy()
    flip = rng.choice(300, 30, replace=False)
    b[flip[:25]] = True  # b fixes up to 25 of a's errors ...
    b[flip[25:]] = False  # ... and breaks 5
    result = compare_outcomes(_zeroshot(a), _zeroshot(b), resamples=1000, seed=0)
    discordant = discordant_counts(a, b)
    assert result.discordant == discordant
    assert result.p_value == pytest.approx(stats.binomtest(discordant[0], sum(discordant), 0.5).pvalue)
    assert result.difference.estimate == pytest.approx(b.mean() - a.mean())
    assert result.difference.low <= result.difference.estimate <= result.difference.high
    same = compare_outcomes(_zeroshot(a), _zeroshot(a), resamples=200)
    assert same.difference.estimate == same.difference.low == same.difference.high == 0 and same.p_value == 1.0


def test_paired_bootstrap_of_recall_finds_a_real_difference_and_not_a_null_one():
    torch.manual_seed(1)
    scores = torch.randn(80, 80)
    owner = list(range(80))
    better = scores.clone()
    better[torch.arange(80), torch.arange(80)] += 2.5
    worse = scores.clone()
    worse[torch.arange(80), torch.arange(80)] += 0.5
    a, b = outcomes_from_scores(worse, owner), outcomes_from_scores(better, owner)
    result = compare_outcomes(a, b, resamples=1000, seed=0)
    assert result.test == "paired bootstrap" and result.measure == "mean recall@1"
    assert result.difference.estimate > 0.3 and result.difference.low > 0 and result.p_value < 0.01
    null = compare_outcomes(a, a, resamples=200, seed=0)
    assert null.p_value == 1.0 and null.difference.estimate == 0


def test_comparisons_refuse_outcomes_of_different_examples():
    with pytest.raises(AnalysisError, match="same examples"):
        compare_outcomes(_zeroshot([1, 0, 1]), _zeroshot([1, 0]))
    with pytest.raises(AnalysisError, match="confidence"):
        bootstrap_accuracy([1, 0], confidence=1.5)
    with pytest.raises(AnalysisError, match="resamples"):
        bootstrap_accuracy([1, 0], resamples=0)
    with pytest.raises(AnalysisError, match="retrieval"):
        bootstrap_recall(_zeroshot([1, 0]))


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(5)
    for _ in range(20):
        x = rng.integers(0, 6, size=15).astype(float)
        y = x * 0.5 + rng.integers(0, 4, size=15)
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [5, 5, 5]) is None
    assert spearman([1, 2], [2, 1]) is None
    assert average_ranks([10, 20, 10, 30]).tolist() == [1.5, 3.0, 1.5, 4.0]
