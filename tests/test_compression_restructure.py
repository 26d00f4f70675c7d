"""Densifying compressed modules and restructuring one compressed structure into another."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from hf_tiny import random_images
from rcc.compression.calibration import CalibrationData
from rcc.compression.cascade import CascadeConfig, run_cascade
from rcc.compression.layers import LowRankLinear, SplitAttention, SplitQKV, masked_parameter
from rcc.compression.plan import CompressionPlan, Rule
from rcc.compression.restructure import densify, effective_weight, merge_split, restructure
from rcc.compression.structure import structure_of
from rcc.models.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

CALIBRATION = CalibrationData(images=random_images(8, seed=1),
                              texts=("a photo of a cat", "two dogs on the grass", "a red car", "a small bird"))
TEXTS = ["a photo of a cat", "three red birds", "a car"]
ACCEPT_ALL = CascadeConfig(stages=("dare", "nullu"), threshold=0.0)

# A: text attention split (masked q/k/v/out), text mlp_in factorised rank 4 with masked factors,
# vision attention split for a rank-4 q, vision mlp_out rank 4, visual.proj masked.
PLAN_A = CompressionPlan(rules=(
    Rule(tower="text", settings={"sparsity": 0.5}),
    Rule(tower="text", kind="mlp_in", settings={"rank": 4}),
    Rule(tower="vision", kind="attn_q", settings={"rank": 4}),
    Rule(tower="vision", kind="mlp_out", settings={"rank": 4}),
    Rule(name="visual.proj", settings={"sparsity": 0.3}),
))
# B: no split; vision mlp_in rank 6, vision mlp_out rank 4 (as in A), other text masks.
PLAN_B = CompressionPlan(rules=(
    Rule(tower="vision", kind="mlp_in", settings={"rank": 6}),
    Rule(tower="vision", kind="mlp_out", settings={"rank": 4}),
    Rule(tower="text", kind="mlp_out", settings={"sparsity": 0.3}),
    Rule(name="text_projection", settings={"sparsity": 0.5}),
))
# C: A's splits kept, different masks and ranks inside them (text q factorised rank 6), no visual.proj mask.
PLAN_C = CompressionPlan(rules=(
    Rule(tower="text", settings={"sparsity": 0.3}),
    Rule(tower="text", kind="attn_q", settings={"rank": 6}),
    Rule(tower="text", kind="mlp_in", settings={"rank": 4}),
    Rule(tower="vision", kind="attn_q", settings={"rank": 4}),
    Rule(tower="vision", kind="mlp_out", settings={"rank": 4}),
))


@pytest.fixture(scope="module")
def states(config_path):
    spec = f"open_clip:{config_path}"

    def build(plan):
        torch.manual_seed(0)
        model = load_model(spec, device="cpu")
        if plan is not None:
            run_cascade(model, plan, lambda m: 1.0, CALIBRATION, config=ACCEPT_ALL)
        return model

    return {"dense": build(None), "A": build(PLAN_A), "B": build(PLAN_B), "C": build(PLAN_C)}


def _outputs(model):
    pixels = model.preprocess_batch(random_images(3, seed=5))
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(model.tokenize(TEXTS))


def _restructure_and_load(source, target):
    """``source`` copied and restructured into ``target``'s structure, then loaded; returns (model, stale)."""
    model = copy.deepcopy(source)
    stale = restructure(model.module, structure_of(source.module), structure_of(target.module))
    wanted = target.module.state_dict()
    now = model.module.state_dict()
    assert set(now) == set(wanted)
    assert stale <= set(wanted)
    for key in set(wanted) - stale:  # a key left valid keeps its shape and dtype: it loads in place
        assert (now[key].shape, now[key].dtype) == (wanted[key].shape, wanted[key].dtype), key
    load = {k: v for k, v in wanted.items() if k in stale or not torch.equal(now[k], v)}
    model.module.load_state_dict(load, strict=False)
    return model, stale


