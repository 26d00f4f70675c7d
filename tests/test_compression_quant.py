"""The quant stage: int8 weights with per-channel scales, GPTQ, SmoothQuant, kernels, structure and back-off."""

import copy

import pytest
import torch
from torch import nn

from hf_tiny import random_images
from rcc.compression import int8
from rcc.compression.calibration import CalibrationData
from rcc.compression.cascade import CascadeConfig, run_cascade, run_stage
from rcc.compression.int8_kernels import KernelCache, int8_linear
from rcc.compression.layers import get_mask, is_quantized_layer, layer_module, stored_parameters
from rcc.compression.plan import CompressionPlan, Rule, uniform_plan
from rcc.compression.plan_rules import PlanError
from rcc.compression.quantized_layers import QuantizedEmbedding, QuantizedLinear, QuantizedLowRankLinear
from rcc.compression.restructure import densify, restructure
from rcc.compression.stage_context import StageOptions
from rcc.compression.stored_size import size_metrics
from rcc.compression.structure import apply_structure, structure_of
from rcc.errors import RccError
from rcc.models.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

CALIBRATION = CalibrationData(images=random_images(8, seed=1),
                              texts=("a photo of a cat", "two dogs on the grass", "a red car", "a small bird"))
# Every Linear int8 and half pruned; the vision MLP inputs factorised first: dense, masked and
# low-rank int8 forms all appear. Bare projections (x @ W) cannot be int8: left float.
PLAN = CompressionPlan(rules=(Rule(settings={"sparsity": 0.5, "bits": 8}),
                              Rule(tower="vision", kind="mlp_in", settings={"rank": 8})),
                       overrides={"visual.proj": {"bits": None}, "text_projection": {"bits": None}})
EVERYTHING = CascadeConfig(threshold=0.0)


@pytest.fixture(scope="module")
def dense(config_path):
    torch.manual_seed(0)
    return load_model(f"open_clip:{config_path}", device="cpu")


@pytest.fixture(scope="module")
def quantised(dense):
    model = copy.deepcopy(dense)
    run_cascade(model, PLAN, lambda m: 1.0, CALIBRATION, config=EVERYTHING)
    return model


def _inputs(model):
    return model.preprocess_batch(random_images(3, seed=5)), model.tokenize(["a photo of a cat", "three red cars"])


def _outputs(model):
    pixels, tokens = _inputs(model)
    with torch.inference_mode():
        return model.encode_image(pixels), model.encode_text(tokens)


# -- the arithmetic ---------------------------------------------------------------------------

def test_round_to_nearest_uses_one_symmetric_scale_per_row_and_keeps_zeros_and_masks():
    torch.manual_seed(0)
    weight = torch.randn(6, 10)
    weight[2] = 0.0
    weight[0, 3] = 0.0
    keep = torch.rand(6, 10) > 0.3
    q = int8.quantize_rtn(weight, keep)
    assert q.values.dtype == torch.int8 and q.scale.shape == (6,)
    assert int(q.values.abs().max()) <= 127
    torch.testing.assert_close(q.scale[[0, 1, 3]], weight.abs().amax(dim=1)[[0, 1, 3]] / 127)
    assert q.scale[2] == 1.0 and not q.values[2].any()  # an all-zero row
    assert q.values[0, 3] == 0 and not q.values[~keep].any()
    unmasked = int8.quantize_rtn(weight)
    # Each row's largest entry lands on ±127; every entry is within half a step.
    assert (unmasked.values.abs().amax(dim=1)[[0, 1, 3, 4, 5]] == 127).all()
    assert ((unmasked.dequantize() - weight).abs() <= unmasked.scale[:, None] / 2 + 1e-7).all()


