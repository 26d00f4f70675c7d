"""Recovery training: distil a teacher (usually the dense model) into a compressed student.

On each step, a batch of B unlabelled images and B texts (class prompts, captions, general
sentences). With teacher embeddings t (precomputed, L2-normalised) and student embeddings s:

    similarity logits   S = σ · norm(img) · norm(txt)ᵀ        (σ: the teacher's logit scale)
    KL                  T² · ½ [KL(softmax(S_t/T) ‖ softmax(S_s/T)) over rows + over columns]
    cosine              (1 − cos(img_s, img_t)) + (1 − cos(txt_s, txt_t)), batch mean
    MSE                 ‖img_s − img_t‖² + ‖txt_s − txt_t‖², batch mean (normalised embeddings)

loss = w_kl · KL + w_cos · cosine + w_mse · MSE. The student keeps its compressed structure:
pruning masks are re-applied after every optimiser step, low-rank layers train their two
factors, and frozen parameters (locked layers) get no gradient, so the parameter count after
training equals the one before. Attention-map transfer is not offered: the split attention
kernels (scaled_dot_product_attention) do not expose attention maps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from rcc.compression.layers import reapply_masks
from rcc.errors import RccError
from rcc.eval.encode import encode_images, encode_texts
from rcc.models.adapter import VLModel
from rcc.training.trainer import StepReport, TrainConfig, train


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 100
    lr: float = 5e-5
    batch_size: int = 32
    temperature: float = 1.0
    kl_weight: float = 1.0
    cosine_weight: float = 1.0
    mse_weight: float = 0.0
    warmup_steps: int = 10
    schedule: str = "cosine"
    weight_decay: float = 0.0  # decay would pull the kept weights away from the teacher's
    grad_clip: float | None = 1.0
    accumulation: int = 1
    precision: str = "fp32"
    eval_every: int | None = None
    patience: int | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.batch_size < 2:
            raise RccError(f"batch_size={self.batch_size} is invalid; allowed: an integer ≥ 2 (the KL term "
                           f"compares examples within a batch)")
        if not self.temperature > 0:
            raise RccError(f"temperature={self.temperature} is invalid; allowed: a number > 0")
        weights = (self.kl_weight, self.cosine_weight, self.mse_weight)
        if min(weights) < 0 or sum(weights) == 0:
            raise RccError(f"loss weights kl={self.kl_weight}, cosine={self.cosine_weight}, mse={self.mse_weight} "
                           f"are invalid; allowed: numbers ≥ 0, not all zero")
        self.train_config().validate()

    def train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, lr=self.lr, weight_decay=self.weight_decay,
                           warmup_steps=self.warmup_steps, schedule=self.schedule, grad_clip=self.grad_clip,
                           accumulation=self.accumulation, precision=self.precision, eval_every=self.eval_every,
                           patience=self.patience, seed=self.seed)


@dataclass(frozen=True)
class DistillData:
    """What the student learns from: images and texts, no labels."""

    images: Sequence  # an ImageList (PIL images)
    texts: tuple[str, ...]


@dataclass(frozen=True)
class TeacherTargets:
    images: torch.Tensor  # (N, D) normalised
    texts: torch.Tensor  # (M, D) normalised
    logit_scale: float


@dataclass
class DistillResult:
    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    best_metric: float | None = None
    stopped_early: bool = False
    params_before: int = 0  # non-zero parameters
    params_after: int = 0
    seconds: float = 0.0


def distill_data(data_spec: str, corpus_sentences: int = 160) -> DistillData:
    """The training split's images and its prompts (or captions), plus general sentences."""
    from rcc.data.registry import dataset_splits, load_dataset
    from rcc.data.text_corpus import docstring_sentences
    from rcc.data.types import ClassificationDataset
    from rcc.eval.templates import default_templates, fill

    splits = dataset_splits(data_spec)
    dataset = load_dataset(data_spec, "train" if "train" in splits else splits[0])
    if isinstance(dataset, ClassificationDataset):
        texts = tuple(fill(t, name) for name in dataset.classnames for t in default_templates(data_spec))
    else:
        texts = tuple(c for caps in dataset.captions for c in caps)
    return DistillData(images=dataset.images, texts=texts + tuple(docstring_sentences("calib")[:corpus_sentences]))


def logit_scale_of(model: VLModel) -> float:
    scale = getattr(model.module, "logit_scale", None)
    return float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0


def teacher_targets(teacher: VLModel, data: DistillData, cancel=None) -> TeacherTargets:
    """The teacher's normalised embeddings of every training image and text (computed once)."""
    return TeacherTargets(encode_images(teacher, data.images, cancel=cancel),
                          encode_texts(teacher, list(data.texts), cancel=cancel), logit_scale_of(teacher))


