"""Confidence intervals and paired tests for accuracy and recall, and rank correlation.

- Percentile bootstrap (Efron): draw B resamples of the n units with replacement (seeded),
  compute the statistic on each, and take the α/2 and 1 − α/2 quantiles of the B values.
  Resampling uses multiplicities w (w ~ Multinomial(n, 1/n)), so every statistic is a weighted
  mean: accuracy Σ w_i c_i / n; per-class recall Σ_{i∈k} w_i c_i / Σ_{i∈k} w_i.
- Retrieval resamples images (clusters): a text goes with its image, so
  text→image recall* = Σ_i w_i H_i / Σ_i w_i T_i (H_i hits among the T_i captions of image i),
  image→text recall* = Σ_i w_i h_i / Σ_i w_i.
- Exact McNemar: with b = #(A right, B wrong) and c = #(A wrong, B right), under H₀ b ~ Bin(b + c, ½);
  p = min(1, 2 · Σ_{i ≤ min(b, c)} C(b + c, i) / 2^(b+c)) (two-sided, exact integer arithmetic).
- Paired bootstrap: both models' statistics on the same resample; CI of Δ* = stat_B* − stat_A*, and
  the two-sided p-value of the shifted distribution, p = (1 + #{|Δ* − Δ̂| ≥ |Δ̂|}) / (B + 1).
- Spearman ρ: Pearson correlation of the ranks, ties given their average rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np

from rcc.analysis.errors import AnalysisError
from rcc.eval.per_example import ExampleOutcomes

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval at ``confidence``."""

    estimate: float
    low: float
    high: float
    confidence: float
    resamples: int

    def as_dict(self) -> dict:
        return asdict(self)


def _check(confidence: float, resamples: int) -> None:
    if not 0 < confidence < 1:
        raise AnalysisError(f"confidence {confidence!r} is out of range; allowed: 0 < confidence < 1")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise AnalysisError(f"resamples {resamples!r} is invalid; allowed: an integer ≥ 1")


def bootstrap_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """(B, n) multiplicities of n units in B resamples with replacement (each row sums to n)."""
    if n < 1:
        raise AnalysisError("a bootstrap needs at least one example; allowed: n ≥ 1")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    offsets = (np.arange(resamples) * n)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=resamples * n).reshape(resamples, n)


def _interval(estimate: float, replicates: np.ndarray, confidence: float) -> Interval:
    alpha = 1 - confidence
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return Interval(float(estimate), float(low), float(high), confidence, len(replicates))


