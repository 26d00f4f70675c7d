"""Layer surgery: split attention, low-rank layers, masks, stored counts and snapshots."""


import pytest
import torch
from torch import nn

from hf_tiny import random_images, save_tiny_blip
from rcc.compression.layers import (
    LayerSnapshot, LowRankLinear, SplitAttention, SplitQKV, dense_weight, factorise, get_mask, layer_form,
    layer_module, reapply_masks, set_factor_masks, set_mask, stored_parameters, unfuse,
)
from rcc.compression.nullu import svd_factors
from rcc.models.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["a photo of a cat", "two dogs on grass", "a red car"]


@pytest.fixture
def tiny(config_path):
    torch.manual_seed(0)
    return load_model(f"open_clip:{config_path}", device="cpu")


def _encode(model, pixels, tokens):
    with torch.no_grad():
        return model.encode_image(pixels).clone(), model.encode_text(tokens).clone()


def _inputs(model):
    return model.preprocess_batch(random_images(3)), model.tokenize(TEXTS)


# -- SplitAttention ------------------------------------------------------------------------

def _masks(batch: int, length: int, source: int):
    causal = torch.full((length, source), float("-inf")).triu(1)
    blocked = torch.rand(length, source, generator=torch.Generator().manual_seed(3)) > 0.6
    blocked[:, 0] = False  # every query sees at least one key (a fully blocked row is NaN in both)
    padding = torch.zeros(batch, source, dtype=torch.bool)
    padding[0, -2:] = True
    padding[2, -1] = True
    per_head = torch.randn(batch * 4, length, source, generator=torch.Generator().manual_seed(4))
    return {
        "none": {},
        "float causal": {"attn_mask": causal},
        "bool": {"attn_mask": blocked},
        "key padding": {"key_padding_mask": padding},
        "causal + padding": {"attn_mask": causal, "key_padding_mask": padding.float().masked_fill(padding, -1e9)},
        "bool + padding": {"attn_mask": blocked, "key_padding_mask": padding},
        "3-d float (batch·heads)": {"attn_mask": per_head},
    }


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("case", list(_masks(3, 5, 5)))
def test_split_attention_matches_fused_multihead_attention(batch_first, case):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    with torch.no_grad():  # non-zero biases so a q/k/v bias mix-up would show
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    split = SplitAttention(mha).eval()
    batch, length = 3, 5
    x = torch.randn(batch, length, 16)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    kwargs = _masks(batch, length, length)[case]
    with torch.no_grad():
        expected = mha(x, x, x, need_weights=False, **kwargs)[0]
        got, weights = split(x, x, x, need_weights=False, **kwargs)
    assert weights is None
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # q, k and v are the three row blocks of the fused weight.
    for i, part in enumerate("qkv"):
        assert torch.equal(split.in_proj[part].weight, mha.in_proj_weight[16 * i:16 * (i + 1)])
        assert torch.equal(split.in_proj[part].bias, mha.in_proj_bias[16 * i:16 * (i + 1)])


@pytest.mark.parametrize("batch_first", [True, False])
def test_split_attention_cross_attention_with_another_key_length(batch_first):
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    split = SplitAttention(mha).eval()
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    padding = torch.tensor([[False] * 5 + [True] * 2, [False] * 7])
    with torch.no_grad():
        expected = mha(q, kv, kv, need_weights=False, key_padding_mask=padding)[0]
        got = split(q, kv, kv, need_weights=False, key_padding_mask=padding)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_split_attention_refuses_attention_weights():
    split = SplitAttention(nn.MultiheadAttention(8, 2, batch_first=True))
    x = torch.randn(1, 3, 8)
    with pytest.raises(NotImplementedError, match="attention weights"):
        split(x, x, x, need_weights=True)


# -- unfuse --------------------------------------------------------------------------------

def test_unfuse_open_clip_keeps_names_order_and_outputs(tiny):
    pixels, tokens = _inputs(tiny)
    image, text = _encode(tiny, pixels, tokens)
    before = tiny.layers()
    fused = [layer for layer in before if layer.rows is not None]
    assert len(fused) == 12  # 2 towers × 2 blocks × q, k, v
    split = unfuse(tiny.module, before)
    assert split == sorted(f"{tower}transformer.resblocks.{b}.attn" for tower in ("", "visual.") for b in (0, 1))
    assert all(isinstance(tiny.module.get_submodule(path), SplitAttention) for path in split)
    after = tiny.layers()
    assert [layer.name for layer in after] == [layer.name for layer in before]
    assert [layer.shape for layer in after] == [layer.shape for layer in before]
    assert all(layer.rows is None for layer in after)
    q = tiny.layer_index["visual.transformer.resblocks.1.attn.in_proj.q"]
    assert q.param == "visual.transformer.resblocks.1.attn.in_proj.q.weight"
    assert isinstance(layer_module(tiny.module, q), nn.Linear)
    # Unfusing adds no parameters: 3 Linears hold exactly the fused weight and bias.
    new_image, new_text = _encode(tiny, pixels, tokens)
    torch.testing.assert_close(new_image, image, atol=1e-5, rtol=0)
    torch.testing.assert_close(new_text, text, atol=1e-5, rtol=0)
    assert unfuse(tiny.module, tiny.layers()) == []  # already split: nothing to do