def _correlated_inputs(n: int, count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(n, n, generator=generator) / n ** 0.5
    return torch.randn(count, n, generator=generator) @ mixing + 0.3 * torch.randn(count, n, generator=generator)


def test_gptq_lowers_the_calibration_output_error_of_rounding():
    torch.manual_seed(1)
    weight = torch.randn(48, 64)
    x = _correlated_inputs(64, 512)
    gram = x.t() @ x
    rtn = int8.quantize_rtn(weight)
    gptq = int8.quantize_gptq(weight, gram)
    assert torch.equal(gptq.scale, rtn.scale)  # same grid: only the rounding decisions differ
    rtn_error = int8.output_error(weight, rtn.dequantize(), gram)
    gptq_error = int8.output_error(weight, gptq.dequantize(), gram)
    assert gptq_error < 0.7 * rtn_error, (gptq_error, rtn_error)


def test_gptq_keeps_pruned_entries_exactly_zero_and_zeroes_inputs_no_sample_reached():
    torch.manual_seed(2)
    weight = torch.randn(16, 24)
    keep = torch.rand(16, 24) > 0.5
    weight = weight * keep
    x = _correlated_inputs(24, 200, seed=3)
    x[:, 5] = 0.0  # a dead input channel: H_55 = 0
    q = int8.quantize_gptq(weight, x.t() @ x, keep)
    assert not q.values[~keep].any()
    assert not q.values[:, 5].any()


def test_smoothing_factors_follow_the_smoothquant_formula():
    absmax = torch.tensor([4.0, 1.0, 0.0, 9.0])
    weight = torch.tensor([[1.0, -2.0, 3.0, 0.0], [0.5, 1.0, -1.0, 0.0]])
    sigma = int8.smoothing_factors(absmax, weight, alpha=0.5)
    expected = torch.tensor([4.0 ** 0.5 / 1.0 ** 0.5, 1.0 / 2.0 ** 0.5, 1.0, 1.0])  # zero input or column: 1
    torch.testing.assert_close(sigma, expected)


# -- the kernels --------------------------------------------------------------------------------

def test_the_cpu_int8_kernel_matches_its_simulation_and_repacks_after_in_place_changes():
    torch.manual_seed(3)
    q = int8.quantize_rtn(torch.randn(20, 16))
    bias = torch.randn(20)
    x = torch.randn(2, 5, 16)
    cache = KernelCache()
    with torch.inference_mode():
        fast = int8_linear(x, q.values, q.scale, bias, cache, "w", differentiable=False)
    simulated = int8_linear(x, q.values, q.scale, bias, KernelCache(), "w", differentiable=True)
    exact = x @ q.dequantize().t() + bias
    assert fast.shape == (2, 5, 20)
    # Both quantise x per tensor: they agree far better than either agrees with float activations.
    assert (fast - simulated).abs().max() < 0.02 * exact.abs().max()
    assert (fast - exact).abs().max() < 0.05 * exact.abs().max()
    values = q.values.clone()
    with torch.inference_mode():
        int8_linear(x, values, q.scale, bias, cache, "v", differentiable=False)
        values.neg_()  # an in-place write (a checkout loading new values) must not reuse stale packed weights
        flipped = int8_linear(x, values, q.scale, bias, cache, "v", differentiable=False)
    torch.testing.assert_close(flipped - bias, -(fast - bias), atol=0.02 * exact.abs().max().item(), rtol=0)


def test_gradients_flow_through_an_int8_layer_but_never_change_it():
    torch.manual_seed(4)
    q = int8.quantize_rtn(torch.randn(8, 6))
    layer = QuantizedLinear(q.values, q.scale, torch.zeros(8))
    x = torch.randn(3, 6, requires_grad=True)
    layer(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # straight-through: layers before it can learn
    assert not any(p.requires_grad for p in layer.buffers())


# -- the stage ----------------------------------------------------------------------------------

def test_the_cascade_stores_int8_values_with_masks_kept_and_factors_both_int8(dense, quantised):
    index = quantised.layer_index
    masked = layer_module(quantised.module, index["transformer.resblocks.0.mlp.c_fc"])
    low_rank = layer_module(quantised.module, index["visual.transformer.resblocks.0.mlp.c_fc"])
    split = layer_module(quantised.module, index["visual.transformer.resblocks.1.attn.in_proj.k"])
    assert isinstance(masked, QuantizedLinear) and isinstance(split, QuantizedLinear)
    assert isinstance(low_rank, QuantizedLowRankLinear) and low_rank.rank == 8
    assert low_rank.up.dtype == low_rank.down.dtype == masked.weight.dtype == torch.int8
    mask = get_mask(quantised.module, index["transformer.resblocks.0.mlp.c_fc"])
    assert mask is not None and 0.45 < 1 - mask.float().mean() < 0.55
    assert not masked.weight[~mask].any()  # a pruned entry is exactly zero in int8
    assert not low_rank.up[~low_rank.up_mask].any() and not low_rank.down[~low_rank.down_mask].any()
    assert not is_quantized_layer(quantised.module, index["visual.proj"])  # bare x @ W: stays float
    assert isinstance(quantised.module.token_embedding, QuantizedEmbedding)  # the text tower has int8 layers
    image_d, text_d = _outputs(dense)
    image_q, text_q = _outputs(quantised)
    assert torch.nn.functional.cosine_similarity(image_d, image_q).min() > 0.8
    assert torch.nn.functional.cosine_similarity(text_d, text_q).min() > 0.8


def test_size_metrics_count_one_byte_per_kept_int8_value_plus_scales(dense, quantised):
    before, after = size_metrics(dense), size_metrics(quantised)
    masked = quantised.layer_index["transformer.resblocks.0.attn.in_proj.q"]
    layer = layer_module(quantised.module, masked)
    kept = int(layer.weight_mask.sum())
    assert stored_parameters(quantised.module, masked) == kept
    # Every byte accounted for: the same total as summing what each tensor stores.
    expected = 0
    for name, tensor in quantised.module.state_dict().items():
        if name.endswith("_mask") and tensor.dtype == torch.bool:
            expected += (tensor.numel() + 7) // 8
            continue
        holder, _, leaf = name.rpartition(".")
        mask = quantised.module.get_submodule(holder)._buffers.get(
            "weight_mask" if leaf == "weight" else f"{leaf}_mask")
        count = tensor.numel() if mask is None else int(mask.sum())
        if "attn_mask" in name:  # OpenCLIP's causal mask buffer is not a weight
            continue
        expected += count * tensor.element_size()
    assert after["size/bytes"] == expected
    assert after["size/bytes"] < before["size/bytes"] / 3  # int8 everywhere but the bare projections


def test_the_efficiency_report_counts_int8_values_and_scales(dense, quantised):
    from rcc.eval.efficiency import count_parameters

    float_count, int8_count = count_parameters(dense.module), count_parameters(quantised.module)
    buffers = dict(quantised.module.named_buffers())
    int8_values = sum(b.numel() for b in buffers.values() if b.dtype == torch.int8)
    scales = sum(b.numel() for name, b in buffers.items() if name.endswith("scale"))
    floats = sum(p.numel() for p in quantised.module.parameters())
    assert int8_values > floats  # most weights are int8 buffers now, which parameters() misses
    assert int8_count.total == floats + int8_values + scales == size_metrics(quantised)["size/total"]
    # Bytes in memory: int8 values are 1 byte (no CSR for int8: 5 bytes a non-zero would not pay).
    assert int8_count.dense_bytes < float_count.dense_bytes / 3


def test_float_stages_leave_int8_layers_alone(quantised):
    model = copy.deepcopy(quantised)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    plan = CompressionPlan(rules=(Rule(settings={"sparsity": 0.8, "bits": 8}),),
                           overrides={"visual.proj": {"bits": None}, "text_projection": {"bits": None}})
    run = run_stage(model, plan, "dare", 1.0, CALIBRATION)
    after = model.module.state_dict()
    # Only the bare projections (float) were pruned further.
    assert run.changed == 2
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("visual.proj", "text_projection")) for k in changed), changed


