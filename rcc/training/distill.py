"""Recovery training: distil a teacher (usually the dense model) into a compressed student.

On each step, a batch of B unlabelled images and B texts (class prompts, captions, general
sentences). With teacher embeddings t (precomputed, L2-normalised) and student embeddings s:

    similarity logits   S = σ · norm(img) · norm(txt)ᵀ        (σ: the teacher's logit scale)
    KL                  T² · ½ [KL(softmax(S_t/T) ‖ softmax(S_s/T)) over rows + over columns]
    cosine              (1 − cos(img_s, img_t)) + (1 − cos(txt_s, txt_t)), batch mean
    MSE                 ‖img_s − img_t‖² + ‖txt_s − txt_t‖², batch mean (normalised embeddings)
    attention           mean over the vision tower's attention blocks of the row-wise
                        KL(A_t ‖ A_s) between head-averaged attention maps (rcc.training.attention)

Models with image-grounded text (BLIP) add a KL on the teacher's own predictions there, under
the same w_kl (``rcc.training.grounded_distill``): a captioner's next-token distributions on
teacher-forced captions, a retriever's ITM distributions on matched and mismatched pairs. A
captioner has no text embedding: its KL is the next-token one alone, and cosine and MSE compare
image embeddings only.

loss = w_kl · KL + w_cos · cosine + w_mse · MSE + w_att · attention. The student keeps its
compressed structure: pruning masks are re-applied after every optimiser step, low-rank layers
train their two factors, and frozen parameters (locked layers) get no gradient, so the parameter
count after training equals the one before.

Int8 layers (the quant stage) stay frozen, bias included: their int8 values are buffers no
optimiser sees, and in training mode they run on their dequantised weights with activations
fake-quantised as the inference kernel does (straight-through gradient), so the float layers
around them learn to compensate the exact int8 model that will be deployed. Fake-quant
training of the int8 layers themselves is not offered: their values would drift from the
calibrated rounding and need re-quantising after every step.

Attention transfer (``attention_weight`` > 0) covers OpenCLIP ViTs, dense or compressed (split
q / k / v): the maps are recomputed by forward pre-hooks from each block's input with the
block's own q / k projections, so they train the student's q / k weights. The teacher's maps of
every training image are precomputed with its embeddings (float16, on the CPU) before the
teacher is freed. Models whose vision tower has no such blocks (HF CLIP / BLIP, ResNet towers)
refuse ``attention_weight`` > 0; text towers never take part.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from rcc.compression.layers import reapply_masks
from rcc.compression.quantized_layers import quantized_parameter_names
from rcc.errors import RccError
from rcc.eval.encode import check_cancel, encode_images, encode_texts
from rcc.models.adapter import VLModel
from rcc.training.attention import (
    attention_blocks,
    attention_transfer_loss,
    capture_attention,
    require_attention_blocks,
)
from rcc.training.grounded_distill import grounded_kl, uses_grounded_terms
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
    attention_weight: float = 0.0  # attention transfer (vision tower of OpenCLIP ViTs only)
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
        for name in ("kl_weight", "cosine_weight", "mse_weight", "attention_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                extra = " (0: no attention transfer)" if name == "attention_weight" else ""
                raise RccError(f"{name}={value!r} is invalid; allowed: a number ≥ 0{extra}")
        attention = self.attention_weight
        weights = (self.kl_weight, self.cosine_weight, self.mse_weight, attention)
        if min(weights) < 0 or sum(weights) == 0:
            raise RccError(f"loss weights kl={self.kl_weight}, cosine={self.cosine_weight}, mse={self.mse_weight}, "
                           f"attention={attention} are invalid; allowed: numbers ≥ 0, not all zero")
        self.train_config().validate()

    def train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, lr=self.lr, weight_decay=self.weight_decay,
                           warmup_steps=self.warmup_steps, schedule=self.schedule, grad_clip=self.grad_clip,
                           accumulation=self.accumulation, precision=self.precision, eval_every=self.eval_every,
                           patience=self.patience, seed=self.seed)


@dataclass(frozen=True)
class DistillData:
    """What the student learns from: images and texts, no labels; ``captions[i]`` (if given) the
    texts that go with image i (its captions or class prompts), for grounded terms."""

    images: Sequence  # an ImageList (PIL images)
    texts: tuple[str, ...]
    captions: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class TeacherTargets:
    images: torch.Tensor  # (N, D) normalised
    texts: torch.Tensor | None  # (M, D) normalised; None for models without a text embedding (captioners)
    logit_scale: float
    # Block path → (N, tokens, tokens) head-averaged attention maps of every image, float16 on
    # the CPU; None unless asked for. float16 halves what float32 would hold (N × blocks × tokens²
    # numbers): entries lie in [0, 1], where its 11-bit significand keeps a relative error
    # ≤ 2⁻¹¹ and subnormals reach 6e-8 (bfloat16 would keep 8 bits); rows are renormalised on use.
    attention: dict[str, torch.Tensor] | None = None


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
    """The train split's images and its prompts (or captions), plus general sentences.

    The train split only (``rcc.data.roles``): the eval split, which picks the best step, and
    the test split stay unseen.
    """
    from rcc.data.registry import load_dataset
    from rcc.data.roles import CALIBRATION_SPLIT
    from rcc.data.text_corpus import docstring_sentences
    from rcc.data.types import ClassificationDataset
    from rcc.eval.templates import default_templates, fill

    dataset = load_dataset(data_spec, CALIBRATION_SPLIT)
    if isinstance(dataset, ClassificationDataset):
        prompts = [tuple(fill(t, name) for t in default_templates(data_spec)) for name in dataset.classnames]
        texts = tuple(prompt for per_class in prompts for prompt in per_class)
        captions = tuple(prompts[label] for label in dataset.labels)
    else:
        texts = tuple(c for caps in dataset.captions for c in caps)
        captions = tuple(dataset.captions)
    return DistillData(images=dataset.images, texts=texts + tuple(docstring_sentences("calib")[:corpus_sentences]),
                       captions=captions)


def logit_scale_of(model: VLModel) -> float:
    scale = getattr(model.module, "logit_scale", None)
    return float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0


# The teacher's stored attention maps may take at most this many bytes (N × blocks × tokens² × 2).
ATTENTION_TARGETS_LIMIT = 4 << 30


def teacher_targets(teacher: VLModel, data: DistillData, cancel=None, attention: bool = False,
                    progress=None) -> TeacherTargets:
    """The teacher's normalised embeddings of every training image and text (computed once).

    ``attention``: also its head-averaged attention maps of every image (same forward pass).
    ``progress(done, total, what)``: at the start and after every batch of images, then of texts.
    """
    if progress:
        progress(0, len(data.images), "images")
    if attention:
        images, maps = _images_and_attention(teacher, data.images, cancel, progress=progress)
    else:
        images, maps = encode_images(teacher, data.images, cancel=cancel, progress=progress), None
    texts = encode_texts(teacher, list(data.texts), cancel=cancel, progress=progress) if teacher.embeds_text else None
    return TeacherTargets(images, texts, logit_scale_of(teacher), attention=maps)


def _images_and_attention(model: VLModel, images, cancel, batch_size: int = 128, progress=None):
    """As ``encode_images`` (same batches and numbers), capturing every block's maps as it goes."""
    blocks = attention_blocks(model.module)
    if not blocks:
        raise RccError("the teacher's attention maps were asked for, but its vision tower has no attention blocks "
                       "rcc can read maps from; allowed: attention_weight=0 for this model (attention transfer "
                       "covers OpenCLIP ViTs, visual.transformer.resblocks.*.attn)")
    total = len(images)
    chunks: list[torch.Tensor] = []
    maps: dict[str, torch.Tensor] = {}
    for start in range(0, total, batch_size):
        check_cancel(cancel)
        stop = min(start + batch_size, total)
        pixels = model.preprocess_batch([images[i] for i in range(start, stop)])
        with torch.inference_mode(), capture_attention(model.module, blocks) as captured:
            features = model.encode_image(pixels.to(device=model.device, dtype=model.dtype))
        chunks.append(F.normalize(features.float(), dim=-1).cpu())
        if not maps:
            shape = captured[blocks[0]].shape[1:]
            size = total * len(blocks) * shape.numel() * 2
            if size > ATTENTION_TARGETS_LIMIT:
                raise RccError(f"attention_weight > 0 would store the teacher's attention maps of {total} images × "
                               f"{len(blocks)} blocks × {shape[0]}×{shape[1]} tokens ({size / 2**30:.1f} GiB); "
                               f"allowed: at most {ATTENTION_TARGETS_LIMIT / 2**30:.0f} GiB (use attention_weight 0, "
                               f"or a dataset with fewer training images)")
            maps = {name: torch.empty((total, *shape), dtype=torch.float16) for name in blocks}
        for name in blocks:
            maps[name][start:stop] = captured[name].to(torch.float16).cpu()
        if progress:
            progress(stop, total, "images")
    return (torch.cat(chunks) if chunks else torch.empty(0, 0)), maps


