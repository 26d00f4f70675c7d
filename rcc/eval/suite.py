"""One evaluation entry point for the CLI, sessions and the app: pick the task, run it, report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rcc.data.feature_cache import FeatureCache
from rcc.data.types import CaptionDataset, ClassificationDataset, Dataset
from rcc.errors import EvalError
from rcc.eval.encode import CancelCheck, Progress
from rcc.models.adapter import VLModel

TASKS = ("zeroshot", "retrieval", "caption")


@dataclass(frozen=True)
class EvalReport:
    model: str
    data: str
    split: str
    task: str
    metrics: dict
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"model": self.model, "data": self.data, "split": self.split, "task": self.task,
                "metrics": self.metrics, **self.extra}


def default_task(model: VLModel, dataset: Dataset) -> str:
    """Zero-shot for labelled images; retrieval for captions, or captioning for caption-only models."""
    if isinstance(dataset, ClassificationDataset):
        return "zeroshot"
    return "retrieval" if "retrieval" in model.tasks else "caption"


def default_itm_k(model: VLModel) -> int:
    """ITM re-ranking depth used when none is given: ``DEFAULT_ITM_K`` with an ITM head, else 0 (ITC)."""
    from rcc.eval.itm_rerank import DEFAULT_ITM_K

    return DEFAULT_ITM_K if model.can_match else 0


def run_eval(
    model: VLModel, dataset: Dataset, task: str | None = None, templates: Sequence[str] | None = None,
    cache: FeatureCache | None = None, precision: str = "fp32", batch_size: int = 128,
    progress: Progress | None = None, cancel: CancelCheck | None = None, itm_k: int | None = None,
    num_beams: int = 1,
) -> EvalReport:
    """Evaluate ``model`` on ``dataset`` with ``task`` (default: the natural task of the pair).

    ``itm_k``: retrieval re-ranks each query's top ``itm_k`` ITC candidates with the ITM head
    (default ``default_itm_k(model)``; 0: ITC alone). ``num_beams``: captioning by beam search
    (1: greedy).
    """
    task = task or default_task(model, dataset)
    if task not in TASKS:
        raise EvalError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
    if task not in model.tasks:
        raise EvalError(f"model {model.spec!r} cannot do {task}; its tasks: {', '.join(sorted(model.tasks))}")
    needs = ClassificationDataset if task == "zeroshot" else CaptionDataset
    if not isinstance(dataset, needs):
        what = "labelled images (digits, imagefolder, cifar)" if task == "zeroshot" else "captions (karpathy, captions-csv)"
        raise EvalError(f"task {task!r} needs a dataset of {what}; {dataset.spec!r} is not one")

    if task == "zeroshot":
        from rcc.eval.templates import default_templates
        from rcc.eval.zeroshot import evaluate_zeroshot

        templates = tuple(templates or default_templates(dataset.spec))
        result = evaluate_zeroshot(model, dataset, templates, cache=cache, precision=precision,
                                   progress=progress, cancel=cancel)
        return EvalReport(model.spec, dataset.spec, dataset.split, task, result.as_dict(),
                          {"templates": len(templates)})
    if task == "retrieval":
        from rcc.eval.retrieval import evaluate_retrieval

        result = evaluate_retrieval(model, dataset, batch_size=batch_size, progress=progress, cancel=cancel,
                                    precision=precision, itm_k=default_itm_k(model) if itm_k is None else itm_k)
        return EvalReport(model.spec, dataset.spec, dataset.split, task, result.as_dict())
    from rcc.eval.captioning import evaluate_captioning

    result = evaluate_captioning(model, dataset, batch_size=min(batch_size, 16), progress=progress, cancel=cancel,
                                 num_beams=num_beams)
    return EvalReport(model.spec, dataset.spec, dataset.split, task, result.scores.as_dict(),
                      {"num_beams": num_beams, "examples": result.as_dict()["examples"]})


def primary_metric(report: EvalReport) -> float:
    """The one number a threshold is checked against: top-1, mean recall@1 (after ITM re-ranking
    when it ran: what BLIP reports), or CIDEr."""
    metrics = report.metrics
    if report.task == "zeroshot":
        return float(metrics["top1"])
    if report.task == "retrieval":
        prefix = "itm_" if "itm_text_to_image_recall@1" in metrics else ""
        return (metrics[f"{prefix}text_to_image_recall@1"] + metrics[f"{prefix}image_to_text_recall@1"]) / 2
    return float(metrics["cider"])


def evaluator(dataset: Dataset, task: str | None = None, templates: Sequence[str] | None = None,
              precision: str = "fp32", batch_size: int = 128, cancel: CancelCheck | None = None,
              progress: Progress | None = None):
    """A function model → primary metric on ``dataset`` (what the cascade checks after each stage).

    ``cancel`` is checked between batches, so a cancelled cascade stops inside an evaluation
    rather than after it; ``progress`` hears ``(0, n, "images")`` as each evaluation starts, then
    every batch.
    """

    def evaluate(model: VLModel) -> float:
        if progress:
            progress(0, len(dataset), "images")
        return primary_metric(run_eval(model, dataset, task=task, templates=templates, precision=precision,
                                       batch_size=batch_size, progress=progress, cancel=cancel))

    return evaluate
