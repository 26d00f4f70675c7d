"""A small, deterministic trainer: AdamW, warm-up + decay, clipping, accumulation, autocast,
periodic evaluation with early stopping, progress callbacks and cooperative cancellation.

It knows nothing about models: it gets the trainable parameters, a loss function over a batch
and a batch source. The demo trainer and recovery training both run on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from rcc.errors import Cancelled, RccError
from rcc.precision import PRECISIONS, autocast
from rcc.training.lr_schedule import SCHEDULES, lr_factor


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_factor: float = 0.0
    grad_clip: float | None = 1.0
    accumulation: int = 1
    precision: str = "fp32"
    eval_every: int | None = None
    patience: int | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 1:
            raise RccError(f"steps={self.steps} is invalid; allowed: an integer ≥ 1")
        if not self.lr > 0:
            raise RccError(f"lr={self.lr} is invalid; allowed: a number > 0")
        if self.schedule not in SCHEDULES:
            raise RccError(f"schedule={self.schedule!r} is invalid; allowed: {', '.join(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise RccError(f"precision={self.precision!r} is invalid; allowed: {', '.join(PRECISIONS)}")
        if self.accumulation < 1:
            raise RccError(f"accumulation={self.accumulation} is invalid; allowed: an integer ≥ 1")


@dataclass(frozen=True)
class StepReport:
    step: int
    total: int
    loss: float
    lr: float
    elapsed_s: float


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    best_metric: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0


def train(
    params: Sequence[torch.nn.Parameter],
    loss_fn: Callable[[object], torch.Tensor],
    batches: Iterator,
    config: TrainConfig,
    evaluate: Callable[[], float] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    after_step: Callable[[], None] | None = None,
    on_best: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Minimise ``loss_fn(batch)`` over ``config.steps`` optimiser steps.

    Each step averages ``accumulation`` micro-batches. With ``evaluate`` (higher is better) and
    ``eval_every``, training stops after ``patience`` evaluations without improvement.
    ``after_step`` runs after every optimiser step (recovery training re-applies pruning
    masks there); ``on_best(step, metric)`` runs when an evaluation improves on the best.
    """
    config.validate()
    params = [p for p in params if p.requires_grad]
    if not params:
        raise RccError("nothing to train: every parameter is frozen")
    device_type = params[0].device.type
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.steps, config.warmup_steps, config.schedule, config.min_lr_factor)
    )
    scaler = torch.amp.GradScaler(device_type) if config.precision == "fp16" and device_type == "cuda" else None
    result = TrainResult()
    since_best = 0
    start = time.perf_counter()
    for step in range(config.steps):
        if cancel is not None and cancel():
            raise Cancelled(f"training cancelled at step {step}")
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(config.accumulation):
            with autocast(device_type, config.precision):
                loss = loss_fn(next(batches)) / config.accumulation
            (scaler.scale(loss) if scaler else loss).backward()
            total += loss.item()
        if scaler:
            scaler.unscale_(optimizer)
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if after_step:
            after_step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        result.losses.append(total)
        if on_step:
            on_step(StepReport(step=step, total=config.steps, loss=total, lr=lr, elapsed_s=time.perf_counter() - start))
        if evaluate and config.eval_every and ((step + 1) % config.eval_every == 0 or step + 1 == config.steps):
            metric = float(evaluate())
            result.evals.append((step + 1, metric))
            if result.best_metric is None or metric > result.best_metric:
                result.best_metric, result.best_step, since_best = metric, step + 1, 0
                if on_best:
                    on_best(step + 1, metric)
            else:
                since_best += 1
                if config.patience and since_best >= config.patience:
                    result.stopped_early = True
                    break
    result.seconds = time.perf_counter() - start
    return result