def test_back_off_keeps_the_layers_rounding_disturbs_most_in_float(dense):
    model = copy.deepcopy(dense)
    plan = uniform_plan(bits=8, towers=["text"], kinds=["mlp_in", "mlp_out"], layers=model.layers())
    planned = [layer.name for layer in model.layers() if layer.tower == "text" and layer.kind.startswith("mlp")]

    def evaluate(candidate) -> float:  # 1 while at most half the planned layers are int8
        count = sum(is_quantized_layer(candidate.module, candidate.layer_index[name]) for name in planned)
        return 1.0 if count <= len(planned) // 2 else 0.0

    options = StageOptions(quant_embeddings=False)
    result = run_cascade(model, plan, evaluate, CALIBRATION,
                         config=CascadeConfig(stages=("quant",), threshold=0.9, options=options))
    accepted = [a for a in result.attempts if a.accepted]
    assert [a.fraction for a in result.attempts] == [1.0, 0.5] and accepted[-1].changed == len(planned) // 2
    quantised = {name for name in planned if is_quantized_layer(model.module, model.layer_index[name])}
    assert len(quantised) == len(planned) // 2
    assert isinstance(model.module.token_embedding, nn.Embedding)  # quant_embeddings off: the table stays float


def test_a_failed_quant_stage_puts_layers_and_embedding_tables_back(dense):
    model = copy.deepcopy(dense)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    plan = uniform_plan(bits=8, towers=["text"], kinds=["mlp_in"], layers=model.layers())
    calls = []

    def failing(stage, i, total, name):
        calls.append(name)
        if len(calls) == 2:
            raise RccError("stop here")

    with pytest.raises(RccError, match="stop here"):
        run_stage(model, plan, "quant", 1.0, CALIBRATION, progress=failing)
    assert isinstance(model.module.token_embedding, nn.Embedding)
    after = model.module.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


