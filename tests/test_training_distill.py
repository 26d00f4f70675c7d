"""Recovery training by distillation (rcc.training.distill): the student keeps its compressed
structure (masks, ranks, locked layers), the loss terms match their formulas, training lowers
the loss on a fixed batch, runs reproduce from their seed, and bad settings are refused."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from rcc.compression.layers import (
    LowRankLinear, SplitAttention, factorise, layer_module, set_factor_masks, set_mask, unfuse,
)
from rcc.data.registry import load_dataset
from rcc.data.types import indices_subset
from rcc.errors import Cancelled, RccError
from rcc.models.registry import load_model
from rcc.session.ops import OpError, Train, op_from_dict, op_to_dict
from rcc.training.attention import (
    attention_blocks,
    attention_transfer_loss,
    capture_attention,
    require_attention_blocks,
)
from rcc.training.distill import (
    DistillConfig, DistillData, distill, distillation_loss, locked_parameter_names,
    logit_scale_of, teacher_targets,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ("a photo of the digit zero.", "a photo of the digit one.", "a photo of the digit two.",
         "a photo of the digit three.", "a handwritten four.", "a handwritten five.",
         "the number six, written by hand.", "the number seven, written by hand.")
# One batch: as many images as texts as the batch size.
FAST = dict(steps=5, lr=1e-3, batch_size=8, warmup_steps=0, schedule="constant")

MASKED = ("visual.transformer.resblocks.0.mlp.c_fc",       # a Linear
          "visual.transformer.resblocks.0.attn.in_proj.q",  # a fused slice (split first)
          "visual.proj",                                     # a bare (in, out) parameter
          "transformer.resblocks.0.mlp.c_proj")             # the text tower
FACTORISED = "visual.transformer.resblocks.1.mlp.c_fc"
FACTOR_MASKED = "transformer.resblocks.1.mlp.c_fc"          # factorised, with masks on its factors


@pytest.fixture(scope="module")
def teacher(config_path):
    torch.manual_seed(0)
    return load_model(f"open_clip:{config_path}", device="cpu")


@pytest.fixture(scope="module")
def data():
    digits = load_dataset("digits", "train")
    return DistillData(images=indices_subset(digits.images, range(8)), texts=TEXTS)


@pytest.fixture(scope="module")
def targets(teacher, data):
    return teacher_targets(teacher, data)


def perturbed(teacher, scale: float = 0.05, seed: int = 1):
    """A copy of the teacher with noise on every parameter (so no entry is exactly zero)."""
    student = copy.deepcopy(teacher)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in student.module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return student


def keep_half(shape, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator) >= 0.5


def compressed_student(teacher):
    """Four layers masked at 50 % (Linear, split q slice, bare projection, text Linear), one
    layer factorised to rank 4 and one factorised to rank 4 with masks on both factors."""
    student = perturbed(teacher)
    module = student.module
    index = student.layer_index
    unfuse(module, [index[MASKED[1]]])
    index = student.layer_index
    for seed, name in enumerate(MASKED):
        layer = index[name]
        set_mask(module, layer, keep_half(tuple(get_dense(module, layer).shape), seed))
    for name in (FACTORISED, FACTOR_MASKED):
        layer = index[name]
        weight = get_dense(module, layer)
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        factorise(module, layer, u[:, :4] * s[:4], vh[:4])
    layer = index[FACTOR_MASKED]
    low_rank = layer_module(module, layer)
    set_factor_masks(module, layer, keep_half(low_rank.up.shape, 10), keep_half(low_rank.down.shape, 11))
    return student


def get_dense(module, layer):
    from rcc.compression.layers import dense_weight

    return dense_weight(module, layer).detach().clone()


def masks_of(module) -> dict[str, torch.Tensor]:
    """Parameter name → keep-mask, for every masked parameter."""
    from rcc.compression.layers import masked_parameter

    out = {}
    for path, holder in module.named_modules():
        for buffer, mask in holder.named_buffers(recurse=False):
            target = masked_parameter(holder, buffer)
            if target is not None:
                out[f"{path}.{target}" if path else target] = mask.clone()
    return out


def snapshot(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def nonzero(module) -> dict[str, int]:
    return {name: int(torch.count_nonzero(p.detach())) for name, p in module.named_parameters()}


# -- structure survives training ---------------------------------------------------------

def test_masks_ranks_and_nonzero_counts_survive_training(teacher, data, targets):
    student = compressed_student(teacher)
    module = student.module
    masks = masks_of(module)
    assert len(masks) == len(MASKED) + 2  # four layer masks + up/down masks of one factorised layer
    ranks = {name: m.rank for name, m in module.named_modules() if isinstance(m, LowRankLinear)}
    assert sorted(ranks.values()) == [4, 4]
    counts, before = nonzero(module), snapshot(module)
    for name, mask in masks.items():  # the setup itself: half of every masked tensor is zero
        assert counts[name] == int(mask.sum()) < mask.numel()

    result = distill(student, data, targets, DistillConfig(**FAST))

    assert len(result.losses) == 5 and all(math.isfinite(x) for x in result.losses)
    after = snapshot(module)
    for name, mask in masks.items():
        assert torch.count_nonzero(after[name][~mask]) == 0, name  # every pruned entry exactly zero
        assert not torch.equal(after[name][mask], before[name][mask]), name  # kept entries trained
    assert nonzero(module) == counts
    assert {name: m.rank for name, m in module.named_modules() if isinstance(m, LowRankLinear)} == ranks
    assert set(after) == set(before)  # no parameter appeared or vanished
    for name in ("visual.transformer.resblocks.1.mlp.c_fc.up", "visual.transformer.resblocks.1.mlp.c_fc.down"):
        assert not torch.equal(after[name], before[name]), name  # both factors train
    assert result.params_before == result.params_after == sum(counts.values())
    assert module.training is False  # handed back in eval mode


def test_locked_layers_do_not_change_bit_for_bit(teacher, data, targets):
    student = compressed_student(teacher)
    module = student.module
    locked = {"visual.transformer.resblocks.1.attn.in_proj.k",  # a fused slice: the fused weight and bias
              "visual.transformer.resblocks.0.mlp.c_proj",      # a Linear: weight and bias
              "text_projection",                                # a bare parameter
              FACTORISED,                                       # a LowRankLinear: both factors and bias
              MASKED[0]}                                        # a masked Linear
    frozen = locked_parameter_names(student, locked)
    assert frozen == {
        "visual.transformer.resblocks.1.attn.in_proj_weight", "visual.transformer.resblocks.1.attn.in_proj_bias",
        "visual.transformer.resblocks.0.mlp.c_proj.weight", "visual.transformer.resblocks.0.mlp.c_proj.bias",
        "text_projection",
        f"{FACTORISED}.up", f"{FACTORISED}.down", f"{FACTORISED}.bias",
        f"{MASKED[0]}.weight", f"{MASKED[0]}.bias",
    }
    module.visual.ln_post.weight.requires_grad_(False)  # the caller's own setting comes back afterwards
    before = snapshot(module)

    distill(student, data, targets, DistillConfig(**FAST), frozen=frozen)

    after = snapshot(module)
    for name in frozen:
        assert torch.equal(after[name], before[name]), name
    changed = {name for name in after if not torch.equal(after[name], before[name])}
    for name in ("visual.transformer.resblocks.0.attn.out_proj.weight", "visual.transformer.resblocks.1.mlp.c_proj.weight",
                 "visual.proj", "transformer.resblocks.0.mlp.c_fc.weight", "visual.ln_post.weight"):
        assert name in changed, name
    assert {name for name, p in module.named_parameters() if not p.requires_grad} == {"visual.ln_post.weight"}


def test_a_locked_fused_slice_freezes_its_bias_too_as_a_locked_linear_does(teacher, data, targets):
    # Locking an nn.Linear freezes weight and bias; locking a q/k/v slice of a fused
    # nn.MultiheadAttention freezes in_proj_weight but leaves in_proj_bias training, so
    # the locked layer's output still changes (and changes differently once split).
    student = perturbed(teacher)
    frozen = locked_parameter_names(student, {"visual.transformer.resblocks.0.attn.in_proj.q"})
    before = snapshot(student.module)
    distill(student, data, targets, DistillConfig(**FAST), frozen=frozen)
    bias = "visual.transformer.resblocks.0.attn.in_proj_bias"
    assert torch.equal(student.module.get_parameter(bias)[:32], before[bias][:32])


def test_freezing_everything_is_refused(teacher, data, targets):
    student = copy.deepcopy(teacher)
    with pytest.raises(RccError, match="nothing to train"):
        distill(student, data, targets, DistillConfig(**FAST),
                frozen={name for name, _ in student.module.named_parameters()})


# -- the loss -----------------------------------------------------------------------------

def test_loss_goes_down_on_a_fixed_batch(teacher, data, targets):
    student = perturbed(teacher, scale=0.05)
    config = DistillConfig(**{**FAST, "steps": 20})
    with torch.no_grad():  # the loss at step 0, computed directly on the whole (only) batch
        pixels = student.preprocess_batch(list(data.images))
        tokens = student.tokenize(list(data.texts))
        start = distillation_loss(student.encode_image(pixels), student.encode_text(tokens),
                                  targets.images, targets.texts, targets.logit_scale, config).item()
    result = distill(student, data, targets, config)
    assert len(result.losses) == 20
    assert result.losses[0] == pytest.approx(start, rel=1e-4)  # the batch order does not matter
    assert start > 0.5  # about 1.15 with noise of std 0.05 on every weight
    assert result.losses[-1] < 0.2 * result.losses[0]  # about 0.03 after 20 steps at lr 1e-3
    assert min(result.losses[-5:]) < min(result.losses[:5])
    with torch.no_grad():
        end = distillation_loss(student.encode_image(pixels), student.encode_text(tokens),
                                targets.images, targets.texts, targets.logit_scale, config).item()
    assert end < 0.2 * start


def test_teacher_targets_are_normalised_embeddings_with_the_teacher_scale(teacher, data, targets):
    assert targets.images.shape == (8, 16) and targets.texts.shape == (8, 16)
    assert torch.allclose(targets.images.norm(dim=-1), torch.ones(8), atol=1e-5)
    assert torch.allclose(targets.texts.norm(dim=-1), torch.ones(8), atol=1e-5)
    assert targets.logit_scale == pytest.approx(float(teacher.module.logit_scale.detach().exp())) == logit_scale_of(teacher)
    # A student equal to its teacher starts at zero loss.
    student = copy.deepcopy(teacher)
    result = distill(student, data, targets, DistillConfig(**{**FAST, "steps": 1}))
    assert result.losses[0] == pytest.approx(0.0, abs=1e-5)


def _kl_only(temperature: float = 1.0) -> DistillConfig:
    return DistillConfig(kl_weight=1.0, cosine_weight=0.0, mse_weight=0.0, temperature=temperature)


def test_kl_term_matches_kl_div_and_a_hand_computed_value():
    eye = torch.eye(2)
    swapped = eye.flip(0)
    # Teacher logits scale·I, student logits scale·(swap): every row and column of the teacher
    # is softmax([1, 0]) = [σ, 1 − σ], the student's [1 − σ, σ]; KL = (2σ − 1)·log(σ/(1 − σ)) = tanh(½).
    loss = distillation_loss(eye, swapped, eye, eye, 1.0, _kl_only())
    assert loss.item() == pytest.approx(math.tanh(0.5), rel=1e-6) == pytest.approx(0.46211716, rel=1e-6)
    # Scale 2 at temperature 2: the same softmaxes, times T² = 4.
    loss = distillation_loss(eye, swapped, eye, eye, 2.0, _kl_only(2.0))
    assert loss.item() == pytest.approx(4 * math.tanh(0.5), rel=1e-6)
    # Student embeddings are normalised first: their length does not matter.
    assert distillation_loss(3 * eye, 0.5 * swapped, eye, eye, 1.0, _kl_only()).item() == pytest.approx(
        math.tanh(0.5), rel=1e-6)


def test_kl_term_equals_torch_kl_div_on_random_embeddings():
    generator = torch.Generator().manual_seed(3)
    img_s, txt_s, img_t, txt_t = (torch.randn(5, 6, generator=generator) for _ in range(4))
    img_t, txt_t = F.normalize(img_t, dim=-1), F.normalize(txt_t, dim=-1)
    scale, t = 7.0, 1.5
    student = scale * F.normalize(img_s, dim=-1) @ F.normalize(txt_s, dim=-1).t() / t
    teacher = scale * img_t @ txt_t.t() / t
    rows = F.kl_div(F.log_softmax(student, 1), F.softmax(teacher, 1), reduction="batchmean")
    cols = F.kl_div(F.log_softmax(student.t(), 1), F.softmax(teacher.t(), 1), reduction="batchmean")
    expected = t * t * (rows + cols) / 2
    # and by the definition, Σ p (log p − log q) averaged over rows
    p, q = F.softmax(teacher, 1), F.softmax(student, 1)
    by_hand = (p * (p.log() - q.log())).sum(1).mean()
    assert rows.item() == pytest.approx(by_hand.item(), rel=1e-5)
    loss = distillation_loss(img_s, txt_s, img_t, txt_t, scale, _kl_only(t))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() > 0
    same = distillation_loss(img_t, txt_t, img_t, txt_t, scale, _kl_only(t))
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def rotate(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate every row by ``angle`` in the plane of the first two coordinates."""
    c, s = math.cos(angle), math.sin(angle)
    out = x.clone()
    out[:, 0], out[:, 1] = c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1]
    return out


