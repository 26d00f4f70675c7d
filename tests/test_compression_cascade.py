"""The recursive cascade with a scripted evaluator: backoff, skip, cancel, bad plans and configs."""


import pytest
import torch
from torch import nn

from hf_tiny import random_images
from rcc.compression import dare
from rcc.compression.calibration import CalibrationData
from rcc.compression.cascade import CascadeConfig, run_cascade
from rcc.compression.layers import LowRankLinear, SplitAttention, get_mask, layer_form
from rcc.compression.plan import CompressionPlan, Rule
from rcc.errors import Cancelled, RccError
from rcc.models.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

CALIBRATION = CalibrationData(images=random_images(8, seed=1),
                              texts=("a photo of a cat", "two dogs on the grass", "a red car", "a small bird"))
TEXT_HALF = CompressionPlan(rules=(Rule(tower="text", settings={"sparsity": 0.5}),))
N_TEXT_LAYERS = 13  # 2 blocks × (q, k, v, out, c_fc, c_proj) + text_projection


@pytest.fixture
def tiny(config_path):
    torch.manual_seed(0)
    return load_model(f"open_clip:{config_path}", device="cpu")


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _same_state(model, saved) -> bool:
    now = model.module.state_dict()
    return set(now) == set(saved) and all(now[k].dtype == v.dtype and torch.equal(now[k], v) for k, v in saved.items())


class Script:
    """An evaluator that returns predetermined metrics and records the model each time it is asked."""

    def __init__(self, *metrics: float):
        self.metrics = list(metrics)
        self.states: list[dict[str, torch.Tensor]] = []

    def __call__(self, model) -> float:
        assert self.metrics, "the cascade evaluated more often than scripted"
        self.states.append(_state(model))
        return self.metrics.pop(0)


def _text_masks(model):
    return {layer.name: get_mask(model.module, layer) for layer in model.layers() if layer.tower == "text"}


def test_backoff_halves_towards_the_previous_strength_and_restores_each_undone_attempt(tiny):
    dense = {layer.name: tiny.module.get_parameter(layer.param).detach().clone()
             for layer in tiny.layers() if layer.tower == "text" and layer.rows is None and not layer.transposed}
    ticks: list[dict[str, torch.Tensor]] = []

    def progress(stage, i, total, name):
        if stage == "calibration":  # the calibration pass reports through the same callback, first
            assert not ticks and name in ("images", "texts")
            return
        assert (stage, total) == ("dare", N_TEXT_LAYERS)
        if i == 0:
            ticks.append(_state(tiny))  # the model as the attempt starts

    script = Script(1.0, 0.5, 0.6, 0.97)  # dense; f = 1 undone; f = 0.5 undone; f = 0.25 kept
    seen = []
    result = run_cascade(tiny, TEXT_HALF, script, CALIBRATION, config=CascadeConfig(stages=("dare",), threshold=0.95),
                         progress=progress, on_attempt=seen.append)
    assert not script.metrics  # every scripted metric was used, no more
    assert [a.fraction for a in result.attempts] == [1.0, 0.5, 0.25]
    assert [a.accepted for a in result.attempts] == [False, False, True]
    assert [a.metric for a in result.attempts] == [0.5, 0.6, 0.97]
    assert [(a.step, a.stage, a.attempt) for a in result.attempts] == [(1, "dare", 1), (1, "dare", 2), (1, "dare", 3)]
    assert [a.changed for a in result.attempts] == [N_TEXT_LAYERS] * 3
    assert seen == result.attempts and result.skipped == []
    assert (result.dense_metric, result.final_metric, result.threshold) == (1.0, 0.97, 0.95)
    # Each attempt starts from the very same (unfused, uncompressed) model: undone means bit-identical.
    assert len(ticks) == 3
    for later in ticks[1:]:
        assert set(later) == set(ticks[0]) and all(torch.equal(later[k], v) for k, v in ticks[0].items())
    # The kept attempt pruned 0.25 × 0.5 of every text layer, from the dense weights (not from the undone ones).
    masks = _text_masks(tiny)
    pruned = sum(int((~m).sum()) for m in masks.values())
    total = sum(layer.params for layer in tiny.layers() if layer.tower == "text")
    assert pruned == sum(round(0.125 * layer.params) for layer in tiny.layers() if layer.tower == "text")
    c_fc = "transformer.resblocks.0.mlp.c_fc"
    assert torch.equal(masks[c_fc], dare.magnitude_mask(dense[c_fc], 0.125))
    assert (result.params_before, result.params_after) == (total, total - pruned)
    assert result.removed_fraction == pytest.approx(pruned / total)
    assert result.model_params_after == result.model_params_before  # masks keep the numbers stored dense
    assert all(layer_form(tiny.module, layer) == "dense" for layer in tiny.layers() if layer.tower == "vision")


def test_a_later_step_backs_off_towards_the_strength_the_stage_already_reached(tiny):
    script = Script(1.0, 0.99, 0.5, 0.98)  # step 1 (f = 0.5) kept; step 2: f = 1 undone, f = 0.75 kept
    result = run_cascade(tiny, TEXT_HALF, script, CALIBRATION,
                         config=CascadeConfig(stages=("dare",), threshold=0.95, steps=2))
    assert [(a.step, a.fraction, a.accepted) for a in result.attempts] == [
        (1, 0.5, True), (2, 1.0, False), (2, 0.75, True)]
    # The undone f = 1 attempt was rolled back to the step-1 model, not to dense.
    step1, undone, kept = script.states[1:]
    for layer in tiny.layers():
        if layer.tower != "text" or layer.transposed:
            continue
        key = layer.param.replace(".weight", ".weight_mask")
        assert int((~step1[key]).sum()) == round(0.25 * layer.params)
        assert int((~undone[key]).sum()) == round(0.5 * layer.params)
        assert int((~kept[key]).sum()) == round(0.375 * layer.params)
        assert not (kept[key] & ~step1[key]).any()  # the kept step grew the step-1 mask
    assert result.final_metric == 0.98


