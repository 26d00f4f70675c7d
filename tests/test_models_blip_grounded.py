"""BLIP's image-grounded text paths (ITM through the fusion encoder, the teacher-forced caption
decoder, beam search) against transformers' own forward and generate, and calibration inputs
that reach every BLIP layer."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_tiny import random_images, save_tiny_blip
from rcc.compression.calibration import CalibrationData, collect_input_stats
from rcc.compression.layers import unfuse
from rcc.models.hf_blip import load_hf_blip

# Tiny models on a loaded 2-core machine: one thread each is several times faster.
pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["a photo of a cat", "two dogs sitting on the red car", "a bird"]
# Pair texts whose padded length (24 words + [CLS] + [SEP] = 26) equals the tiny vision tower's
# 26 tokens (25 patches + CLS), so a text padding mask could be mistaken for one over image rows.
LONG = " ".join(["cat"] * 24)
PAIRS = (LONG, "a dog", "two red birds")


@pytest.fixture(scope="module")
def itm(tmp_path_factory):
    path = save_tiny_blip(tmp_path_factory.mktemp("itm"), "retrieval")
    return load_hf_blip(f"hf-blip:{path}", str(path))


@pytest.fixture(scope="module")
def cap(tmp_path_factory):
    path = save_tiny_blip(tmp_path_factory.mktemp("cap"), "caption")
    return load_hf_blip(f"hf-blip:{path}", str(path))


def test_capabilities_of_both_classes(itm, cap):
    assert (itm.grounds_text, itm.can_match, itm.can_caption, itm.embeds_text) == (True, True, False, True)
    assert (cap.grounds_text, cap.can_match, cap.can_caption, cap.embeds_text) == (True, False, True, False)
    with pytest.raises(Exception, match="image-text matching head"):
        cap.match_logits(cap.image_states(cap.preprocess_batch(random_images(1))), cap.tokenize(["a cat"]))


def test_itm_logits_are_transformers_itm_head(itm):
    pixels = itm.preprocess_batch(random_images(3, seed=4))
    tokens = itm.tokenize(TEXTS)
    with torch.no_grad():
        ours = itm.match_logits(itm.image_states(pixels), tokens)
        theirs = itm.module(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                            pixel_values=pixels, use_itm_head=True).itm_score
        itc = itm.module(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                         pixel_values=pixels, use_itm_head=False).itm_score
    assert ours.shape == (3, 2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    # The image embedding taken from the states is ITC's (transformers' use_itm_head=False).
    with torch.no_grad():
        image = torch.nn.functional.normalize(itm.image_embedding(itm.image_states(pixels)), dim=-1)
        text = torch.nn.functional.normalize(itm.encode_text(tokens), dim=-1)
    torch.testing.assert_close(image @ text.t(), itc, rtol=0, atol=1e-6)


def test_teacher_forcing_starts_with_bos_as_generate_does(cap):
    pixels = cap.preprocess_batch(random_images(2, seed=5))
    tokens = cap.grounded_tokens(TEXTS[:2])
    bos = cap.module.config.text_config.bos_token_id
    assert tokens["input_ids"][:, 0].tolist() == [bos, bos]
    assert tokens["input_ids"][:, 1:].tolist() == cap.tokenize(TEXTS[:2])["input_ids"][:, 1:].tolist()
    with torch.no_grad():
        ours = cap.ground_text(cap.image_states(pixels), tokens)
        theirs = cap.module(pixel_values=pixels, input_ids=tokens["input_ids"],
                            attention_mask=tokens["attention_mask"]).logits
        generated = cap.module.generate(pixel_values=pixels, max_new_tokens=1, do_sample=False)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    # Greedy decoding's first word is the argmax after bos, whatever caption is forced after it.
    assert generated[:, 0].tolist() == [bos, bos]
    assert generated[:, 1].tolist() == ours[:, 0].argmax(-1).tolist()


def test_beam_search_is_transformers_generate_with_beams(cap):
    pixels = cap.preprocess_batch(random_images(2, seed=6))
    greedy = cap.generate_captions(pixels, max_new_tokens=8)
    beams = cap.generate_captions(pixels, max_new_tokens=8, num_beams=3)
    with torch.no_grad():
        ids = cap.module.generate(pixel_values=pixels, max_new_tokens=8, num_beams=3, do_sample=False)
    assert beams == [t.strip() for t in cap.tokenizer.batch_decode(ids, skip_special_tokens=True)]
    assert beams != greedy  # this tiny model's best beam is not its greedy path


def _manual_inputs(module, path: str, run) -> list[torch.Tensor]:
    seen = []
    handle = module.get_submodule(path).register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen


def _unfused(model):
    """A copy with the vision tower's fused qkv split into q, k, v Linears, as every stage does first."""
    model = copy.deepcopy(model)
    unfuse(model.module, model.layers())
    return model