def test_cosine_and_mse_terms_for_identical_and_rotated_embeddings():
    img_t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]])
    txt_t = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.8, -0.6, 0.0]])  # unit rows in the rotation plane
    cosine = DistillConfig(kl_weight=0.0, cosine_weight=1.0)
    mse = DistillConfig(kl_weight=0.0, cosine_weight=0.0, mse_weight=1.0)
    assert distillation_loss(img_t, txt_t, img_t, txt_t, 10.0, cosine).item() == pytest.approx(0.0, abs=1e-7)
    assert distillation_loss(img_t, txt_t, img_t, txt_t, 10.0, mse).item() == pytest.approx(0.0, abs=1e-7)
    angle = math.pi / 3  # cos = ½
    img_s, txt_s = rotate(img_t, angle), rotate(txt_t, angle)
    assert distillation_loss(img_s, txt_s, img_t, txt_t, 10.0, cosine).item() == pytest.approx(
        2 * (1 - math.cos(angle)), rel=1e-6) == pytest.approx(1.0)
    # Only the image side rotated: half of it.
    assert distillation_loss(img_s, txt_t, img_t, txt_t, 10.0, cosine).item() == pytest.approx(0.5, rel=1e-6)
    # Unit vectors: ‖a − b‖² = 2(1 − cos), on both sides.
    assert distillation_loss(2 * img_s, txt_s, img_t, txt_t, 10.0, mse).item() == pytest.approx(2.0, rel=1e-6)
    # Weights combine linearly.
    both = DistillConfig(kl_weight=0.0, cosine_weight=0.5, mse_weight=2.0)
    assert distillation_loss(img_s, txt_s, img_t, txt_t, 10.0, both).item() == pytest.approx(0.5 + 4.0, rel=1e-6)