def test_a_stage_failing_every_attempt_is_skipped_and_leaves_the_model_as_before_it(tiny):
    plan = CompressionPlan(rules=(Rule(tower="text", settings={"sparsity": 0.5}),
                                  Rule(tower="text", kind="mlp_in", settings={"rank": 4})))
    script = Script(1.0, 0.97, 0.1, 0.2, 0.3)  # dense; dare kept; nullu fails three times
    result = run_cascade(tiny, plan, script, CALIBRATION,
                         config=CascadeConfig(stages=("dare", "nullu"), threshold=0.95, max_attempts=3))
    assert [(a.stage, a.fraction, a.accepted) for a in result.attempts] == [
        ("dare", 1.0, True), ("nullu", 1.0, False), ("nullu", 0.5, False), ("nullu", 0.25, False)]
    assert [a.changed for a in result.attempts[1:]] == [2, 2, 2]  # both text c_fc factorised each time
    assert len(result.skipped) == 1
    skip = result.skipped[0]
    assert (skip["step"], skip["stage"]) == (1, "nullu")
    assert "0.9500" in skip["reason"] and "3 attempts" in skip["reason"] and "\n" not in skip["reason"]
    # Exactly the model the accepted DARE attempt produced: no factors, same masks, same values.
    after_dare = script.states[1]
    assert _same_state(tiny, after_dare)
    assert not any(isinstance(m, LowRankLinear) for m in tiny.module.modules())
    assert result.final_metric == 0.97
    assert result.params_after == sum(int(m.sum()) for m in _text_masks(tiny).values())


# DARE ticks 15 layers (13 text + 2 vision q), then Nullu 2 (the text c_fc): 16 stops Nullu half way.
@pytest.mark.parametrize("ticks_before_cancel", [0, 1, 5, 15, 16])
def test_cancel_restores_every_weight_and_module(tiny, ticks_before_cancel):
    plan = CompressionPlan(rules=(Rule(tower="text", settings={"sparsity": 0.5}),
                                  Rule(tower="text", kind="mlp_in", settings={"rank": 4}),
                                  Rule(tower="vision", kind="attn_q", settings={"sparsity": 0.3})))
    saved = _state(tiny)
    names = [(layer.name, layer.param, layer.rows) for layer in tiny.layers()]
    tokens = tiny.tokenize(["a photo of a cat"])
    with torch.no_grad():
        text = tiny.encode_text(tokens).clone()
    ticks = []
    evaluator = Script(*([1.0] * 5))
    with pytest.raises(Cancelled):
        run_cascade(tiny, plan, evaluator, CALIBRATION, config=CascadeConfig(stages=("dare", "nullu")),
                    progress=lambda *args: args[0] != "calibration" and ticks.append(args),  # layer ticks
                    cancel=lambda: len(ticks) >= ticks_before_cancel)
    assert len(ticks) == ticks_before_cancel
    if ticks_before_cancel == 16:
        assert [t[0] for t in ticks] == ["dare"] * 15 + ["nullu"]  # one layer factorised, then cancelled
        assert evaluator.metrics == [1.0] * 3  # dense and the accepted DARE attempt were evaluated
    assert _same_state(tiny, saved)
    assert [(layer.name, layer.param, layer.rows) for layer in tiny.layers()] == names  # fused again
    assert not any(isinstance(m, (LowRankLinear, SplitAttention)) for m in tiny.module.modules())
    assert sum(isinstance(m, nn.MultiheadAttention) for m in tiny.module.modules()) == 4
    with torch.no_grad():
        assert torch.equal(tiny.encode_text(tokens), text)


def test_an_evaluator_error_also_restores_the_model(tiny):
    saved = _state(tiny)
    calls = []

    def broken(model):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("evaluation crashed")
        return 1.0

    with pytest.raises(RuntimeError, match="evaluation crashed"):
        run_cascade(tiny, TEXT_HALF, broken, CALIBRATION, config=CascadeConfig(stages=("dare",)))
    assert _same_state(tiny, saved)


def test_a_plan_selecting_nothing_is_refused(tiny):
    saved = _state(tiny)
    locked = CompressionPlan(rules=(Rule(tower="text", settings={"sparsity": 0.5, "locked": True}),))
    for plan in (CompressionPlan(), locked):
        with pytest.raises(RccError, match="selects no layer") as error:
            run_cascade(tiny, plan, Script(1.0), CALIBRATION)
        assert "\n" not in str(error.value)
    assert _same_state(tiny, saved)


@pytest.mark.parametrize("config, words", [
    (CascadeConfig(threshold=1.5), ["threshold 1.5", "0 ≤ threshold ≤ 1"]),
    (CascadeConfig(threshold=-0.1), ["threshold -0.1"]),
    (CascadeConfig(stages=("dare", "prune")), ["'prune'", "dare, nullu, alphaedit"]),
    (CascadeConfig(stages=()), ["stages []", "non-empty"]),
    (CascadeConfig(max_attempts=0), ["max_attempts 0", "≥ 1"]),
    (CascadeConfig(schedule="steep"), ["'steep'", "linear"]),
    (CascadeConfig(steps=0), ["steps 0"]),
])
def test_bad_configs_are_one_line_errors_naming_the_value(tiny, config, words):
    saved = _state(tiny)
    script = Script(1.0)
    with pytest.raises(RccError) as error:
        run_cascade(tiny, TEXT_HALF, script, CALIBRATION, config=config)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert script.states == [] and _same_state(tiny, saved)  # refused before touching anything