def test_unfuse_on_out_proj_alone_splits_its_attention_and_nothing_else(tiny):
    out_proj = tiny.layer_index["transformer.resblocks.0.attn.out_proj"]
    mlp = tiny.layer_index["transformer.resblocks.1.mlp.c_fc"]
    assert unfuse(tiny.module, [out_proj, mlp]) == ["transformer.resblocks.0.attn"]
    assert isinstance(tiny.module.get_submodule("transformer.resblocks.1.attn"), nn.MultiheadAttention)


def test_unfuse_blip_vision_qkv_keeps_names_and_outputs(tmp_path):
    model = load_model(f"hf-blip:{save_tiny_blip(tmp_path / 'blip', task='retrieval')}", device="cpu")
    pixels = model.preprocess_batch(random_images(3))
    with torch.no_grad():
        image = model.encode_image(pixels).clone()
    before = model.layers()
    qkv = [layer for layer in before if ".qkv." in layer.name]
    assert len(qkv) == 6 and all(layer.rows is not None for layer in qkv)
    assert unfuse(model.module, qkv) == [f"vision_model.encoder.layers.{b}.self_attn.qkv" for b in (0, 1)]
    assert isinstance(model.module.get_submodule("vision_model.encoder.layers.0.self_attn.qkv"), SplitQKV)
    after = model.layers()
    assert [(layer.name, layer.shape) for layer in after] == [(layer.name, layer.shape) for layer in before]
    v = model.layer_index["vision_model.encoder.layers.1.self_attn.qkv.v"]
    assert v.rows is None and v.param.endswith("qkv.v.weight")
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), image, atol=1e-5, rtol=0)


# -- LowRankLinear and factorise ---------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_low_rank_linear_counts_and_computes_up_down_x(bias):
    torch.manual_seed(2)
    m, n, r = 7, 11, 3
    up, down = torch.randn(m, r), torch.randn(r, n)
    b = torch.randn(m) if bias else None
    layer = LowRankLinear(up, down, b)
    assert (layer.rank, layer.in_features, layer.out_features) == (3, 11, 7)
    assert sum(p.numel() for p in layer.parameters()) == 3 * (7 + 11) + (7 if bias else 0)  # 54 (+7)
    x = torch.randn(5, n)
    expected = (up @ (down @ x.t())).t() + (b if bias else 0)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.weight, up @ down)
    # The factors are copies: editing the inputs afterwards changes nothing.
    up.zero_()
    assert layer.up.abs().sum() > 0


def test_low_rank_linear_refuses_factors_that_do_not_chain():
    with pytest.raises(ValueError, match=r"\(4, 2\) and \(3, 5\) do not chain"):
        LowRankLinear(torch.zeros(4, 2), torch.zeros(3, 5))