# -- reproducibility, precision, evaluation, cancellation ----------------------------------

def test_a_run_is_reproducible_from_its_seed(teacher, data, targets):
    config = DistillConfig(**{**FAST, "steps": 4, "batch_size": 4})  # two batches' worth of data: order matters
    first, second, other = (compressed_student(teacher) for _ in range(3))
    run_a = distill(first, data, targets, config)
    run_b = distill(second, data, targets, config)
    assert run_a.losses == run_b.losses
    a, b = first.module.state_dict(), second.module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    run_c = distill(other, data, targets, DistillConfig(**{**FAST, "steps": 4, "batch_size": 4, "seed": 1}))
    assert run_c.losses != run_a.losses
    c = other.module.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_bf16_mixed_precision_runs_on_cpu_with_masks_intact(teacher, data, targets):
    student = compressed_student(teacher)
    masks = masks_of(student.module)
    counts = nonzero(student.module)
    result = distill(student, data, targets, DistillConfig(**{**FAST, "steps": 3, "precision": "bf16"}))
    assert len(result.losses) == 3 and all(math.isfinite(x) and x > 0 for x in result.losses)
    params = dict(student.module.named_parameters())
    for name, mask in masks.items():
        assert torch.count_nonzero(params[name].detach()[~mask]) == 0, name
    assert nonzero(student.module) == counts
    assert all(p.dtype == torch.float32 for p in student.module.parameters())  # weights stay fp32