def _assert_same(model, target):
    assert structure_of(model.module) == structure_of(target.module)
    got, wanted = model.module.state_dict(), target.module.state_dict()
    assert list(got) == list(wanted)  # same keys, same order as a fresh load would give
    for key, value in wanted.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    for a, b in zip(_outputs(model), _outputs(target)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("source, target", [("A", "B"), ("B", "A"), ("dense", "A"), ("A", "dense"),
                                            ("A", "C"), ("C", "A"), ("B", "dense"), ("dense", "B")])
def test_restructure_then_loading_stale_keys_gives_the_target_bit_for_bit(states, source, target):
    model, _ = _restructure_and_load(states[source], states[target])
    _assert_same(model, states[target])


def test_paths_with_the_same_structure_keep_their_modules(states):
    model = copy.deepcopy(states["A"])
    kept = {path: model.module.get_submodule(path) for path in (
        "visual.transformer.resblocks.0.mlp.c_proj",  # rank 4 in A and B
        "transformer.resblocks.1.mlp.c_proj",  # masked in A and B
        "visual.transformer.resblocks.1.mlp.c_fc",  # dense in both, rank 6 in B: rebuilt (control)
        "visual.conv1", "transformer.resblocks.0.ln_1",
    )}
    mask = kept["transformer.resblocks.1.mlp.c_proj"].weight_mask
    stale = restructure(model.module, structure_of(model.module), structure_of(states["B"].module))
    for path in ("visual.transformer.resblocks.0.mlp.c_proj", "transformer.resblocks.1.mlp.c_proj",
                 "visual.conv1", "transformer.resblocks.0.ln_1"):
        assert model.module.get_submodule(path) is kept[path], path
    assert model.module.get_submodule("visual.transformer.resblocks.1.mlp.c_fc") is not kept[
        "visual.transformer.resblocks.1.mlp.c_fc"]
    assert model.module.transformer.resblocks[1].mlp.c_proj.weight_mask is mask
    assert isinstance(model.module.get_submodule("transformer.resblocks.0.attn"), nn.MultiheadAttention)
    # Stale: rebuilt modules and changed masks, nothing else.
    assert {"visual.transformer.resblocks.1.mlp.c_fc.up", "visual.transformer.resblocks.1.mlp.c_fc.down",
            "transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.attn.out_proj.weight",
            "visual.transformer.resblocks.0.attn.in_proj_weight", "visual.proj",
            "transformer.resblocks.0.mlp.c_fc.weight"} <= stale
    assert not any(key.startswith(("visual.transformer.resblocks.0.mlp.c_proj.", "visual.conv1.",
                                   "transformer.resblocks.1.mlp.c_proj.")) for key in stale)
    assert "text_projection" not in stale and "text_projection_mask" not in stale  # masked in both
    assert not any("visual.proj_mask" in key for key in stale)  # removed, so not in the target


def test_a_split_kept_keeps_its_module_while_a_layer_inside_is_refactorised(states):
    model = copy.deepcopy(states["A"])
    split = model.module.get_submodule("transformer.resblocks.0.attn")
    vision_split = model.module.get_submodule("visual.transformer.resblocks.0.attn")
    stale = restructure(model.module, structure_of(model.module), structure_of(states["C"].module))
    assert model.module.get_submodule("transformer.resblocks.0.attn") is split
    assert model.module.get_submodule("visual.transformer.resblocks.0.attn") is vision_split
    assert isinstance(split.in_proj["q"], LowRankLinear) and split.in_proj["q"].rank == 6
    assert {"transformer.resblocks.0.attn.in_proj.q.up", "transformer.resblocks.0.attn.in_proj.q.down",
            "visual.proj"} <= stale
    # Same masks elsewhere in the split (values differ, the caller loads those): not stale.
    assert "transformer.resblocks.0.attn.in_proj.k.weight_mask" not in stale
    assert not any(key.startswith("visual.transformer.") for key in stale)


def test_restructure_to_the_same_structure_changes_nothing(states):
    model = copy.deepcopy(states["A"])
    before = dict(model.module.named_modules())
    structure = structure_of(model.module)
    assert restructure(model.module, structure, structure) == set()
    assert dict(model.module.named_modules()) == before


def test_densify_gives_the_original_architecture_with_the_effective_weights(states):
    compressed, dense = states["A"], states["dense"]
    model = copy.deepcopy(compressed)
    assert densify(model.module) is model.module
    got, original = model.module.state_dict(), dense.module.state_dict()
    assert list(got) == list(original)
    assert all(got[k].shape == v.shape and got[k].dtype == v.dtype for k, v in original.items())
    assert structure_of(model.module) == {"split": [], "factorised": {}, "masks": {}}
    attention = model.module.get_submodule("transformer.resblocks.0.attn")
    assert type(attention) is nn.MultiheadAttention and type(attention.out_proj) is NonDynamicallyQuantizableLinear
    assert attention.batch_first == dense.module.get_submodule("transformer.resblocks.0.attn").batch_first
    assert model.module.attn_mask is not None  # OpenCLIP's causal mask is not a compression mask
    # W = up @ down for a factorised layer; pruned entries stay zero.
    q = compressed.module.get_submodule("visual.transformer.resblocks.0.attn").in_proj["q"]
    width = q.out_features
    assert torch.equal(model.module.visual.transformer.resblocks[0].attn.in_proj_weight[:width], q.up @ q.down)
    assert (model.module.text_projection[~compressed.module.text_projection_mask] == 0).all()
    for a, b in zip(_outputs(model), _outputs(compressed)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_densify_leaves_a_dense_module_as_it_is(states):
    model = copy.deepcopy(states["dense"])
    densify(model.module)
    _assert_same(model, states["dense"])


def test_merge_split_qkv_gives_one_linear_with_the_stacked_effective_weights():
    torch.manual_seed(0)
    holder = nn.Sequential(nn.Linear(8, 24))
    holder[0] = SplitQKV(holder[0])
    split = holder[0]
    split.q = LowRankLinear(torch.randn(8, 3), torch.randn(3, 8), split.q.bias)
    split.k.register_buffer("weight_mask", torch.rand(8, 8) > 0.5)
    with torch.no_grad():
        split.k.weight.mul_(split.k.weight_mask)
    x = torch.randn(5, 8)
    with torch.no_grad():
        expected = holder(x)
        fused = merge_split(holder, "0")
        assert type(fused) is nn.Linear and holder[0] is fused and list(fused.state_dict()) == ["weight", "bias"]
        assert torch.equal(fused.weight[:8], split.q.up @ split.q.down)
        assert torch.equal(fused.weight[8:16], effective_weight(split.k))
        torch.testing.assert_close(holder(x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="not a split attention"):
        merge_split(holder, "0")


def test_merge_split_attention_keeps_the_mha_settings():
    torch.manual_seed(0)
    holder = nn.Module()
    holder.attn = nn.MultiheadAttention(16, 4, batch_first=True, bias=False)
    original = copy.deepcopy(holder.attn)
    holder.attn = SplitAttention(holder.attn)
    fused = merge_split(holder, "attn")
    assert (fused.embed_dim, fused.num_heads, fused.batch_first, fused.in_proj_bias, fused.out_proj.bias) == (
        16, 4, True, None, None)
    assert set(fused.state_dict()) == set(original.state_dict())
    assert all(torch.equal(fused.state_dict()[k], v) for k, v in original.state_dict().items())
    assert not any(masked_parameter(m, n) for m in fused.modules() for n, _ in m.named_buffers(recurse=False))
