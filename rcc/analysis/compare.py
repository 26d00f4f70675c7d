"""Two models (or two session nodes) on the same examples: each one's interval, their difference, its p-value.

Both models are evaluated per example on one dataset split (``rcc.eval.per_example``); each gets
a percentile bootstrap interval of its primary metric, and the pair a paired comparison
(``rcc.analysis.statistics.compare_outcomes``: exact McNemar for accuracy, paired image-level
bootstrap for recall). The same seed gives the same intervals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from rcc.analysis.errors import AnalysisError
from rcc.analysis.statistics import (
    DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, Interval, PairedComparison, bootstrap_accuracy, bootstrap_recall,
    compare_outcomes,
)
from rcc.eval.encode import CancelCheck, check_cancel
from rcc.eval.per_example import ExampleOutcomes, example_outcomes


@dataclass(frozen=True)
class ModelsComparison:
    """A and B on ``data``/``split``: their metrics with intervals, and Δ = B − A with its test."""

    a: str
    b: str
    data: str
    split: str
    interval_a: Interval
    interval_b: Interval
    paired: PairedComparison
    seed: int

    def as_dict(self) -> dict:
        out = asdict(self)
        out["interval_a"], out["interval_b"] = self.interval_a.as_dict(), self.interval_b.as_dict()
        out["paired"] = self.paired.as_dict()
        return out

    def summary(self) -> str:
        """One line: ``Δ top1 = +0.0111 [−0.0056, +0.0278] (95 %), p = 0.289 (exact McNemar)``."""
        d = self.paired.difference
        return (f"Δ {self.paired.measure} = {d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}] "
                f"({d.confidence:.0%}), p = {self.paired.p_value:.3g} ({self.paired.test})")


def comparison_from_dict(data: dict) -> ModelsComparison:
    """Read back ``ModelsComparison.as_dict()``; anything malformed raises AnalysisError."""
    try:
        paired = data["paired"]
        discordant = paired.get("discordant")
        return ModelsComparison(
            a=data["a"], b=data["b"], data=data["data"], split=data["split"],
            interval_a=Interval(**data["interval_a"]), interval_b=Interval(**data["interval_b"]),
            paired=PairedComparison(**{**paired, "difference": Interval(**paired["difference"]),
                                       "discordant": None if discordant is None else tuple(discordant)}),
            seed=int(data["seed"]))
    except (KeyError, TypeError, ValueError) as error:
        raise AnalysisError(f"comparison data is malformed ({type(error).__name__}: {error})") from None


def primary_interval(outcomes: ExampleOutcomes, confidence: float, resamples: int, seed: int) -> Interval:
    """Bootstrap interval of the primary metric: top-1, or mean recall@k."""
    if outcomes.task == "zeroshot":
        return bootstrap_accuracy(outcomes.hits["top1"], confidence, resamples, seed)
    return bootstrap_recall(outcomes, confidence, resamples, seed)["mean"]


def comparison_of(a: ExampleOutcomes, b: ExampleOutcomes, names: tuple[str, str], data: str, split: str,
                  confidence: float = DEFAULT_CONFIDENCE, resamples: int = DEFAULT_RESAMPLES,
                  seed: int = 0) -> ModelsComparison:
    """The comparison from outcomes already computed (the app keeps them per node)."""
    return ModelsComparison(a=names[0], b=names[1], data=data, split=split,
                            interval_a=primary_interval(a, confidence, resamples, seed),
                            interval_b=primary_interval(b, confidence, resamples, seed),
                            paired=compare_outcomes(a, b, confidence, resamples, seed), seed=seed)


def compare_nodes_stats(
    session_dir: str | Path, node_a: int, node_b: int, split: str | None = None,
    confidence: float = DEFAULT_CONFIDENCE, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
    device: str = "cpu", cancel: CancelCheck | None = None,
) -> ModelsComparison:
    """Nodes ``node_a`` and ``node_b`` of a session on ``split`` (default: the session's test split).

    Opens the session read-only and loads an independent model per node (seconds each); ``cancel``
    is checked between the two models and between batches (the app drops a comparison it left).
    """
    from rcc.analysis.session_inputs import model_at_node
    from rcc.data.registry import load_dataset
    from rcc.session.workspace import check_split

    first = model_at_node(session_dir, node_a, device)
    split = check_split(first.data, split or first.test_split)
    dataset = load_dataset(first.data, split)
    outcomes_a = example_outcomes(first.model, dataset, cancel=cancel)
    del first
    check_cancel(cancel)
    second = model_at_node(session_dir, node_b, device)
    outcomes_b = example_outcomes(second.model, dataset, cancel=cancel)
    return comparison_of(outcomes_a, outcomes_b, (f"node {node_a}", f"node {node_b}"), dataset.spec, split,
                         confidence, resamples, seed)