def test_the_best_evaluated_state_is_kept_and_evaluation_runs_in_eval_mode(teacher, data, targets):
    student = perturbed(teacher)
    after_first: dict[str, torch.Tensor] = {}
    modes = []
    metrics = iter([0.9, 0.5, 0.4, 0.3])

    def on_step(report) -> None:
        modes.append(("step", student.module.training))
        if report.step == 0:
            after_first.update(snapshot(student.module))

    def evaluate() -> float:
        modes.append(("eval", student.module.training))
        return next(metrics)

    config = DistillConfig(**{**FAST, "steps": 4, "eval_every": 1})
    result = distill(student, data, targets, config, evaluate=evaluate, on_step=on_step)
    assert result.evals == [(1, 0.9), (2, 0.5), (3, 0.4), (4, 0.3)]
    assert (result.best_step, result.best_metric, result.stopped_early) == (1, 0.9, False)
    now = snapshot(student.module)
    assert all(torch.equal(now[k], after_first[k]) for k in now)
    assert modes == [("step", True), ("eval", False)] * 4


def test_patience_stops_early(teacher, data, targets):
    student = perturbed(teacher)
    metrics = iter([0.9, 0.5, 0.4, 0.3, 0.2])
    config = DistillConfig(**{**FAST, "steps": 5, "eval_every": 1, "patience": 2})
    result = distill(student, data, targets, config, evaluate=lambda: next(metrics))
    assert result.stopped_early and len(result.losses) == 3 and result.best_step == 1