def _hits(values: Sequence[bool] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise AnalysisError(f"hits must be a non-empty 1-D sequence of 0/1, got shape {array.shape}")
    return array


def _weighted_mean(weights: np.ndarray, hits: np.ndarray) -> np.ndarray:
    return weights @ hits / weights.sum(axis=1)


def _per_class_recall(weights: np.ndarray, hits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean over classes present in each resample of Σ_{i∈k} w_i c_i / Σ_{i∈k} w_i."""
    classes = np.unique(labels)
    member = (labels[None, :] == classes[:, None]).astype(np.float64)  # (K, n)
    counts = weights @ member.T  # (B, K)
    correct = weights @ (member * hits).T
    present = counts > 0
    recall = np.divide(correct, counts, out=np.zeros_like(correct), where=present)
    return recall.sum(axis=1) / present.sum(axis=1)


def bootstrap_accuracy(hits: Sequence[bool], confidence: float = DEFAULT_CONFIDENCE,
                       resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                       labels: Sequence[int] | None = None) -> Interval:
    """Percentile CI of accuracy (mean hit), or of mean per-class recall when ``labels`` are given."""
    _check(confidence, resamples)
    c = _hits(hits)
    weights = bootstrap_weights(len(c), resamples, seed)
    if labels is None:
        return _interval(float(c.mean()), _weighted_mean(weights, c), confidence)
    y = np.asarray(labels)
    if y.shape != c.shape:
        raise AnalysisError(f"labels ({y.size}) and hits ({c.size}) must have one entry per example")
    point = _per_class_recall(np.ones((1, len(c))), c, y)[0]
    return _interval(float(point), _per_class_recall(weights, c, y), confidence)


def _image_aggregates(outcomes: ExampleOutcomes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: text→image hits H_i, caption count T_i, image→text hit h_i (retrieval)."""
    k = outcomes.k
    owner = np.asarray(outcomes.groups, dtype=np.int64)
    n_images = outcomes.n
    t2i = np.asarray(outcomes.hits[f"text_to_image@{k}"], dtype=np.float64)
    hits_per_image = np.bincount(owner, weights=t2i, minlength=n_images)
    texts_per_image = np.bincount(owner, minlength=n_images).astype(np.float64)
    i2t = np.asarray(outcomes.hits[f"image_to_text@{k}"], dtype=np.float64)
    return hits_per_image, texts_per_image, i2t


def _recall_replicates(weights: np.ndarray, aggregates) -> dict[str, np.ndarray]:
    hits_per_image, texts_per_image, i2t = aggregates
    t2i = weights @ hits_per_image / np.maximum(weights @ texts_per_image, 1e-300)
    i2t_rep = weights @ i2t / weights.sum(axis=1)
    return {"text_to_image": t2i, "image_to_text": i2t_rep, "mean": (t2i + i2t_rep) / 2}


def bootstrap_recall(outcomes: ExampleOutcomes, confidence: float = DEFAULT_CONFIDENCE,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, Interval]:
    """Percentile CIs of text→image, image→text and mean recall@k, resampling images with their captions."""
    _check(confidence, resamples)
    if outcomes.task != "retrieval":
        raise AnalysisError(f"recall intervals need retrieval outcomes, got {outcomes.task!r}; "
                            f"allowed: outcomes of a caption dataset")
    aggregates = _image_aggregates(outcomes)
    point = _recall_replicates(np.ones((1, outcomes.n)), aggregates)
    replicates = _recall_replicates(bootstrap_weights(outcomes.n, resamples, seed), aggregates)
    return {name: _interval(float(point[name][0]), replicates[name], confidence) for name in replicates}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b and c (see the module docstring)."""
    for name, value in (("b", b), ("c", c)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise AnalysisError(f"discordant count {name}={value!r} is invalid; allowed: an integer ≥ 0")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2 ** n)))


def discordant_counts(hits_a: Sequence[bool], hits_b: Sequence[bool]) -> tuple[int, int]:
    """(b, c) = (#A right and B wrong, #A wrong and B right) over paired examples."""
    a, bb = _hits(hits_a).astype(bool), _hits(hits_b).astype(bool)
    if a.shape != bb.shape:
        raise AnalysisError(f"paired hits must cover the same examples ({a.size} vs {bb.size})")
    return int((a & ~bb).sum()), int((~a & bb).sum())


def _paired_p_value(estimate: float, replicates: np.ndarray) -> float:
    extreme = np.abs(replicates - estimate) >= abs(estimate) - 1e-12
    return float((1 + extreme.sum()) / (len(replicates) + 1))


@dataclass(frozen=True)
class PairedComparison:
    """Model B against model A on the same examples: Δ = B − A of ``measure``, its CI and p-value."""

    measure: str
    a: float
    b: float
    difference: Interval
    p_value: float
    test: str  # "exact McNemar" or "paired bootstrap"
    n: int
    discordant: tuple[int, int] | None = None  # (A right B wrong, A wrong B right)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["difference"] = self.difference.as_dict()
        out["discordant"] = None if self.discordant is None else list(self.discordant)
        return out


def compare_outcomes(a: ExampleOutcomes, b: ExampleOutcomes, confidence: float = DEFAULT_CONFIDENCE,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> PairedComparison:
    """Paired comparison of two models' outcomes on the same examples.

    Zero-shot: Δ top-1 with a paired bootstrap CI and the exact McNemar p-value. Retrieval:
    Δ mean recall@k (the primary metric) with a paired image-level bootstrap CI and p-value.
    """
    _check(confidence, resamples)
    if a.task != b.task or a.groups != b.groups or set(a.hits) != set(b.hits):
        raise AnalysisError("the two outcomes are not on the same examples; allowed: two models evaluated "
                            "on the same dataset split")
    if a.task not in ("zeroshot", "retrieval"):
        # Corpus CIDEr's idf comes from the whole reference set: resampling images changes it.
        raise AnalysisError(f"paired tests of {a.task!r} outcomes are not supported; allowed: zero-shot or "
                            f"retrieval outcomes")
    weights = bootstrap_weights(a.n, resamples, seed)
    if a.task == "zeroshot":
        ca, cb = _hits(a.hits["top1"]), _hits(b.hits["top1"])
        delta = float(cb.mean() - ca.mean())
        replicates = _weighted_mean(weights, cb) - _weighted_mean(weights, ca)
        discordant = discordant_counts(a.hits["top1"], b.hits["top1"])
        return PairedComparison("top1", float(ca.mean()), float(cb.mean()),
                                _interval(delta, replicates, confidence), mcnemar_exact(*discordant),
                                "exact McNemar", a.n, discordant)
    aggregates_a, aggregates_b = _image_aggregates(a), _image_aggregates(b)
    point_a = _recall_replicates(np.ones((1, a.n)), aggregates_a)["mean"][0]
    point_b = _recall_replicates(np.ones((1, b.n)), aggregates_b)["mean"][0]
    replicates = (_recall_replicates(weights, aggregates_b)["mean"]
                  - _recall_replicates(weights, aggregates_a)["mean"])
    delta = float(point_b - point_a)
    return PairedComparison(f"mean recall@{a.k}", float(point_a), float(point_b),
                            _interval(delta, replicates, confidence), _paired_p_value(delta, replicates),
                            "paired bootstrap", a.n)


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of the ranks they span."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    while start < len(x):
        stop = start
        while stop + 1 < len(x) and sorted_x[stop + 1] == sorted_x[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's ρ of paired values; None when fewer than 3 pairs or either side is constant."""
    if len(x) != len(y):
        raise AnalysisError(f"spearman needs paired values, got {len(x)} and {len(y)}")
    if len(x) < 3:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return None if denominator == 0 else float((rx * ry).sum() / denominator)