def test_factorise_at_full_rank_keeps_outputs(tiny):
    pixels, tokens = _inputs(tiny)
    image, text = _encode(tiny, pixels, tokens)
    names = ["visual.transformer.resblocks.0.mlp.c_fc", "transformer.resblocks.1.mlp.c_proj",
             "transformer.resblocks.0.attn.out_proj"]
    unfuse(tiny.module, [tiny.layer_index[n] for n in names])
    for name in names:
        layer = tiny.layer_index[name]
        weight = dense_weight(tiny.module, layer).detach()
        bias = layer_module(tiny.module, layer).bias.detach().clone()
        up, down = svd_factors(weight, min(layer.shape), "exact")
        low_rank = factorise(tiny.module, layer, up, down)
        assert layer_form(tiny.module, tiny.layer_index[name]) == "factorised"
        assert low_rank.rank == min(layer.shape)
        assert torch.equal(low_rank.bias, bias)
    # The inventory still lists the layers, with their (out, in) shapes.
    assert tiny.layer_index["visual.transformer.resblocks.0.mlp.c_fc"].shape == (128, 32)
    new_image, new_text = _encode(tiny, pixels, tokens)
    torch.testing.assert_close(new_image, image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(new_text, text, atol=1e-5, rtol=1e-4)


def test_factorise_refuses_fused_slices_and_bare_parameters(tiny):
    q = tiny.layer_index["transformer.resblocks.0.attn.in_proj.q"]
    with pytest.raises(TypeError, match="unfuse"):
        factorise(tiny.module, q, torch.zeros(24, 2), torch.zeros(2, 24))
    with pytest.raises(TypeError, match="not a Linear"):
        factorise(tiny.module, tiny.layer_index["visual.proj"], torch.zeros(16, 2), torch.zeros(2, 32))


# -- masks ---------------------------------------------------------------------------------

def _keep(shape, seed=0, p=0.5):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > p


def test_set_mask_zeros_pruned_entries_and_reapply_undoes_an_optimiser_step(tiny):
    layer = tiny.layer_index["visual.transformer.resblocks.0.mlp.c_fc"]
    proj = tiny.layer_index["visual.proj"]  # bare (in, out) parameter used as x @ W
    keep, proj_keep = _keep(layer.shape, 1), _keep(proj.shape, 2)
    original = dense_weight(tiny.module, layer).detach().clone()
    set_mask(tiny.module, layer, keep)
    set_mask(tiny.module, proj, proj_keep)
    assert layer_form(tiny.module, layer) == "masked" and layer_form(tiny.module, proj) == "masked"
    weight = dense_weight(tiny.module, layer)
    assert torch.equal(weight, original * keep)  # kept entries untouched, pruned ones zero
    assert torch.equal(get_mask(tiny.module, layer), keep)
    # The bare parameter is stored (in, out): its mask buffer is stored transposed, read back (out, in).
    assert tiny.module.visual.proj_mask.shape == (32, 16)
    assert torch.equal(get_mask(tiny.module, proj), proj_keep)
    assert (tiny.module.visual.proj.t()[~proj_keep] == 0).all()

    optimiser = torch.optim.SGD(tiny.module.parameters(), lr=0.1)
    pixels, tokens = _inputs(tiny)
    loss = tiny.encode_image(pixels).pow(2).sum() + tiny.encode_text(tokens).pow(2).sum()
    loss.backward()
    optimiser.step()
    assert (dense_weight(tiny.module, layer)[~keep] != 0).any()  # the step revived pruned entries
    reapply_masks(tiny.module)
    weight = dense_weight(tiny.module, layer)
    assert (weight[~keep] == 0).all() and (weight[keep] != 0).all()
    assert (tiny.module.visual.proj.t()[~proj_keep] == 0).all()


def test_set_mask_refuses_fused_slices_and_factorised_layers(tiny):
    q = tiny.layer_index["transformer.resblocks.0.attn.in_proj.q"]
    with pytest.raises(TypeError, match="fused slice"):
        set_mask(tiny.module, q, torch.ones(q.shape, dtype=torch.bool))
    layer = tiny.layer_index["transformer.resblocks.0.mlp.c_fc"]
    factorise(tiny.module, layer, torch.randn(96, 4), torch.randn(4, 24))
    with pytest.raises(TypeError, match="set_factor_masks"):
        set_mask(tiny.module, tiny.layer_index[layer.name], torch.ones(layer.shape, dtype=torch.bool))


def test_factor_masks_zero_and_survive_reapply(tiny):
    layer = tiny.layer_index["transformer.resblocks.0.mlp.c_fc"]
    low_rank = factorise(tiny.module, layer, torch.randn(96, 4), torch.randn(4, 24))
    up_keep, down_keep = _keep((96, 4), 5), _keep((4, 24), 6)
    set_factor_masks(tiny.module, tiny.layer_index[layer.name], up_keep, down_keep)
    assert (low_rank.up[~up_keep] == 0).all() and (low_rank.down[~down_keep] == 0).all()
    with torch.no_grad():
        low_rank.up.add_(1.0)
        low_rank.down.add_(1.0)
    reapply_masks(tiny.module)
    assert (low_rank.up[~up_keep] == 0).all() and (low_rank.up[up_keep] != 0).all()
    assert (low_rank.down[~down_keep] == 0).all()


def test_stored_parameters_of_each_form(tiny):
    dense = tiny.layer_index["transformer.resblocks.0.mlp.c_fc"]  # (96, 24)
    masked = tiny.layer_index["transformer.resblocks.1.mlp.c_fc"]
    factored = tiny.layer_index["transformer.resblocks.0.mlp.c_proj"]  # (24, 96)
    both = tiny.layer_index["transformer.resblocks.1.mlp.c_proj"]
    proj = tiny.layer_index["text_projection"]  # (16, 24), bare
    assert stored_parameters(tiny.module, dense) == 96 * 24 == 2304
    keep = torch.zeros(masked.shape, dtype=torch.bool)
    keep[:, :10] = True  # 96 rows × 10 columns kept
    set_mask(tiny.module, masked, keep)
    assert stored_parameters(tiny.module, masked) == 960
    proj_keep = torch.zeros(proj.shape, dtype=torch.bool)
    proj_keep[:4] = True
    set_mask(tiny.module, proj, proj_keep)
    assert stored_parameters(tiny.module, proj) == 4 * 24 == 96
    factorise(tiny.module, factored, torch.randn(24, 5), torch.randn(5, 96))
    assert stored_parameters(tiny.module, tiny.layer_index[factored.name]) == 5 * (24 + 96) == 600
    factorise(tiny.module, both, torch.randn(24, 5), torch.randn(5, 96))
    up_keep = torch.zeros(24, 5, dtype=torch.bool)
    up_keep[:, 0] = True  # 24 kept
    down_keep = torch.zeros(5, 96, dtype=torch.bool)
    down_keep[:2] = True  # 192 kept
    set_factor_masks(tiny.module, tiny.layer_index[both.name], up_keep, down_keep)
    assert stored_parameters(tiny.module, tiny.layer_index[both.name]) == 24 + 192 == 216


# -- snapshots -------------------------------------------------------------------------------

def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_state(module, saved):
    now = module.state_dict()
    assert set(now) == set(saved)
    for key, value in saved.items():
        assert now[key].dtype == value.dtype and torch.equal(now[key], value), key


def test_snapshot_restores_weights_masks_and_module_types_twice(tiny):
    unfuse(tiny.module, tiny.layers())
    names = ["visual.transformer.resblocks.0.attn.in_proj.k", "transformer.resblocks.0.mlp.c_fc",
             "transformer.resblocks.1.mlp.c_proj", "visual.proj"]
    # One layer is already masked when the snapshot is taken: its mask must come back as it was.
    pre = tiny.layer_index["transformer.resblocks.1.mlp.c_proj"]
    set_mask(tiny.module, pre, _keep(pre.shape, 7, p=0.2))
    saved = _state(tiny.module)
    types = {name: type(layer_module(tiny.module, tiny.layer_index[name])) for name in names}
    snapshot = LayerSnapshot(tiny.module, [tiny.layer_index[n] for n in names])

    for round_ in range(2):
        k = tiny.layer_index[names[0]]
        set_mask(tiny.module, k, _keep(k.shape, 8 + round_))
        c_fc = tiny.layer_index[names[1]]
        factorise(tiny.module, c_fc, torch.randn(96, 3), torch.randn(3, 24))
        set_factor_masks(tiny.module, tiny.layer_index[names[1]], _keep((96, 3), 9), _keep((3, 24), 10))
        c_proj = tiny.layer_index[names[2]]
        factorise(tiny.module, c_proj, torch.randn(24, 2), torch.randn(2, 96))
        proj = tiny.layer_index[names[3]]
        set_mask(tiny.module, proj, _keep(proj.shape, 11))
        with torch.no_grad():
            tiny.module.visual.proj.add_(1.0)
        assert layer_form(tiny.module, tiny.layer_index[names[1]]) == "factorised"

        snapshot.restore(tiny.module)
        _assert_same_state(tiny.module, saved)  # bit-identical values, same masks, no extra buffers
        assert {n: type(layer_module(tiny.module, tiny.layer_index[n])) for n in names} == types
        assert layer_form(tiny.module, tiny.layer_index[names[2]]) == "masked"
        assert layer_form(tiny.module, tiny.layer_index[names[0]]) == "dense"
        assert not hasattr(tiny.module.visual, "proj_mask")


def test_snapshot_of_a_fused_slice_restores_the_whole_attention(tiny):
    q = tiny.layer_index["visual.transformer.resblocks.1.attn.in_proj.q"]
    saved = _state(tiny.module)
    snapshot = LayerSnapshot(tiny.module, [q])
    assert list(snapshot.modules) == ["visual.transformer.resblocks.1.attn"]
    unfuse(tiny.module, [q])
    set_mask(tiny.module, tiny.layer_index[q.name], torch.zeros(q.shape, dtype=torch.bool))
    snapshot.restore(tiny.module)
    assert isinstance(tiny.module.get_submodule("visual.transformer.resblocks.1.attn"), nn.MultiheadAttention)
    _assert_same_state(tiny.module, saved)