def test_cancel_between_steps_raises_and_restores_training_flags(teacher, data, targets):
    student = compressed_student(teacher)
    frozen = locked_parameter_names(student, {MASKED[0]})
    steps = []
    with pytest.raises(Cancelled):
        distill(student, data, targets, DistillConfig(**FAST), frozen=frozen,
                on_step=lambda report: steps.append(report.step), cancel=lambda: len(steps) >= 2)
    assert steps == [0, 1]
    assert student.module.training is False
    assert all(p.requires_grad for p in student.module.parameters())


# -- validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("fields, words", [
    ({"batch_size": 1}, "batch_size=1"),
    ({"temperature": 0.0}, "temperature=0.0"),
    ({"temperature": float("nan")}, "temperature=nan"),
    ({"kl_weight": 0.0, "cosine_weight": 0.0, "mse_weight": 0.0}, "not all zero"),
    ({"cosine_weight": -1.0}, "cosine_weight=-1.0 is invalid; allowed: a number ≥ 0"),
    ({"kl_weight": float("nan")}, "kl_weight=nan is invalid; allowed: a number ≥ 0"),
    ({"steps": 0}, "steps=0"),
    ({"lr": 0.0}, "lr=0.0"),
    ({"schedule": "step"}, "schedule='step'"),
    ({"precision": "fp8"}, "precision='fp8'"),
    ({"accumulation": 0}, "accumulation=0"),
])
def test_bad_distill_configs_are_refused_in_one_line(fields, words, teacher, data, targets):
    config = DistillConfig(**fields)
    with pytest.raises(RccError) as caught:
        config.validate()
    message = str(caught.value)
    assert words in message and "allowed" in message and "\n" not in message
    student = copy.deepcopy(teacher)
    before = snapshot(student.module)
    with pytest.raises(RccError):  # distill refuses it before touching the student
        distill(student, data, targets, config)
    assert all(torch.equal(p, before[n]) for n, p in snapshot(student.module).items())


@pytest.mark.parametrize("fields, words", [
    ({"steps": 0}, "steps 0"),
    ({"steps": True}, "steps True"),
    ({"batch_size": 1}, "batch_size 1"),
    ({"lr": 0}, "lr 0"),
    ({"lr": "1e-3"}, "lr '1e-3'"),
    ({"temperature": 0}, "temperature 0"),
    ({"kl_weight": 0, "cosine_weight": 0, "mse_weight": 0}, "not all zero"),
    ({"mse_weight": -0.5}, "mse_weight -0.5"),
    ({"schedule": "exponential"}, "schedule 'exponential'"),
    ({"precision": "fp8"}, "precision 'fp8'"),
    ({"teacher": 0}, "teacher 0"),
    ({"eval_every": 0}, "eval_every 0"),
    ({"patience": 0}, "patience 0"),
    ({"seed": 1.5}, "seed 1.5"),
    ({"steps": 20, "warmup_steps": 21}, "warmup_steps 21"),
    ({"epochs": 3}, "field 'epochs' is unknown"),
])
def test_bad_train_ops_are_refused_in_one_line(fields, words):
    with pytest.raises(OpError) as caught:
        op_from_dict({"op": "train", "warmup_steps": 0, **fields})
    message = str(caught.value)
    assert words in message and "'train'" in message and "\n" not in message


