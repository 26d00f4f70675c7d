"""The generic trainer and its learning-rate schedules."""

import math

import pytest
import torch

from rcc.errors import Cancelled, RccError
from rcc.training.lr_schedule import lr_factor
from rcc.training.trainer import TrainConfig, train


def _regression_problem(seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=generator)
    y = x @ torch.randn(8, 1, generator=generator)
    model = torch.nn.Linear(8, 1)

    def batches():
        while True:
            yield x, y

    return model, batches(), lambda batch: torch.nn.functional.mse_loss(model(batch[0]), batch[1])


def test_loss_goes_down_on_a_fixed_batch():
    torch.manual_seed(0)
    model, batches, loss_fn = _regression_problem(0)
    result = train(model.parameters(), loss_fn, batches, TrainConfig(steps=60, lr=0.05, weight_decay=0.0))
    assert len(result.losses) == 60
    assert result.losses[-1] < 0.05 * result.losses[0]


def test_same_seed_same_weights_bit_for_bit():
    finals = []
    for _ in range(2):
        torch.manual_seed(7)
        model, batches, loss_fn = _regression_problem(1)
        train(model.parameters(), loss_fn, batches, TrainConfig(steps=10, lr=0.01, warmup_steps=3))
        finals.append(model.weight.detach().clone())
    assert torch.equal(finals[0], finals[1])


def test_accumulation_averages_micro_batches():
    # Two micro-batches of the same data accumulate to the same gradient as one.
    weights = []
    for accumulation in (1, 2):
        torch.manual_seed(0)
        model, batches, loss_fn = _regression_problem(2)
        train(model.parameters(), loss_fn, batches,
              TrainConfig(steps=3, lr=0.01, accumulation=accumulation, grad_clip=None))
        weights.append(model.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1])


def test_early_stopping_after_patience_without_improvement():
    model, batches, loss_fn = _regression_problem(3)
    scores = iter([0.5, 0.6, 0.55, 0.58, 0.59, 0.9])
    result = train(model.parameters(), loss_fn, batches,
                   TrainConfig(steps=100, eval_every=5, patience=3), evaluate=lambda: next(scores))
    assert result.stopped_early
    assert result.evals == [(5, 0.5), (10, 0.6), (15, 0.55), (20, 0.58), (25, 0.59)]
    assert (result.best_step, result.best_metric) == (10, 0.6)


def test_bf16_autocast_runs_on_cpu_and_learns():
    torch.manual_seed(0)
    model, batches, loss_fn = _regression_problem(4)
    result = train(model.parameters(), loss_fn, batches, TrainConfig(steps=40, lr=0.05, precision="bf16"))
    assert result.losses[-1] < 0.2 * result.losses[0]


def test_cancel_stops_between_steps():
    model, batches, loss_fn = _regression_problem(5)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 4

    with pytest.raises(Cancelled, match="step 4"):
        train(model.parameters(), loss_fn, batches, TrainConfig(steps=50), cancel=cancel)


@pytest.mark.parametrize("field, value, allowed", [
    ("steps", 0, "≥ 1"), ("lr", -1.0, "> 0"), ("schedule", "wobbly", "cosine"), ("precision", "int4", "bf16"),
])
def test_bad_configs_name_the_value_and_what_is_allowed(field, value, allowed):
    model, batches, loss_fn = _regression_problem(6)
    config = TrainConfig(**{"steps": 5, field: value})
    with pytest.raises(RccError) as info:
        train(model.parameters(), loss_fn, batches, config)
    assert str(value) in str(info.value) and allowed in str(info.value)


def test_lr_schedules_warm_up_then_decay():
    assert [lr_factor(s, 10, 4, "cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 10, 4, "cosine") == 1.0
    # Half-way through the decay: cosine ½(1 + cos π/2) = 0.5, linear 0.5.
    assert lr_factor(7, 10, 4, "cosine") == pytest.approx(0.5)
    assert lr_factor(7, 10, 4, "linear") == pytest.approx(0.5)
    assert lr_factor(9, 10, 4, "constant") == 1.0
    assert lr_factor(10, 10, 0, "cosine", min_factor=0.1) == pytest.approx(0.1)
    assert lr_factor(2, 10, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