def distillation_loss(img_s, txt_s, img_t, txt_t, scale: float, config: DistillConfig) -> torch.Tensor:
    """The weighted loss of the module docstring for one batch (student embeddings unnormalised)."""
    img_s, txt_s = F.normalize(img_s.float(), dim=-1), F.normalize(txt_s.float(), dim=-1)
    loss = img_s.new_zeros(())
    if config.kl_weight:
        t = config.temperature
        student, teacher = scale * img_s @ txt_s.t() / t, scale * img_t @ txt_t.t() / t
        rows = F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1), log_target=True, reduction="batchmean")
        cols = F.kl_div(F.log_softmax(student.t(), 1), F.log_softmax(teacher.t(), 1), log_target=True,
                        reduction="batchmean")
        loss = loss + config.kl_weight * t * t * (rows + cols) / 2
    if config.cosine_weight:
        cosine = (1 - (img_s * img_t).sum(-1)).mean() + (1 - (txt_s * txt_t).sum(-1)).mean()
        loss = loss + config.cosine_weight * cosine
    if config.mse_weight:
        mse = (img_s - img_t).pow(2).sum(-1).mean() + (txt_s - txt_t).pow(2).sum(-1).mean()
        loss = loss + config.mse_weight * mse
    return loss


def nonzero_parameters(model: VLModel) -> int:
    """Numbers the model stores: every parameter entry except those its pruning masks remove."""
    from rcc.compression.layers import kept_parameters

    return kept_parameters(model.module)


def distill(
    student: VLModel, data: DistillData, targets: TeacherTargets, config: DistillConfig = DistillConfig(),
    frozen: set[str] = frozenset(), evaluate: Callable[[], float] | None = None,
    on_step: Callable[[StepReport], None] | None = None, cancel: Callable[[], bool] | None = None,
) -> DistillResult:
    """Train ``student`` towards ``targets`` in place; keeps the best evaluated state if any.

    ``frozen``: names (``module.named_parameters()``) that must not change (locked layers).
    """
    config.validate()
    module = student.module
    params = [p for name, p in module.named_parameters() if name not in frozen]
    if not params:
        raise RccError("nothing to train: every parameter is frozen (locked)")
    result = DistillResult(params_before=nonzero_parameters(student))
    torch.manual_seed(config.seed)  # dropout draws from the global generator
    generator = torch.Generator().manual_seed(config.seed)
    device = student.device

    def cycle(count: int) -> Iterator[int]:
        while True:
            yield from torch.randperm(count, generator=generator).tolist()

    image_order, text_order = cycle(len(data.images)), cycle(len(data.texts))

    def batches() -> Iterator[tuple[list[int], list[int]]]:
        while True:
            yield ([next(image_order) for _ in range(config.batch_size)],
                   [next(text_order) for _ in range(config.batch_size)])

    def loss_fn(batch) -> torch.Tensor:
        image_ids, text_ids = batch
        pixels = student.preprocess_batch([data.images[i] for i in image_ids]).to(device=device, dtype=student.dtype)
        tokens = student.tokens_to_device(student.tokenize([data.texts[i] for i in text_ids]))
        img_t, txt_t = targets.images[image_ids].to(device), targets.texts[text_ids].to(device)
        return distillation_loss(student.encode_image(pixels), student.encode_text(tokens), img_t, txt_t,
                                 targets.logit_scale, config)

    best: dict[str, torch.Tensor] = {}

    def keep_best(step: int, metric: float) -> None:
        best.clear()
        best.update({name: p.detach().clone() for name, p in module.named_parameters() if name not in frozen})

    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    for name, param in module.named_parameters():
        param.requires_grad_(name not in frozen)
    module.train()
    try:
        run = train(params, loss_fn, batches(), config.train_config(), evaluate=_in_eval_mode(student, evaluate),
                    on_step=on_step, cancel=cancel, after_step=lambda: reapply_masks(module), on_best=keep_best)
    finally:
        module.eval()
        for name, param in module.named_parameters():
            param.requires_grad_(name in trainable)
    if best and run.best_step != len(run.losses):
        with torch.no_grad():
            for name, param in module.named_parameters():
                if name in best:
                    param.copy_(best[name])
    result.losses, result.evals, result.stopped_early = run.losses, run.evals, run.stopped_early
    result.best_step, result.best_metric, result.seconds = run.best_step, run.best_metric, run.seconds
    result.params_after = nonzero_parameters(student)
    return result


def _in_eval_mode(model: VLModel, evaluate: Callable[[], float] | None) -> Callable[[], float] | None:
    """Evaluation runs with dropout off, then training resumes in train mode."""
    if evaluate is None:
        return None

    def run() -> float:
        model.module.eval()
        try:
            return evaluate()
        finally:
            model.module.train()

    return run


def locked_parameter_names(model: VLModel, locked_layers: set[str]) -> set[str]:
    """The parameters holding locked layers (a locked fused slice freezes its whole fused weight)."""
    from rcc.compression.layers import layer_module, module_path

    names: set[str] = set()
    for layer in model.layers():
        if layer.name not in locked_layers:
            continue
        child = layer_module(model.module, layer)
        if child is None:  # a bare parameter, or a fused slice: freeze the fused weight and its bias
            names.add(layer.param)
            if layer.rows is not None:
                bias = layer.param[: -len("weight")] + "bias" if layer.param.endswith("weight") else None
                if bias and bias in dict(model.module.named_parameters()):
                    names.add(bias)
            continue
        path = module_path(layer)
        names.update(f"{path}.{name}" for name, _ in child.named_parameters())
    return names