def test_a_train_op_round_trips_through_its_dict():
    op = Train(teacher=2, steps=7, lr=1e-3, batch_size=8, warmup_steps=2, precision="bf16", eval_every=3, seed=4)
    data = op_to_dict(op)
    assert data["op"] == "train" and data["steps"] == 7 and data["teacher"] == 2
    assert op_from_dict(data) == op


def test_a_short_train_op_with_default_warmup_is_accepted():
    # DistillConfig accepts steps < warmup_steps (the warm-up is simply cut short), and so does
    # the CLI's help; the op's default warmup_steps=10 must not make every run under 10 steps invalid.
    DistillConfig(steps=5).validate()
    op = op_from_dict({"op": "train", "steps": 5, "batch_size": 8})
    assert op.steps == 5


# -- attention transfer (rcc.training.attention) ------------------------------------------

ATTENTION_ONLY = {"kl_weight": 0.0, "cosine_weight": 0.0, "attention_weight": 1.0}


@pytest.fixture(scope="module")
def attention_targets(teacher, data):
    return teacher_targets(teacher, data, attention=True)


def block_inputs(module, blocks):
    """A context capturing the query each attention block receives (for checks by hand)."""
    inputs, handles = {}, []
    for path in blocks:
        def hook(mod, args, kwargs, path=path):
            inputs[path] = kwargs.get("query", args[0] if args else None)
        handles.append(module.get_submodule(path).register_forward_pre_hook(hook, with_kwargs=True))
    return inputs, handles


def test_maps_equal_multihead_attentions_own_weights_on_rcc_mini(rcc_mini):
    module = rcc_mini.module
    blocks = attention_blocks(module)
    assert blocks == [f"visual.transformer.resblocks.{i}.attn" for i in range(4)]  # the MiniLM text tower: none
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    inputs, handles = block_inputs(module, blocks)
    try:
        with torch.no_grad(), capture_attention(module) as maps:
            features = rcc_mini.encode_image(pixels)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        assert torch.equal(features, rcc_mini.encode_image(pixels))  # the hooks change no output
    assert not module.visual.transformer.resblocks[0].attn._forward_pre_hooks  # removed on exit
    for path in blocks:
        attn, x = module.get_submodule(path), inputs[path]
        assert isinstance(attn, torch.nn.MultiheadAttention) and x.shape == (3, 65, 128)
        with torch.no_grad():
            _, own = attn(x, x, x, need_weights=True, average_attn_weights=True)
        assert maps[path].shape == (3, 65, 65)
        assert torch.allclose(maps[path], own, atol=1e-6), path


def test_maps_follow_multihead_attention_masks_and_sequence_first_layout():
    torch.manual_seed(0)
    holder = torch.nn.ModuleDict({"attn": torch.nn.MultiheadAttention(16, 4, batch_first=False)}).eval()
    attn = holder["attn"]
    x = torch.randn(6, 2, 16)  # (L, N, E)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    with torch.no_grad(), capture_attention(holder, ["attn"]) as maps:
        _, own = attn(x, x, x, attn_mask=causal, key_padding_mask=padding, need_weights=True)
    assert maps["attn"].shape == (2, 6, 6)
    assert torch.allclose(maps["attn"], own, atol=1e-6)
    assert torch.count_nonzero(maps["attn"][1, :, 4:]) == 0 and torch.count_nonzero(maps["attn"][0].triu(1)) == 0


