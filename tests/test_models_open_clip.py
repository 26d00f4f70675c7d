"""OpenCLIP adapter: config-file specs, the fused in_proj inventory, encoders, errors."""

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from openclip_tiny import TINY_OPEN_CLIP_CONFIG
from rcc.errors import ModelSpecError
from rcc.models.inventory import read_matrix, write_matrix
from rcc.models.registry import load_model


@pytest.fixture
def tiny_spec(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    return f"open_clip:{path}"


def test_inventory_exposes_fused_in_proj_as_q_k_v_row_slices(tiny_spec):
    torch.manual_seed(0)
    model = load_model(tiny_spec)
    layers = model.layers()
    by_name = {layer.name: layer for layer in layers}
    # 2 towers × 2 blocks × (q, k, v, out, mlp_in, mlp_out) + 2 projections.
    assert len(layers) == 2 * 2 * 6 + 2
    q = by_name["visual.transformer.resblocks.1.attn.in_proj.q"]
    v = by_name["visual.transformer.resblocks.1.attn.in_proj.v"]
    assert (q.tower, q.block, q.kind, q.shape, q.rows) == ("vision", 1, "attn_q", (32, 32), (0, 32))
    assert v.rows == (64, 96)
    fused = model.module.get_parameter("visual.transformer.resblocks.1.attn.in_proj_weight")
    assert torch.equal(read_matrix(model.module, v), fused[64:96])
    # Writing through the slice changes exactly those rows of the live fused parameter.
    before = fused.detach().clone()
    write_matrix(model.module, v, torch.zeros(32, 32))
    assert torch.count_nonzero(fused[64:96]) == 0
    assert torch.equal(fused[:64], before[:64])


def test_inventory_kinds_shapes_and_projection_orientation(tiny_spec):
    model = load_model(tiny_spec)
    by_name = model.layer_index
    assert by_name["transformer.resblocks.0.mlp.c_fc"].shape == (96, 24)  # mlp_ratio 4
    assert by_name["transformer.resblocks.0.mlp.c_proj"].kind == "mlp_out"
    # text_projection is stored (width, embed) and used as x @ W: the inventory reads it as (out, in).
    proj = by_name["text_projection"]
    assert proj.transposed and proj.shape == (16, 24) and proj.kind == "projection" and proj.tower == "text"
    assert torch.equal(read_matrix(model.module, proj), model.module.text_projection.t())
    visual = by_name["visual.proj"]
    assert visual.tower == "vision" and visual.shape == (16, 32)
    counted = sum(layer.params for layer in model.layers())
    assert counted == sum(layer.shape[0] * layer.shape[1] for layer in model.layers())


def test_encoders_match_plain_open_clip_forward(tiny_spec):
    torch.manual_seed(0)
    model = load_model(tiny_spec)
    image = Image.new("RGB", (20, 20), (120, 30, 200))
    pixels = model.preprocess_batch([image, image])
    assert pixels.shape == (2, 3, 16, 16)
    tokens = model.tokenize(["a red square", "two words"])
    with torch.no_grad():
        ours_img = model.encode_image(pixels)
        ours_txt = model.encode_text(tokens)
        ref_img = model.module.encode_image(pixels)
        ref_txt = model.module.encode_text(tokens["input_ids"])
    assert ours_img.shape == (2, 16) and ours_txt.shape == (2, 16)
    torch.testing.assert_close(ours_img, ref_img)
    torch.testing.assert_close(ours_txt, ref_txt)
    assert not torch.allclose(F.normalize(ours_txt[0], dim=0), F.normalize(ours_txt[1], dim=0))


def test_text_cut_to_the_longest_text_encodes_as_the_full_context(tiny_spec):
    # The built-in tower is causal: positions past every text's end cannot change the pooled token.
    torch.manual_seed(0)
    model = load_model(tiny_spec)
    tokens = model.tokenize(["a red square", "two words"])
    cut = model.trim_text_padding(tokens)
    longest = int((tokens["input_ids"] != 0).sum(dim=1).max())
    assert cut["input_ids"].shape == (2, longest) and longest < tokens["input_ids"].shape[1]
    assert torch.equal(cut["input_ids"], tokens["input_ids"][:, :longest])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(cut), model.module.encode_text(tokens["input_ids"]))


def test_fingerprint_changes_only_for_the_tower_that_changed(tiny_spec):
    model = load_model(tiny_spec)
    vision, text = model.fingerprint("vision"), model.fingerprint("text")
    with torch.no_grad():
        model.module.transformer.resblocks[0].mlp.c_fc.weight[0, 0] += 1.0
    assert model.fingerprint("vision") == vision
    assert model.fingerprint("text") != text


def test_config_with_weights_file_round_trips(tiny_spec, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    first = load_model(tiny_spec)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in first.module.state_dict().items()}, str(weights))
    torch.manual_seed(2)
    second = load_model(f"{tiny_spec}@{weights}")
    for name, tensor in first.module.state_dict().items():
        assert torch.equal(tensor, second.module.state_dict()[name]), name


@pytest.mark.parametrize("spec, words", [
    ("open_clip:no-such-model", ["no-such-model", "open_clip:NAME"]),
    ("open_clip:/nowhere/config.json", ["/nowhere/config.json", "not found"]),
    ("clip:ViT-B-32", ["clip:ViT-B-32", "accepted forms", "hf-blip:ID_OR_LOCAL_DIR"]),
    ("open_clip:", ["names no model"]),
])
def test_bad_model_specs_name_the_spec_and_the_accepted_forms(spec, words):
    with pytest.raises(ModelSpecError) as info:
        load_model(spec)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_malformed_config_and_mismatched_weights(tmp_path, tiny_spec):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelSpecError, match="not valid JSON"):
        load_model(f"open_clip:{bad}")
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ModelSpecError, match="vision_cfg"):
        load_model(f"open_clip:{partial}")
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"nope": torch.zeros(2)}, str(wrong))
    with pytest.raises(ModelSpecError, match="do not match"):
        load_model(f"{tiny_spec}@{wrong}")


def test_whole_model_fingerprint_covers_zero_dim_tensors(config_path):
    """logit_scale is a 0-dim tensor: the whole-model fingerprint must read it (and see it change)."""
    import torch

    from rcc.models.registry import load_model

    model = load_model(f"open_clip:{config_path}")
    before = model.fingerprint()
    assert before == model.fingerprint()
    with torch.no_grad():
        model.module.logit_scale.add_(1.0)
    assert model.fingerprint() != before