def test_bits_are_refused_on_bare_parameters_and_values_other_than_8(dense):
    with pytest.raises(PlanError, match="bits 4 is not supported; allowed: 8, or null"):
        Rule(settings={"bits": 4})
    plan = CompressionPlan(rules=(Rule(settings={"bits": 8}),))
    from rcc.compression.plan import resolve_plan

    with pytest.raises(PlanError, match=r"layer 'visual.proj': bits 8 cannot apply to a bare parameter"):
        resolve_plan(plan, dense.layers())
    assert uniform_plan(bits=8, layers=dense.layers()).overrides["visual.proj"] == {"bits": None}


def test_quant_options_out_of_range_are_refused():
    with pytest.raises(RccError, match="quant method 'awq' is unknown; allowed: rtn, gptq"):
        CascadeConfig(options=StageOptions(quant_method="awq")).validate()
    with pytest.raises(RccError, match="smooth_alpha 1.5 is out of range"):
        CascadeConfig(options=StageOptions(smooth_alpha=1.5)).validate()


def test_smoothquant_layers_fold_their_input_scale_into_the_effective_weight(dense):
    model = copy.deepcopy(dense)
    plan = uniform_plan(bits=8, towers=["text"], kinds=["mlp_in"], layers=model.layers())
    options = StageOptions(smooth_alpha=0.5, quant_method="rtn", quant_embeddings=False)
    run_stage(model, plan, "quant", 1.0, CALIBRATION, options=options)
    layer = model.module.transformer.resblocks[0].mlp.c_fc
    assert isinstance(layer, QuantizedLinear) and layer.smoothed and layer.input_scale.shape == (24,)
    original = dense.module.transformer.resblocks[0].mlp.c_fc.weight
    # diag(s) Q diag(1/σ) ≈ W: the smoothing moves scale between x and W, not the product.
    error = (layer.dense_weight() - original).abs().max() / original.abs().max()
    assert error < 0.05


# -- structure: save, load, restructure ------------------------------------------------------------

def test_structure_lists_int8_layers_and_rebuilds_them_on_a_fresh_model(dense, quantised):
    structure = structure_of(quantised.module)
    assert structure["quantized"]["transformer.resblocks.0.mlp.c_fc"] == {"bits": 8, "smoothed": False}
    assert structure["quantized"]["token_embedding"] == {"bits": 8, "smoothed": False}
    assert structure["factorised"]["visual.transformer.resblocks.0.mlp.c_fc"] == 8
    assert "quantized" not in structure_of(dense.module)  # float structures read as they always did
    fresh = copy.deepcopy(dense)
    apply_structure(fresh.module, structure)
    fresh.module.load_state_dict(quantised.module.state_dict(), strict=True)
    for got, want in zip(_outputs(fresh), _outputs(quantised)):
        assert torch.equal(got, want)