def test_maps_of_a_compressed_split_block_equal_a_manual_computation(teacher):
    student = compressed_student(teacher)  # block 0: split, its q masked at 50 %
    module, path = student.module, "visual.transformer.resblocks.0.attn"
    layer = student.layer_index[f"{path}.in_proj.k"]
    u, s, vh = torch.linalg.svd(get_dense(module, layer), full_matrices=False)
    factorise(module, layer, u[:, :4] * s[:4], vh[:4])  # k: rank 4 with masked factors
    low_rank = layer_module(module, layer)
    set_factor_masks(module, layer, keep_half(low_rank.up.shape, 20), keep_half(low_rank.down.shape, 21))
    attn = module.get_submodule(path)
    assert isinstance(attn, SplitAttention) and hasattr(attn.in_proj["q"], "weight_mask")
    pixels = student.preprocess_batch(list(data_images(4)))
    inputs, handles = block_inputs(module, [path])
    try:
        with capture_attention(module) as maps:
            student.encode_image(pixels)
    finally:
        handles[0].remove()
    assert sorted(maps) == [path, "visual.transformer.resblocks.1.attn"]  # dense and split blocks alike
    x = inputs[path].detach()  # (batch, tokens, width): open_clip's blocks run batch first
    q_linear, k_low = attn.in_proj["q"], attn.in_proj["k"]
    w_q = q_linear.weight * q_linear.weight_mask
    w_k = (k_low.up * k_low.up_mask) @ (k_low.down * k_low.down_mask)
    q = (x @ w_q.t() + q_linear.bias).view(4, 5, 2, 16).transpose(1, 2)
    k = (x @ w_k.t() + k_low.bias).view(4, 5, 2, 16).transpose(1, 2)
    expected = torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1).mean(1)
    assert torch.allclose(maps[path], expected, atol=1e-6)
    assert torch.allclose(maps[path].sum(-1), torch.ones(4, 5), atol=1e-6)
    # The maps are in the autograd graph: a loss on them reaches the student's q and k weights.
    maps[path].pow(2).sum().backward()
    for param in (q_linear.weight, k_low.up, k_low.down):
        assert param.grad is not None and param.grad.abs().sum() > 0


def data_images(count: int):
    digits = load_dataset("digits", "train")
    return [digits.images[i] for i in range(count)]


def test_teacher_attention_targets_are_float16_row_stochastic_maps(teacher, targets, attention_targets):
    assert torch.equal(attention_targets.images, targets.images)  # the same pass, the same numbers
    assert torch.equal(attention_targets.texts, targets.texts) and targets.attention is None
    maps = attention_targets.attention
    assert sorted(maps) == attention_blocks(teacher.module) == [
        "visual.transformer.resblocks.0.attn", "visual.transformer.resblocks.1.attn"]
    for value in maps.values():
        assert value.dtype == torch.float16 and value.shape == (8, 5, 5) and value.device.type == "cpu"
        assert torch.allclose(value.float().sum(-1), torch.ones(8, 5), atol=5e-3)


def _attention_loss(student, data, targets) -> float:
    config = DistillConfig(**ATTENTION_ONLY)
    pixels = student.preprocess_batch(list(data.images))
    with torch.no_grad(), capture_attention(student.module) as maps:
        img = student.encode_image(pixels)
        txt = student.encode_text(student.tokenize(list(data.texts)))
        return distillation_loss(img, txt, targets.images, targets.texts, targets.logit_scale, config,
                                 maps, targets.attention).item()


def test_attention_loss_is_zero_for_an_untouched_student_and_positive_after_compression(
        teacher, data, attention_targets):
    assert _attention_loss(copy.deepcopy(teacher), data, attention_targets) == pytest.approx(0.0, abs=1e-5)
    assert _attention_loss(compressed_student(teacher), data, attention_targets) > 1e-3
    # By hand: the row-wise KL of maps, averaged over rows and images, then over blocks.
    p = torch.tensor([[[0.5, 0.5], [1.0, 0.0]]])
    q = torch.tensor([[[0.25, 0.75], [0.5, 0.5]]])
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    row1 = math.log(1.0 / 0.5)
    assert attention_transfer_loss({"a": q, "b": p}, {"a": p, "b": p}).item() == pytest.approx(
        (row0 + row1) / 2 / 2, rel=1e-6)


def test_training_with_only_the_attention_term_lowers_it(teacher, data, attention_targets):
    student = compressed_student(teacher)
    start = _attention_loss(student, data, attention_targets)
    result = distill(student, data, attention_targets, DistillConfig(**{**FAST, "steps": 20, **ATTENTION_ONLY}))
    assert result.losses[0] == pytest.approx(start, rel=1e-4)
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert _attention_loss(student, data, attention_targets) < 0.5 * start


