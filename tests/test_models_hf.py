"""Hugging Face CLIP and BLIP adapters against tiny random checkpoints built offline."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from collections import Counter  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rcc.errors import EvalError, ModelSpecError  # noqa: E402
from rcc.models.hf_blip import HFBlipModel, load_hf_blip  # noqa: E402
from rcc.models.hf_clip import HFCLIPModel, load_hf_clip  # noqa: E402
from rcc.models.inventory import read_matrix, write_matrix  # noqa: E402
from hf_tiny import IMAGE_SIZE, random_images, save_tiny_blip, save_tiny_clip  # noqa: E402

TEXTS = ["a photo of a cat", "two dogs sitting on a red car", "zebra!"]
ATOL = 1e-5


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def blip_retrieval_dir(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("blip_itm"), "retrieval")


@pytest.fixture(scope="module")
def blip_caption_dir(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("blip_cap"), "caption")


@pytest.fixture(scope="module")
def clip(clip_dir) -> HFCLIPModel:
    return load_hf_clip(f"hf:{clip_dir}", str(clip_dir))


@pytest.fixture(scope="module")
def blip_itm(blip_retrieval_dir) -> HFBlipModel:
    return load_hf_blip(f"hf-blip:{blip_retrieval_dir}", str(blip_retrieval_dir))


@pytest.fixture(scope="module")
def blip_cap(blip_caption_dir) -> HFBlipModel:
    return load_hf_blip(f"hf-blip:{blip_caption_dir}", str(blip_caption_dir))


def _kind_counts(model) -> Counter:
    return Counter((layer.tower, layer.kind) for layer in model.layers())


# -- CLIP ---------------------------------------------------------------------------------------

def test_clip_identity(clip):
    assert clip.family == "hf_clip"
    assert clip.tasks == frozenset({"zeroshot", "retrieval"})
    assert clip.dtype == torch.float32
    assert not clip.module.training


def test_clip_preprocess_matches_processor(clip, clip_dir):
    from transformers import CLIPProcessor

    images = random_images(3)
    one = clip.preprocess(images[0])
    assert one.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and one.dtype == torch.float32
    batch = clip.preprocess_batch(images)
    assert torch.allclose(batch, torch.stack([clip.preprocess(im) for im in images]), atol=1e-6)
    reference = CLIPProcessor.from_pretrained(clip_dir)(images=images, return_tensors="pt")
    assert torch.allclose(batch, reference["pixel_values"], atol=1e-6)


def test_clip_embeddings_match_transformers(clip, clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    images = random_images(3)
    pixels = clip.preprocess_batch(images)
    tokens = clip.tokenize(TEXTS)
    assert set(tokens) == {"input_ids", "attention_mask"}
    with torch.no_grad():
        image_emb = clip.encode_image(pixels)
        text_emb = clip.encode_text(tokens)
    assert image_emb.shape == (3, 16) and text_emb.shape == (3, 16)

    reference = CLIPModel.from_pretrained(clip_dir).eval()
    inputs = CLIPProcessor.from_pretrained(clip_dir)(
        text=TEXTS, images=images, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = reference(**inputs)
        ref_image = reference.visual_projection(reference.vision_model(inputs["pixel_values"]).pooler_output)
        ref_text = reference.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output
    assert torch.allclose(image_emb, ref_image, atol=ATOL)
    assert torch.allclose(text_emb, ref_text, atol=ATOL)
    # The forward pass normalises: our unnormalised embeddings must agree after normalising.
    assert torch.allclose(F.normalize(image_emb, dim=-1), out.image_embeds, atol=ATOL)
    assert torch.allclose(F.normalize(text_emb, dim=-1), out.text_embeds, atol=ATOL)


def test_clip_text_embedding_ignores_padding(clip):
    with torch.no_grad():
        alone = clip.encode_text(clip.tokenize([TEXTS[2]]))
        batched = clip.encode_text(clip.tokenize(TEXTS))
    assert torch.allclose(alone[0], batched[2], atol=ATOL)


def test_clip_text_cut_to_the_longest_text_encodes_the_same(clip):
    tokens = clip.tokenize([TEXTS[2], TEXTS[0]])
    wide = {k: F.pad(v, (0, 5)) for k, v in tokens.items()}  # five all-padding positions
    cut = clip.trim_text_padding(wide)
    assert cut["input_ids"].shape == tokens["input_ids"].shape
    with torch.no_grad():
        assert torch.allclose(clip.encode_text(cut), clip.encode_text(tokens), atol=ATOL)


def test_clip_inventory(clip):
    expected = {(tower, kind): 2 for tower in ("vision", "text")
                for kind in ("attn_q", "attn_k", "attn_v", "attn_out", "mlp_in", "mlp_out")}
    expected[("vision", "projection")] = 1
    expected[("text", "projection")] = 1
    assert _kind_counts(clip) == expected

    shapes = {"attn_q": (32, 32), "attn_k": (32, 32), "attn_v": (32, 32), "attn_out": (32, 32),
              "mlp_in": (37, 32), "mlp_out": (32, 37), "projection": (16, 32)}
    for layer in clip.layers():
        assert layer.shape == shapes[layer.kind], layer.name
        assert (layer.block is None) == (layer.kind == "projection"), layer.name
        assert layer.rows is None and not layer.transposed
        assert clip.tower_of_param(layer.param) == layer.tower

    index = clip.layer_index
    q = index["vision_model.encoder.layers.1.self_attn.q_proj"]
    assert (q.tower, q.block, q.kind) == ("vision", 1, "attn_q")
    fc2 = index["text_model.encoder.layers.0.mlp.fc2"]
    assert (fc2.tower, fc2.block, fc2.kind) == ("text", 0, "mlp_out")
    assert index["visual_projection"].param == "visual_projection.weight"
    assert set(index) >= {"visual_projection", "text_projection"}


def test_clip_read_matrix_is_live(clip_dir):
    model = load_hf_clip(f"hf:{clip_dir}", str(clip_dir))
    layer = model.layer_index["text_model.encoder.layers.0.self_attn.k_proj"]
    live = model.module.text_model.encoder.layers[0].self_attn.k_proj.weight
    assert read_matrix(model.module, layer).data_ptr() == live.data_ptr()
    write_matrix(model.module, layer, torch.zeros(layer.shape))
    assert torch.count_nonzero(live) == 0


def test_clip_tower_of_param_and_fingerprint(clip_dir):
    model = load_hf_clip(f"hf:{clip_dir}", str(clip_dir))
    towers = {name: model.tower_of_param(name) for name in model.module.state_dict()}
    assert towers["logit_scale"] is None
    assert towers["visual_projection.weight"] == "vision"
    assert towers["text_projection.weight"] == "text"
    assert all(t == "vision" for n, t in towers.items() if n.startswith("vision_model."))
    assert all(t == "text" for n, t in towers.items() if n.startswith("text_model."))

    before = {tower: model.fingerprint(tower) for tower in ("vision", "text")}
    with torch.no_grad():
        model.module.vision_model.encoder.layers[0].mlp.fc1.weight.mul_(0.5)
    assert model.fingerprint("vision") != before["vision"]
    assert model.fingerprint("text") == before["text"]


# -- BLIP retrieval -----------------------------------------------------------------------------

def test_blip_retrieval_identity(blip_itm):
    assert blip_itm.family == "hf_blip"
    assert blip_itm.tasks == frozenset({"zeroshot", "retrieval"})
    assert type(blip_itm.module).__name__ == "BlipForImageTextRetrieval"
    with pytest.raises(EvalError, match="cannot caption"):
        blip_itm.generate_captions(blip_itm.preprocess_batch(random_images(1)))


def test_blip_retrieval_embeddings_match_itc(blip_itm, blip_retrieval_dir):
    from transformers import BlipForImageTextRetrieval, BlipProcessor

    images = random_images(3)
    pixels = blip_itm.preprocess_batch(images)
    assert pixels.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    tokens = blip_itm.tokenize(TEXTS)
    assert set(tokens) == {"input_ids", "attention_mask"}
    with torch.no_grad():
        image_emb = blip_itm.encode_image(pixels)
        text_emb = blip_itm.encode_text(tokens)
    assert image_emb.shape == (3, 16) and text_emb.shape == (3, 16)

    reference = BlipForImageTextRetrieval.from_pretrained(blip_retrieval_dir).eval()
    inputs = BlipProcessor.from_pretrained(blip_retrieval_dir)(
        images=images, text=TEXTS, padding=True, return_tensors="pt")
    assert torch.allclose(pixels, inputs["pixel_values"], atol=1e-6)
    with torch.no_grad():
        ref_image = reference.vision_proj(reference.vision_model(inputs["pixel_values"]).last_hidden_state[:, 0])
        ref_text = reference.text_proj(reference.text_encoder(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state[:, 0])
        itc = reference(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                        attention_mask=inputs["attention_mask"], use_itm_head=False).itm_score
    assert torch.allclose(image_emb, ref_image, atol=ATOL)
    assert torch.allclose(text_emb, ref_text, atol=ATOL)
    ours = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    assert torch.allclose(ours, itc, atol=ATOL)


def test_blip_text_embedding_is_unimodal(blip_retrieval_dir):
    model = load_hf_blip(f"hf-blip:{blip_retrieval_dir}", str(blip_retrieval_dir))
    tokens = model.tokenize(TEXTS)
    with torch.no_grad():
        before = model.encode_text(tokens)
        for layer in model.layers():
            if layer.tower == "fusion":
                write_matrix(model.module, layer, torch.randn(layer.shape))
        after = model.encode_text(tokens)
    assert torch.equal(before, after)


def test_blip_retrieval_inventory(blip_itm):
    kinds = ("attn_q", "attn_k", "attn_v", "attn_out", "mlp_in", "mlp_out")
    expected = {(tower, kind): 2 for tower in ("vision", "text") for kind in kinds}
    expected.update({("fusion", kind): 2 for kind in ("attn_q", "attn_k", "attn_v", "attn_out")})
    expected[("vision", "projection")] = 1
    expected[("text", "projection")] = 1
    assert _kind_counts(blip_itm) == expected
    assert len(blip_itm.layers()) == 34

    index = blip_itm.layer_index
    assert not any("itm_head" in name for name in index)
    assert index["vision_proj"].shape == (16, 24) and index["vision_proj"].block is None
    assert index["text_proj"].shape == (16, 32)
    assert index["vision_model.encoder.layers.0.self_attn.projection"].shape == (24, 24)
    assert index["vision_model.encoder.layers.1.mlp.fc1"].shape == (37, 24)
    assert index["text_encoder.encoder.layer.0.attention.self.query"].shape == (32, 32)
    assert index["text_encoder.encoder.layer.0.output.dense"].kind == "mlp_out"
    assert index["text_encoder.encoder.layer.0.attention.output.dense"].kind == "attn_out"
    cross_k = index["text_encoder.encoder.layer.1.crossattention.self.key"]
    assert (cross_k.tower, cross_k.block, cross_k.kind, cross_k.shape) == ("fusion", 1, "attn_k", (32, 24))
    for layer in blip_itm.layers():
        assert blip_itm.tower_of_param(layer.param) == layer.tower, layer.name


def test_blip_fused_qkv_slices_are_live_views(blip_retrieval_dir):
    model = load_hf_blip(f"hf-blip:{blip_retrieval_dir}", str(blip_retrieval_dir))
    fused = model.module.vision_model.encoder.layers[1].self_attn.qkv.weight
    base = "vision_model.encoder.layers.1.self_attn.qkv"
    for i, (suffix, kind) in enumerate((("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"))):
        layer = model.layer_index[f"{base}.{suffix}"]
        assert (layer.tower, layer.block, layer.kind) == ("vision", 1, kind)
        assert layer.shape == (24, 24) and layer.rows == (24 * i, 24 * (i + 1))
        assert layer.param == f"{base}.weight"
        assert torch.equal(read_matrix(model.module, layer), fused[24 * i:24 * (i + 1)])
    v = model.layer_index[f"{base}.v"]
    write_matrix(model.module, v, torch.zeros(v.shape))
    assert torch.count_nonzero(fused[48:]) == 0 and torch.count_nonzero(fused[:48]) > 0


def test_blip_retrieval_towers(blip_itm):
    towers = {name: blip_itm.tower_of_param(name) for name in blip_itm.module.state_dict()}
    assert towers["vision_proj.weight"] == "vision"
    assert towers["text_proj.bias"] == "text"
    assert towers["itm_head.weight"] == "fusion"
    assert towers["text_encoder.embeddings.word_embeddings.weight"] == "text"
    assert towers["text_encoder.encoder.layer.0.crossattention.self.query.weight"] == "fusion"
    assert towers["text_encoder.encoder.layer.0.attention.self.query.weight"] == "text"
    assert all(towers[n] == "vision" for n in towers if n.startswith("vision_model."))


# -- BLIP captioning ----------------------------------------------------------------------------

def test_blip_caption(blip_cap, blip_caption_dir):
    from transformers import BlipForConditionalGeneration, BlipProcessor

    assert blip_cap.tasks == frozenset({"caption"})
    assert type(blip_cap.module).__name__ == "BlipForConditionalGeneration"
    images = random_images(2)
    pixels = blip_cap.preprocess_batch(images)
    captions = blip_cap.generate_captions(pixels, max_new_tokens=6)
    assert isinstance(captions, list) and len(captions) == 2
    assert all(isinstance(c, str) for c in captions)

    reference = BlipForConditionalGeneration.from_pretrained(blip_caption_dir).eval()
    processor = BlipProcessor.from_pretrained(blip_caption_dir)
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        ids = reference.generate(pixel_values=inputs["pixel_values"], max_new_tokens=6,
                                 do_sample=False, num_beams=1)
        pooled = reference.vision_model(inputs["pixel_values"]).pooler_output
    assert captions == [processor.decode(row, skip_special_tokens=True).strip() for row in ids]
    assert "[DEC]" not in " ".join(captions) and "[SEP]" not in " ".join(captions)

    with torch.no_grad():
        image_emb = blip_cap.encode_image(pixels)
    assert image_emb.shape == (2, 24)
    assert torch.allclose(image_emb, pooled, atol=ATOL)


def test_blip_caption_has_no_text_embedding(blip_cap, blip_caption_dir):
    with pytest.raises(EvalError) as info:
        blip_cap.encode_text(blip_cap.tokenize(TEXTS))
    message = str(info.value)
    assert f"hf-blip:{blip_caption_dir}" in message and "caption" in message


def test_blip_caption_inventory(blip_cap):
    expected = {("vision", kind): 2
                for kind in ("attn_q", "attn_k", "attn_v", "attn_out", "mlp_in", "mlp_out")}
    expected.update({("decoder", kind): 4 for kind in ("attn_q", "attn_k", "attn_v", "attn_out")})
    expected.update({("decoder", "mlp_in"): 2, ("decoder", "mlp_out"): 2, ("decoder", "projection"): 1})
    assert _kind_counts(blip_cap) == expected
    assert len(blip_cap.layers()) == 33

    index = blip_cap.layer_index
    assert "text_decoder.cls.predictions.decoder" not in index  # tied to the word embeddings
    cross_v = index["text_decoder.bert.encoder.layer.0.crossattention.self.value"]
    assert (cross_v.tower, cross_v.block, cross_v.shape) == ("decoder", 0, (32, 24))
    assert index["text_decoder.cls.predictions.transform.dense"].shape == (32, 32)
    towers = {blip_cap.tower_of_param(n) for n in blip_cap.module.state_dict()}
    assert towers == {"vision", "decoder"}


# -- architecture choice and errors -------------------------------------------------------------

@pytest.mark.parametrize("task, arch", [("retrieval", "BlipForImageTextRetrieval"),
                                        ("caption", "BlipForConditionalGeneration")])
def test_blip_without_architectures_picks_matching_class(tmp_path, task, arch):
    path = save_tiny_blip(tmp_path / task, task)
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("architectures", None)
    config_file.write_text(json.dumps(config))
    model = load_hf_blip(f"hf-blip:{path}", str(path))
    assert type(model.module).__name__ == arch


def test_missing_dir_is_spec_error(tmp_path):
    missing = tmp_path / "nope"
    for load, prefix in ((load_hf_clip, "hf:"), (load_hf_blip, "hf-blip:")):
        spec = f"{prefix}{missing}"
        with pytest.raises(ModelSpecError) as info:
            load(spec, str(missing))
        message = str(info.value)
        assert repr(spec) in message and "no such directory" in message
        assert "accepted forms: hf:ID_OR_LOCAL_DIR, hf-blip:ID_OR_LOCAL_DIR" in message
        assert "\n" not in message


def test_unreachable_hub_id_is_spec_error():
    with pytest.raises(ModelSpecError, match=r"cannot load 'hf:nobody/no-such-clip': .*offline"):
        load_hf_clip("hf:nobody/no-such-clip", "nobody/no-such-clip")


def test_dir_without_config_is_spec_error(tmp_path):
    with pytest.raises(ModelSpecError, match="has no config.json"):
        load_hf_blip(f"hf-blip:{tmp_path}", str(tmp_path))


def test_checkpoint_without_tokenizer_is_spec_error(tmp_path):
    path = save_tiny_clip(tmp_path / "clip")
    for name in os.listdir(path):
        if name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
            os.remove(path / name)
    with pytest.raises(ModelSpecError, match="no tokenizer saved with the checkpoint"):
        load_hf_clip(f"hf:{path}", str(path))


def test_wrong_family_is_spec_error(clip_dir, blip_retrieval_dir):
    with pytest.raises(ModelSpecError, match="'clip' model, not 'blip'.*use hf:"):
        load_hf_blip(f"hf-blip:{clip_dir}", str(clip_dir))
    with pytest.raises(ModelSpecError, match="'blip' model, not 'clip'.*use hf-blip:"):
        load_hf_clip(f"hf:{blip_retrieval_dir}", str(blip_retrieval_dir))


def test_unsupported_blip_architecture_is_spec_error(tmp_path):
    path = save_tiny_blip(tmp_path / "vqa", "retrieval")
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config["architectures"] = ["BlipForQuestionAnswering"]
    config_file.write_text(json.dumps(config))
    with pytest.raises(ModelSpecError, match="unsupported BLIP architecture BlipForQuestionAnswering"):
        load_hf_blip(f"hf-blip:{path}", str(path))