def _stats_reaching_every_layer(model, tower: str, images):
    """Calibration statistics of every layer with pairs; without pairs, none reach ``tower``."""
    layers = model.layers()
    without = collect_input_stats(model, layers, CalibrationData(images=images, texts=tuple(TEXTS)))
    assert not any(layer.tower == tower for layer in layers if layer.name in without)
    stats = collect_input_stats(model, layers, CalibrationData(images=images, texts=tuple(TEXTS), pair_texts=PAIRS))
    assert {layer.name for layer in layers} == set(stats)
    return stats


def test_calibration_pairs_reach_every_retrieval_layer_with_the_right_rows(itm):
    itm = _unfused(itm)
    images = random_images(3, seed=7)
    stats = _stats_reaching_every_layer(itm, "fusion", images)

    tokens = itm.tokenize(PAIRS)
    assert tokens["input_ids"].shape[1] == 26 and int(tokens["attention_mask"].sum()) < 3 * 26
    pixels = itm.preprocess_batch(images)
    run = lambda: itm.module(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],  # noqa: E731
                             pixel_values=pixels, use_itm_head=True)
    real = tokens["attention_mask"].reshape(-1).bool()
    # Cross-attention keys read every image token of every pair: 3 × 26 rows, none dropped.
    key = "text_encoder.encoder.layer.1.crossattention.self.key"
    x = _manual_inputs(itm.module, key, run)[0].reshape(-1, 24)
    assert stats[key].count == 3 * 26
    torch.testing.assert_close(stats[key].gram, x.t() @ x, rtol=1e-5, atol=1e-5)
    # Cross-attention queries read the text tokens: padding rows left out.
    query = "text_encoder.encoder.layer.1.crossattention.self.query"
    x = _manual_inputs(itm.module, query, run)[0].reshape(-1, 32)[real]
    assert stats[query].count == int(real.sum())
    torch.testing.assert_close(stats[query].sq_norms, (x * x).sum(0), rtol=1e-5, atol=1e-5)
    # The text tower's own layers see the unimodal texts plus the grounded pairs.
    mlp = "text_encoder.encoder.layer.0.intermediate.dense"
    unimodal = int(itm.tokenize(TEXTS)["attention_mask"].sum())
    assert stats[mlp].count == unimodal + int(real.sum())
    # Vision layers are counted once per image although two paths use the image states.
    assert stats["vision_model.encoder.layers.0.mlp.fc1"].count == 3 * 26


def test_calibration_pairs_teacher_force_every_decoder_layer(cap):
    cap = _unfused(cap)
    images = random_images(3, seed=8)
    stats = _stats_reaching_every_layer(cap, "decoder", images)

    tokens = cap.grounded_tokens(PAIRS)
    pixels = cap.preprocess_batch(images)
    run = lambda: cap.module(pixel_values=pixels, input_ids=tokens["input_ids"],  # noqa: E731
                             attention_mask=tokens["attention_mask"])
    real = tokens["attention_mask"].reshape(-1).bool()
    for path, width in (("text_decoder.bert.encoder.layer.0.attention.self.query", 32),
                        ("text_decoder.cls.predictions.transform.dense", 32)):
        x = _manual_inputs(cap.module, path, run)[0].reshape(-1, width)[real]
        assert stats[path].count == int(real.sum())
        torch.testing.assert_close(stats[path].gram, x.t() @ x, rtol=1e-5, atol=1e-5)
    value = "text_decoder.bert.encoder.layer.0.crossattention.self.value"
    assert stats[value].count == 3 * 26


def test_pair_texts_must_match_the_images():
    with pytest.raises(ValueError, match="2 texts for 3 images"):
        CalibrationData(images=random_images(3), texts=(), pair_texts=("a", "b"))