def test_restructure_goes_between_float_and_int8_forms_bit_identically(dense, quantised):
    float_node = copy.deepcopy(quantised)
    densify(float_node.module)  # a structure with no int8 layer, no split, no factor
    model = copy.deepcopy(float_node)
    restructure(model.module, structure_of(model.module), structure_of(quantised.module))
    model.module.load_state_dict(quantised.module.state_dict(), strict=True)
    for got, want in zip(_outputs(model), _outputs(quantised)):
        assert torch.equal(got, want)
    restructure(model.module, structure_of(model.module), structure_of(float_node.module))
    model.module.load_state_dict(float_node.module.state_dict(), strict=True)
    assert structure_of(model.module) == structure_of(float_node.module)
    for got, want in zip(_outputs(model), _outputs(float_node)):
        assert torch.equal(got, want)


def test_narrowed_int8_layers_rebuild_restructure_and_export_their_dense_size(dense):
    from rcc.exports.checkpoints import dense_bytes

    narrowed = copy.deepcopy(dense)  # MLP hidden units halved (structured pruning), then every MLP Linear int8
    plan = CompressionPlan(rules=(Rule(kind="mlp_in", settings={"pattern": "channel", "sparsity": 0.5, "bits": 8}),
                                  Rule(kind="mlp_out", settings={"bits": 8})))
    run_cascade(narrowed, plan, lambda m: 1.0, CALIBRATION, config=EVERYTHING)
    structure = structure_of(narrowed.module)
    both = sorted(set(structure["resized"]) & set(structure["quantized"]))
    assert "transformer.resblocks.0.mlp.c_fc" in both and "transformer.resblocks.0.mlp.c_proj" in both
    fresh = copy.deepcopy(dense)
    apply_structure(fresh.module, structure)
    fresh.module.load_state_dict(narrowed.module.state_dict(), strict=True)
    assert structure_of(fresh.module) == structure
    for got, want in zip(_outputs(fresh), _outputs(narrowed)):
        assert torch.equal(got, want)
    # Checkout: back to the dense node (shapes grow back, float again), then forward again.
    restructure(fresh.module, structure, structure_of(dense.module))
    fresh.module.load_state_dict(dense.module.state_dict(), strict=True)
    for got, want in zip(_outputs(fresh), _outputs(dense)):
        assert torch.equal(got, want)
    restructure(fresh.module, structure_of(dense.module), structure)
    fresh.module.load_state_dict(narrowed.module.state_dict(), strict=True)
    for got, want in zip(_outputs(fresh), _outputs(narrowed)):
        assert torch.equal(got, want)
    assert dense_bytes(narrowed.module) == dense_bytes(dense.module)  # the original architecture's float bytes


def test_densify_gives_the_float_weights_the_int8_layers_apply(quantised):
    model = copy.deepcopy(quantised)
    densify(model.module)
    layer = quantised.module.transformer.resblocks[1].mlp.c_proj
    assert isinstance(model.module.transformer.resblocks[1].mlp.c_proj, nn.Linear)
    assert torch.equal(model.module.transformer.resblocks[1].mlp.c_proj.weight, layer.dense_weight())
    assert torch.equal(model.module.token_embedding.weight, quantised.module.token_embedding.dense_weight())


def test_a_sensitivity_scan_leaves_int8_layers_out_and_the_model_as_it_was(quantised):
    import numpy as np

    from rcc.analysis.errors import AnalysisError
    from rcc.analysis.probe import outcome_probe
    from rcc.analysis.sensitivity import ScanSetting, scan_sensitivity, select_layers
    from rcc.data.images import ArrayImages
    from rcc.data.types import ClassificationDataset

    model = copy.deepcopy(quantised)
    pixels = np.random.default_rng(0).integers(0, 256, size=(8, 16, 16, 3), dtype=np.uint8)
    dataset = ClassificationDataset("synthetic", "test", ArrayImages(pixels), tuple(i % 2 for i in range(8)),
                                    ("cat", "dog"))
    probe = outcome_probe(dataset, templates=("a photo of a {c}.",))
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    result = scan_sensitivity(model, ScanSetting(sparsity=0.6), probe, CALIBRATION,
                              select_layers(model, kinds=["projection", "mlp_in"]))
    assert {unit.name for unit in result.units} == {"visual.proj", "text_projection"}  # the float ones
    after = model.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(AnalysisError, match="every layer to scan holds int8 values"):
        scan_sensitivity(model, ScanSetting(sparsity=0.6), probe, CALIBRATION, select_layers(model, kinds=["mlp_in"]))