def test_masks_ranks_and_locked_layers_survive_the_attention_term(teacher, data, attention_targets):
    student = compressed_student(teacher)
    module = student.module
    masks, counts = masks_of(module), nonzero(module)
    ranks = {name: m.rank for name, m in module.named_modules() if isinstance(m, LowRankLinear)}
    frozen = locked_parameter_names(student, {MASKED[1], "visual.transformer.resblocks.1.attn.in_proj.k"})
    assert f"{MASKED[1]}.weight" in frozen and "visual.transformer.resblocks.1.attn.in_proj_weight" in frozen
    before = snapshot(module)

    result = distill(student, data, attention_targets, DistillConfig(**{**FAST, "attention_weight": 1.0}),
                     frozen=frozen)

    assert len(result.losses) == 5 and all(math.isfinite(x) for x in result.losses)
    after = snapshot(module)
    for name, mask in masks.items():
        assert torch.count_nonzero(after[name][~mask]) == 0, name
    assert nonzero(module) == counts and result.params_before == result.params_after
    assert {name: m.rank for name, m in module.named_modules() if isinstance(m, LowRankLinear)} == ranks
    for name in frozen:
        assert torch.equal(after[name], before[name]), name
    assert not torch.equal(after["visual.transformer.resblocks.0.attn.in_proj.k.weight"],
                           before["visual.transformer.resblocks.0.attn.in_proj.k.weight"])
    assert not any(m._forward_pre_hooks for m in module.modules())  # the capture hooks are gone


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), True])
def test_bad_attention_weights_are_refused_in_one_line(value):
    with pytest.raises(RccError) as caught:
        DistillConfig(attention_weight=value).validate()
    message = str(caught.value)
    assert f"attention_weight={value!r}" in message and "allowed" in message and "\n" not in message
    with pytest.raises(OpError) as caught:
        op_from_dict({"op": "train", "warmup_steps": 0, "attention_weight": value})
    message = str(caught.value)
    assert f"attention_weight {value!r}" in message and "allowed" in message and "\n" not in message


def test_the_attention_weight_counts_towards_not_all_zero_and_old_recipes_load():
    DistillConfig(kl_weight=0.0, cosine_weight=0.0, attention_weight=0.5).validate()
    with pytest.raises(RccError, match="attention=0.0 are invalid; allowed: numbers ≥ 0, not all zero"):
        DistillConfig(kl_weight=0.0, cosine_weight=0.0).validate()
    op = op_from_dict({"op": "train", "kl_weight": 0, "cosine_weight": 0, "attention_weight": 2})
    assert op.attention_weight == 2.0 and isinstance(op.attention_weight, float)
    assert op_from_dict(op_to_dict(op)) == op and op_to_dict(op)["attention_weight"] == 2.0
    with pytest.raises(OpError, match="not all zero"):
        op_from_dict({"op": "train", "kl_weight": 0, "cosine_weight": 0, "attention_weight": 0})
    old = op_from_dict({"op": "train", "steps": 5, "batch_size": 8, "warmup_steps": 0})  # a recipe from before
    assert old.attention_weight == 0.0


def test_a_model_without_attention_maps_refuses_the_attention_weight(tmp_path, data, targets):
    from hf_tiny import save_tiny_clip

    from rcc.models.hf_clip import load_hf_clip

    directory = save_tiny_clip(tmp_path / "clip")
    model = load_hf_clip(f"hf:{directory}", str(directory))
    assert attention_blocks(model.module) == [] and require_attention_blocks(model.module, 0.0) == []
    for call in (lambda: distill(model, data, targets, DistillConfig(**{**FAST, "attention_weight": 0.5})),
                 lambda: teacher_targets(model, data, attention=True)):
        with pytest.raises(RccError) as caught:
            call()
        message = str(caught.value)
        assert "attention_weight=" in message and "allowed: " in message and "\n" not in message


def test_attention_weight_without_teacher_maps_is_refused(teacher, data, targets):
    with pytest.raises(RccError) as caught:
        distill(copy.deepcopy(teacher), data, targets, DistillConfig(**{**FAST, "attention_weight": 1.0}))
    assert "teacher's attention maps" in str(caught.value) and "\n" not in str(caught.value)


def test_teacher_maps_over_the_size_limit_are_refused_before_they_are_stored(teacher, data, monkeypatch):
    import rcc.training.distill as distill_module

    monkeypatch.setattr(distill_module, "ATTENTION_TARGETS_LIMIT", 8 * 2 * 5 * 5 * 2 - 1)  # one byte short
    with pytest.raises(RccError) as caught:
        teacher_targets(teacher, data, attention=True)
    message = str(caught.value)
    assert "8 images × 2 blocks × 5×5 tokens" in message and "allowed" in message and "\n" not in message
