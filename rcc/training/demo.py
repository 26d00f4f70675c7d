"""Training rcc-mini's image tower on the digits, text transformer locked (``rcc-tui train-demo``).

Loss: cross-entropy over logits s · normalise(f_img(x)) @ C, where C holds one embedding per
class built exactly as zero-shot evaluation builds it (per template normalise, average,
renormalise) from the locked MiniLM through the trainable text projection. The MiniLM outputs
never change, so they are computed once and only the projection runs per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from rcc.data.digits import load_digits_split
from rcc.eval.templates import DIGIT_TEMPLATES, fill
from rcc.eval.zeroshot import ZeroShotResult, evaluate_zeroshot
from rcc.models.open_clip_adapter import OpenCLIPModel
from rcc.models.rcc_mini import build_rcc_mini
from rcc.training.trainer import StepReport, TrainConfig, train


@dataclass(frozen=True)
class DemoTrainConfig:
    seed: int = 0
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    max_shift: int = 1  # random translation (pixels at 32×32) as augmentation


@dataclass(frozen=True)
class DemoTrainResult:
    model: OpenCLIPModel
    test: ZeroShotResult
    final_loss: float
    seconds: float
    config: DemoTrainConfig

    def card(self) -> dict:
        """Provenance stored next to the shipped weights."""
        return {
            "command": f"rcc-tui train-demo --seed {self.config.seed} --epochs {self.config.epochs}",
            "config": asdict(self.config),
            "test_top1": round(self.test.top1, 4),
            "test_mean_per_class_recall": round(self.test.mean_per_class_recall, 4),
            "final_loss": round(self.final_loss, 4),
            "seconds": round(self.seconds, 1),
            "torch": torch.__version__,
        }


def _pooled_prompt_features(model: OpenCLIPModel, classnames) -> torch.Tensor:
    """MiniLM mean-pooled features (C, T, 384) of every class prompt, before the projection."""
    text = model.module.text
    prompts = [fill(t, name) for name in classnames for t in DIGIT_TEMPLATES]
    ids = model.tokenize(prompts)["input_ids"]
    mask = (ids != text.config.pad_token_id).long()
    with torch.no_grad():
        pooled = text.pooler(text.transformer(input_ids=ids, attention_mask=mask), mask)
    return pooled.view(len(classnames), len(DIGIT_TEMPLATES), -1)


def _shifted(pixels: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image translated by a random (dy, dx) in [−max_shift, max_shift], zero-padded."""
    if max_shift == 0:
        return pixels
    n, _, h, w = pixels.shape
    # Pad with the normalised value of black so shifted-in borders look like background.
    padded = F.pad(pixels, (max_shift,) * 4, value=float(pixels.amin()))
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def train_demo(
    config: DemoTrainConfig = DemoTrainConfig(),
    on_step: Callable[[StepReport], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> DemoTrainResult:
    """Train rcc-mini from scratch, deterministically from ``config.seed``."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    model = build_rcc_mini(trained=False)
    module = model.module
    for param in module.text.transformer.parameters():
        param.requires_grad_(False)

    train_set = load_digits_split("train")
    pixels = model.preprocess_batch([train_set.images[i] for i in range(len(train_set))])
    labels = torch.tensor(train_set.labels)
    pooled = _pooled_prompt_features(model, train_set.classnames)
    generator = torch.Generator().manual_seed(config.seed)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            order = torch.randperm(len(labels), generator=generator)
            for begin in range(0, len(order) - config.batch_size + 1, config.batch_size):
                index = order[begin:begin + config.batch_size]
                yield _shifted(pixels[index], config.max_shift, generator), labels[index]

    def loss_fn(batch) -> torch.Tensor:
        images, targets = batch
        image_features = F.normalize(module.encode_image(images), dim=-1)
        per_template = F.normalize(module.text.proj(pooled), dim=-1)
        classifier = F.normalize(per_template.mean(dim=1), dim=-1)
        logits = module.logit_scale.exp() * image_features @ classifier.t()
        return F.cross_entropy(logits, targets)

    steps = config.epochs * (len(labels) // config.batch_size)
    module.train()
    result = train(
        [p for p in module.parameters() if p.requires_grad], loss_fn, batches(),
        TrainConfig(steps=steps, lr=config.lr, weight_decay=config.weight_decay,
                    warmup_steps=int(config.warmup_fraction * steps), seed=config.seed),
        on_step=on_step, cancel=cancel,
    )
    module.eval()
    test = evaluate_zeroshot(model, load_digits_split("test"), DIGIT_TEMPLATES)
    return DemoTrainResult(model=model, test=test, final_loss=result.losses[-1],
                           seconds=time.perf_counter() - start, config=config)
