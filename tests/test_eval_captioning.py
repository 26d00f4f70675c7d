"""Captioning scores: PTB-style tokenisation, BLEU-4 and CIDEr, and the batched evaluator."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from torch import nn

from rcc.data.types import CaptionDataset
from rcc.errors import Cancelled, EvalError
from rcc.eval.captioning import CaptioningResult, caption_scores, evaluate_captioning, ptb_tokenize
from rcc.models.adapter import VLModel


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("A dog runs on the beach.", "a dog runs on the beach"),
        ("Two men, one woman; a cat: sleeping!", "two men one woman a cat sleeping"),
        ("Is it raining?  Yes...", "is it raining yes"),
        ('A "red" (bright) sign -- stop - now', "a red bright sign stop now"),
        ("The dog's ball isn't here", "the dog 's ball is n't here"),
        ("A black-and-white photo of 3.5 cats and 1,000 dogs", "a black-and-white photo of 3.5 cats and 1,000 dogs"),
        ("It\u2019s a \u201cnice\u201d day\u2014really", "it 's a nice day really"),
        ("a man\nriding a horse", "a man riding a horse"),
        ("50% off & more", "50 % off & more"),
    ],
)
def test_tokenizer_strips_punctuation_like_ptb(text, tokens):
    assert ptb_tokenize(text) == tokens


def test_identical_captions_give_bleu4_one():
    refs = [["a man is riding a brown horse"], ["two dogs play in the snow"]]
    scores = caption_scores(["A man is riding a brown horse.", "Two dogs play in the snow!"], refs)
    assert scores.bleu4 == pytest.approx(1.0, abs=1e-6)
    assert scores.n_images == 2


def test_bleu4_by_hand():
    # cand "the cat sat on the mat" vs ref "the cat sat on a mat" (both 6 words → BP = 1):
    #   p1 = 5/6 (second "the" clipped), p2 = 3/5 (the cat, cat sat, sat on),
    #   p3 = 2/4 (the cat sat, cat sat on), p4 = 1/3 (the cat sat on)
    #   BLEU-4 = (5/6 · 3/5 · 2/4 · 1/3)^(1/4) = (1/12)^(1/4)
    scores = caption_scores(["The cat sat on the mat."], [["the cat sat on a mat"]])
    assert scores.bleu4 == pytest.approx((1 / 12) ** 0.25, rel=1e-6)


def test_bleu4_brevity_penalty_by_hand():
    # cand "the cat sat on" (c = 4) is a prefix of the ref (r = 6): all pₙ = 1, BP = e^(1 − 6/4).
    scores = caption_scores(["the cat sat on"], [["the cat sat on the mat"]])
    assert scores.bleu4 == pytest.approx(math.exp(1 - 6 / 4), rel=1e-6)


def test_cider_by_hand_on_disjoint_vocabularies():
    # Two images, each candidate equal to its only reference, no n-gram shared across images:
    # every n-gram has df = 1, so idf = log 2 for all; tf-idf vectors of cand and ref coincide,
    # cos = 1 for n = 1..4 and no length penalty → CIDEr = 10 · mean(1, 1, 1, 1) = 10.
    scores = caption_scores(
        ["red apple on table", "blue sky over sea"], [["red apple on table"], ["blue sky over sea"]]
    )
    assert scores.cider == pytest.approx(10.0)


def test_cider_of_a_single_image_is_zero():
    # idf = log(N) − log(df) = log 1 − log 1 = 0 for every n-gram of a one-image corpus.
    assert caption_scores(["a dog"], [["a dog"]]).cider == 0.0


def test_scores_match_coco_scorers_on_pretokenised_text():
    candidates = ["A man, riding a horse.", "Two dogs play in the SNOW!", "A plate of food (pasta)."]
    references = [
        ["A man rides a brown horse.", "Someone on horseback; in a field."],
        ["Dogs playing in snow.", "Two puppies run through the snow", "a dog's winter"],
        ["A plate of pasta.", "Food on a white plate"],
    ]
    res = {0: ["a man riding a horse"], 1: ["two dogs play in the snow"], 2: ["a plate of food pasta"]}
    gts = {
        0: ["a man rides a brown horse", "someone on horseback in a field"],
        1: ["dogs playing in snow", "two puppies run through the snow", "a dog 's winter"],
        2: ["a plate of pasta", "food on a white plate"],
    }
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    scores = caption_scores(candidates, references)
    assert scores.bleu4 == pytest.approx(bleu[3])
    assert scores.cider == pytest.approx(cider)
    assert 0.0 < scores.bleu4 < 1.0 and scores.cider > 0.0
    assert scores.as_dict() == {"bleu4": scores.bleu4, "cider": scores.cider, "n_images": 3}


@pytest.mark.parametrize(
    "candidates, references, fragment",
    [
        (["a"], [["a"], ["b"]], "must match"),
        ([], [], "at least one image"),
        (["a", "b"], [["a"], []], "image 1 has no reference"),
    ],
)
def test_bad_inputs_name_the_problem(candidates, references, fragment):
    with pytest.raises(EvalError, match=fragment):
        caption_scores(candidates, references)


# -- the batched evaluator on a tiny fake captioner ------------------------------------------


class _Images:
    identity = "fake-images"

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


_NAMES = {0: "a red square on a wall", 1: "a green field under the sky", 2: "a blue sea near a beach"}


class FakeCaptioner(VLModel):
    """Names the dominant colour channel of the image."""

    family = "fake"
    tasks = frozenset({"caption"})

    def __init__(self):
        module = nn.Module()
        module.scale = nn.Parameter(torch.ones(()))
        super().__init__("fake-captioner", module)
        self.batches: list[int] = []

    def tokenize(self, texts):
        raise EvalError("fake captioner has no text encoder")

    def preprocess(self, image):
        return torch.tensor(image.getpixel((0, 0)), dtype=torch.float32).reshape(3, 1, 1) / 255

    def encode_image(self, pixels):
        return pixels.flatten(1) * self.module.scale

    def encode_text(self, tokens):
        raise EvalError("fake captioner has no text encoder")

    def generate_captions(self, pixels, max_new_tokens=30, num_beams=1):
        self.beams = num_beams
        self.batches.append(pixels.shape[0])
        colours = self.encode_image(pixels).argmax(dim=1).tolist()
        return [" ".join(_NAMES[c].split()[:max_new_tokens]) for c in colours]

    def layers(self):
        return []

    def tower_of_param(self, name):
        return None


def _dataset():
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (200, 30, 30), (10, 10, 240)]
    captions = (
        ("a red square on a wall", "a red tile"),
        ("a green meadow under the sky",),
        ("the blue sea near a beach", "ocean"),
        ("a red square on a wall",),
        ("a blue sea",),
    )
    images = _Images([Image.new("RGB", (2, 2), c) for c in colours])
    return CaptionDataset(spec="fake-caps", split="test", images=images, captions=captions)


def test_evaluate_captioning_scores_the_generated_captions():
    model, dataset = FakeCaptioner(), _dataset()
    calls = []
    result = evaluate_captioning(model, dataset, batch_size=2, max_new_tokens=10,
                                 progress=lambda d, t, w: calls.append((d, t, w)))
    assert isinstance(result, CaptioningResult)
    assert model.batches == [2, 2, 1]
    assert result.captions == tuple(_NAMES[c] for c in (0, 1, 2, 0, 2))
    expected = caption_scores(list(result.captions), [list(c) for c in dataset.captions])
    assert result.scores == expected
    assert calls == [(2, 5, "captions"), (4, 5, "captions"), (5, 5, "captions")]
    shown = result.as_dict(examples=2)
    assert shown["bleu4"] == expected.bleu4 and shown["cider"] == expected.cider
    assert shown["examples"] == [
        {"generated": "a red square on a wall", "references": ["a red square on a wall", "a red tile"]},
        {"generated": "a green field under the sky", "references": ["a green meadow under the sky"]},
    ]


def test_evaluate_captioning_passes_max_new_tokens():
    result = evaluate_captioning(FakeCaptioner(), _dataset(), batch_size=8, max_new_tokens=2)
    assert all(len(c.split()) == 2 for c in result.captions)


def test_evaluate_captioning_cancels_between_batches():
    model = FakeCaptioner()
    with pytest.raises(Cancelled):
        evaluate_captioning(model, _dataset(), batch_size=2, cancel=lambda: len(model.batches) >= 1)
    assert model.batches == [2]


def test_evaluate_captioning_refuses_a_model_that_cannot_caption():
    model = FakeCaptioner()
    model.tasks = frozenset({"retrieval"})
    with pytest.raises(EvalError, match="cannot caption"):
        evaluate_captioning(model, _dataset())


def test_evaluate_captioning_passes_num_beams_and_refuses_a_bad_one():
    model = FakeCaptioner()
    evaluate_captioning(model, _dataset(), num_beams=4)
    assert model.beams == 4
    for bad in (0, -1, 2.5, True):
        with pytest.raises(EvalError, match=f"num_beams {bad!r} is invalid; allowed: an integer ≥ 1"):
            evaluate_captioning(model, _dataset(), num_beams=bad)


def test_per_image_cider_averages_to_the_corpus_cider():
    model, dataset = FakeCaptioner(), _dataset()
    scores = evaluate_captioning(model, dataset).scores
    assert len(scores.cider_per_image) == 5
    assert sum(scores.cider_per_image) / 5 == pytest.approx(scores.cider, rel=1e-12)
    assert max(scores.cider_per_image) > min(scores.cider_per_image)