def attention_targets_of(student: VLModel, targets: TeacherTargets, weight: float) -> list[str]:
    """The blocks whose maps the attention term compares (none when ``weight`` is 0)."""
    if not weight:
        return []
    blocks = require_attention_blocks(student.module, weight)
    if targets.attention is None:
        raise RccError(f"attention_weight={weight} needs the teacher's attention maps; allowed: targets from "
                       f"teacher_targets(..., attention=True), or attention_weight 0")
    shared = [name for name in blocks if name in targets.attention]
    if not shared:
        raise RccError(f"attention_weight={weight}: the teacher's maps ({', '.join(sorted(targets.attention))}) "
                       f"share no block with the student's; allowed: a teacher of the student's architecture")
    return shared


def distillation_loss(img_s, txt_s, img_t, txt_t, scale: float, config: DistillConfig,
                      attn_s: Mapping[str, torch.Tensor] | None = None,
                      attn_t: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The weighted loss of the module docstring for one batch (student embeddings unnormalised).

    ``txt_s`` / ``txt_t`` None (a model without text embeddings): no similarity KL, and cosine
    and MSE on the images alone.
    ``attn_s`` / ``attn_t``: block → (B, L, L) maps of the batch's images (``capture_attention``),
    needed when ``config.attention_weight`` > 0.
    """
    img_s = F.normalize(img_s.float(), dim=-1)
    loss = img_s.new_zeros(())
    if txt_s is None or txt_t is None:
        if config.cosine_weight:
            loss = loss + config.cosine_weight * (1 - (img_s * img_t).sum(-1)).mean()
        if config.mse_weight:
            loss = loss + config.mse_weight * (img_s - img_t).pow(2).sum(-1).mean()
        return loss + _attention_term(config, attn_s, attn_t)
    txt_s = F.normalize(txt_s.float(), dim=-1)
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
    return loss + _attention_term(config, attn_s, attn_t)


def _attention_term(config: DistillConfig, attn_s, attn_t) -> torch.Tensor | float:
    if not config.attention_weight:
        return 0.0
    if attn_s is None or attn_t is None:
        raise RccError(f"attention_weight={config.attention_weight} needs the student's and the teacher's "
                       f"attention maps; allowed: maps from capture_attention, or attention_weight 0")
    return config.attention_weight * attention_transfer_loss(attn_s, attn_t)


def nonzero_parameters(model: VLModel) -> int:
    """Numbers the model stores: every parameter entry except those its pruning masks remove."""
    from rcc.compression.layers import kept_parameters

    return kept_parameters(model.module)


def distill(
    student: VLModel, data: DistillData, targets: TeacherTargets, config: DistillConfig = DistillConfig(),
    frozen: set[str] = frozenset(), evaluate: Callable[[], float] | None = None,
    on_step: Callable[[StepReport], None] | None = None, cancel: Callable[[], bool] | None = None,
    teacher: VLModel | None = None,
) -> DistillResult:
    """Train ``student`` towards ``targets`` in place; keeps the best evaluated state if any.

    ``frozen``: names (``module.named_parameters()``) that must not change (locked layers).
    ``teacher``: the teacher model itself, run alongside for the grounded terms (models for
    which ``uses_grounded_terms``; ``data.captions`` then gives each image its texts).
    """
    config.validate()
    module = student.module
    frozen = set(frozen) | quantized_parameter_names(module)
    blocks = attention_targets_of(student, targets, config.attention_weight)
    grounded = bool(config.kl_weight) and uses_grounded_terms(student)
    with_text = student.embeds_text and targets.texts is not None
    _check_grounded_inputs(student, data, config, grounded, with_text, teacher)
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

    def batches() -> Iterator[tuple[list[int], list[int], list[str]]]:
        while True:
            image_ids = [next(image_order) for _ in range(config.batch_size)]
            text_ids = [next(text_order) for _ in range(config.batch_size)] if with_text else []
            # One of each image's texts, drawn only when used (other models' draws stay as they were).
            captions = [data.captions[i][int(torch.randint(len(data.captions[i]), (1,), generator=generator))]
                        for i in image_ids] if grounded else []
            yield image_ids, text_ids, captions

    def encode_batch_images(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not grounded:
            return student.encode_image(pixels), None
        states = student.image_states(pixels)
        return student.image_embedding(states), states

    def loss_fn(batch) -> torch.Tensor:
        image_ids, text_ids, captions = batch
        pixels = student.preprocess_batch([data.images[i] for i in image_ids]).to(device=device, dtype=student.dtype)
        img_t = targets.images[image_ids].to(device)
        attn_s = attn_t = None
        if blocks:
            with capture_attention(module, blocks) as attn_s:
                img_s, states = encode_batch_images(pixels)
            attn_t = {name: targets.attention[name][image_ids].to(device) for name in blocks}
        else:
            img_s, states = encode_batch_images(pixels)
        txt_s = txt_t = None
        if with_text:
            tokens = student.tokens_to_device(student.tokenize([data.texts[i] for i in text_ids]))
            txt_s, txt_t = student.encode_text(tokens), targets.texts[text_ids].to(device)
        loss = distillation_loss(img_s, txt_s, img_t, txt_t, targets.logit_scale, config, attn_s, attn_t)
        if grounded:
            loss = loss + config.kl_weight * grounded_kl(student, teacher, states, pixels, captions,
                                                         config.temperature)
        return loss

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


def _check_grounded_inputs(student: VLModel, data: DistillData, config: DistillConfig, grounded: bool,
                           with_text: bool, teacher: VLModel | None) -> None:
    """Refuse, before any step, a run whose loss would be empty or whose grounded terms lack inputs."""
    if not with_text and not grounded and not (config.cosine_weight or config.mse_weight or config.attention_weight):
        raise RccError(f"kl_weight={config.kl_weight}, cosine_weight={config.cosine_weight}, mse_weight="
                       f"{config.mse_weight} leave nothing to train for {student.spec!r} (no text embedding); "
                       f"allowed: kl_weight > 0 (next-token KL of a captioner) or cosine / MSE on its images")
    if not grounded:
        return
    if teacher is None:
        raise RccError(f"kl_weight={config.kl_weight} on {student.spec!r} distils its image-grounded text, which "
                       f"needs the teacher model itself; allowed: distill(..., teacher=model), or kl_weight 0")
    if len(data.captions) != len(data.images) or any(not texts for texts in data.captions):
        raise RccError(f"kl_weight={config.kl_weight} on {student.spec!r} needs at least one text per training "
                       f"image (DistillData.captions has {len(data.captions)} for {len(data.images)} images); "
                       f"allowed: data from distill_data, or kl_weight 0")


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
