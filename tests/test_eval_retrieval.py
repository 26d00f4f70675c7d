"""Retrieval recall@k: hand-worked score matrices, properties, and the batched evaluator."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from rcc.data.types import CaptionDataset
from rcc.errors import Cancelled, EvalError
from rcc.eval.retrieval import RetrievalResult, evaluate_retrieval, flatten_captions, retrieval_recall
from rcc.models.adapter import VLModel


def test_one_caption_per_image_by_hand():
    # Rows are images, columns texts; text t describes image t.
    scores = torch.tensor([
        [0.9, 0.1, 0.3],
        [0.2, 0.5, 0.8],
        [0.4, 0.6, 0.7],
    ])
    # text→image (rank each column):
    #   t0: img0 .9 > img2 .4 > img1 .2  → rank 1
    #   t1: img2 .6 > img1 .5 > img0 .1  → rank 2
    #   t2: img1 .8 > img2 .7 > img0 .3  → rank 2
    #   R@1 = 1/3, R@2 = 3/3, R@5 (clamped to 3 images) = 1
    # image→text (rank each row):
    #   img0: t0 .9 first → rank 1
    #   img1: t2 .8 > t1 .5 → rank 2
    #   img2: t2 .7 first → rank 1
    #   R@1 = 2/3, R@2 = 1, R@5 = 1
    result = retrieval_recall(scores, [0, 1, 2], ks=(1, 2, 5))
    assert result.ks == (1, 2, 5)
    assert result.text_to_image == pytest.approx((1 / 3, 1.0, 1.0))
    assert result.image_to_text == pytest.approx((2 / 3, 1.0, 1.0))
    assert result.recall("text_to_image", 2) == pytest.approx(1.0)
    assert (result.n_images, result.n_texts) == (3, 3)


def test_several_captions_only_second_ranks_high():
    # Texts t0, t1 describe img0; t2, t3 describe img1.
    scores = torch.tensor([
        #  t0    t1    t2    t3
        [0.10, 0.90, 0.50, 0.20],  # img0
        [0.85, 0.20, 0.60, 0.70],  # img1
    ])
    # image→text:
    #   img0: t1 .9 > t2 .5 > t3 .2 > t0 .1 — its first caption is last, its second is first → hit@1
    #   img1: t0 .85 (img0's) > t3 .7 (own) → miss@1, hit@2
    #   R@1 = 1/2, R@2 = 1, R@10 (clamped to 4 texts) = 1
    # text→image:
    #   t0: img1 .85 > img0 .1 → rank 2;  t1: img0 .9 → 1;  t2: img1 .6 → 1;  t3: img1 .7 → 1
    #   R@1 = 3/4, R@2 = 1, R@10 (clamped to 2 images) = 1
    result = retrieval_recall(scores, [0, 0, 1, 1], ks=(1, 2, 10))
    assert result.image_to_text == pytest.approx((0.5, 1.0, 1.0))
    assert result.text_to_image == pytest.approx((0.75, 1.0, 1.0))
    assert result.as_dict() == {
        "n_images": 2, "n_texts": 4,
        "text_to_image_recall@1": pytest.approx(0.75),
        "text_to_image_recall@2": pytest.approx(1.0),
        "text_to_image_recall@10": pytest.approx(1.0),
        "image_to_text_recall@1": pytest.approx(0.5),
        "image_to_text_recall@2": pytest.approx(1.0),
        "image_to_text_recall@10": pytest.approx(1.0),
    }


def test_image_without_captions_never_hits():
    # img1 has no caption, so it can never retrieve one of its own: image→text ≤ 1/2 at any k.
    scores = torch.tensor([[0.9, 0.8], [0.1, 0.2]])
    result = retrieval_recall(scores, [0, 0], ks=(1, 2))
    assert result.image_to_text == pytest.approx((0.5, 0.5))
    assert result.text_to_image == pytest.approx((1.0, 1.0))


@pytest.mark.parametrize(
    "scores, owner, ks, fragment",
    [
        (torch.zeros(3), [0, 1, 2], (1,), "2-D"),
        (torch.zeros(2, 3), [0, 1], (1,), "one per text"),
        (torch.zeros(2, 3), [0, 1, 2], (1,), "outside 0..1"),
        (torch.zeros(2, 3), [0, 1, 1], (0, 1), "positive"),
        (torch.zeros(0, 3), [], (1,), "at least one image"),
    ],
)
def test_bad_inputs_name_the_problem(scores, owner, ks, fragment):
    with pytest.raises(EvalError, match=fragment):
        retrieval_recall(scores, owner, ks=ks)


@st.composite
def score_problems(draw):
    n_images = draw(st.integers(1, 6))
    per_image = draw(st.lists(st.integers(1, 3), min_size=n_images, max_size=n_images))
    owner = [i for i, count in enumerate(per_image) for _ in range(count)]
    # A small value set makes ties common, which is where monotonicity could break.
    values = draw(st.lists(st.sampled_from([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0]),
                           min_size=n_images * len(owner), max_size=n_images * len(owner)))
    return torch.tensor(values).reshape(n_images, len(owner)), owner


@settings(max_examples=60, deadline=None)
@given(score_problems())
def test_recall_is_monotone_in_k_and_one_at_n(problem):
    scores, owner = problem
    n_images, n_texts = scores.shape
    ks = tuple(range(1, max(n_images, n_texts) + 2))
    result = retrieval_recall(scores, owner, ks=ks)
    for values in (result.text_to_image, result.image_to_text):
        assert all(a <= b for a, b in zip(values, values[1:]))
        assert all(0.0 <= v <= 1.0 for v in values)
    assert result.recall("text_to_image", n_images) == 1.0
    assert result.recall("image_to_text", n_texts) == 1.0


# -- the batched evaluator on a tiny fake model ---------------------------------------------


class _Images:
    def __init__(self, images):
        self.images = images
        self.identity = "fake-images"

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


class FakeRetrievalModel(VLModel):
    """Image embedding = W_img · (mean RGB); text embedding = mean of byte embeddings."""

    family = "fake"

    def __init__(self):
        torch.manual_seed(0)
        module = nn.Module()
        module.image_proj = nn.Linear(3, 8, bias=False)
        module.text_embed = nn.Embedding(256, 8)
        super().__init__("fake-retrieval", module)

    def tokenize(self, texts):
        ids = torch.zeros(len(texts), 24, dtype=torch.long)
        mask = torch.zeros(len(texts), 24, dtype=torch.long)
        for row, text in enumerate(texts):
            data = list(text.encode())[:24]
            ids[row, :len(data)] = torch.tensor(data)
            mask[row, :len(data)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def preprocess(self, image):
        return torch.tensor(list(image.getdata()), dtype=torch.float32).t().reshape(3, *image.size[::-1]) / 255

    def encode_image(self, pixels):
        return self.module.image_proj(pixels.mean(dim=(2, 3)))

    def encode_text(self, tokens):
        emb = self.module.text_embed(tokens["input_ids"])
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        return (emb * mask).sum(1) / mask.sum(1)

    def layers(self):
        return []

    def tower_of_param(self, name):
        return None


def _dataset():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 200, 0), (0, 90, 200), (30, 30, 30), (250, 250, 250)]
    images = [Image.new("RGB", (4, 3), c) for c in colours]
    captions = (
        ("a red square",), ("green", "a green thing"), ("blue box", "bright blue", "deep blue sea"),
        ("yellow",), ("teal-ish", "sky"), ("dark", "night"), ("white wall",),
    )
    return CaptionDataset(spec="fake", split="test", images=_Images(images), captions=captions)


def _naive_recall(scores, owner, k):
    """Loop-based reference: ranks by sorting, no topk."""
    n_images, n_texts = scores.shape
    t2i = sum(
        owner[t] in sorted(range(n_images), key=lambda i: -scores[i, t].item())[:k] for t in range(n_texts)
    ) / n_texts
    i2t = sum(
        any(owner[t] == i for t in sorted(range(n_texts), key=lambda t: -scores[i, t].item())[:k])
        for i in range(n_images)
    ) / n_images
    return t2i, i2t


def test_evaluate_retrieval_matches_independent_computation():
    model, dataset = FakeRetrievalModel(), _dataset()
    calls = []
    result = evaluate_retrieval(model, dataset, batch_size=3, progress=lambda d, t, w: calls.append((d, t, w)))

    texts, owner = flatten_captions(dataset)
    assert owner == [0, 1, 1, 2, 2, 2, 3, 4, 4, 5, 5, 6]
    with torch.no_grad():
        img = torch.stack([
            model.module.image_proj(model.preprocess(dataset.images[i]).mean(dim=(1, 2)))
            for i in range(len(dataset.images))
        ])
        txt = torch.stack([model.module.text_embed(torch.tensor(list(t.encode()))).mean(0) for t in texts])
    img = img / img.norm(dim=1, keepdim=True)
    txt = txt / txt.norm(dim=1, keepdim=True)
    scores = img @ txt.t()
    for k in (1, 5, 10):
        t2i, i2t = _naive_recall(scores, owner, k)
        assert result.recall("text_to_image", k) == pytest.approx(t2i)
        assert result.recall("image_to_text", k) == pytest.approx(i2t)
    assert isinstance(result, RetrievalResult)
    # 7 images in batches of 3, then 12 texts in batches of 3.
    assert calls == [(3, 7, "images"), (6, 7, "images"), (7, 7, "images"),
                     (3, 12, "texts"), (6, 12, "texts"), (9, 12, "texts"), (12, 12, "texts")]


def test_evaluate_retrieval_cancels_between_batches():
    seen = []

    def cancel():
        seen.append(1)
        return len(seen) > 2

    with pytest.raises(Cancelled):
        evaluate_retrieval(FakeRetrievalModel(), _dataset(), batch_size=2, cancel=cancel)
    assert len(seen) == 3


def test_evaluate_retrieval_refuses_a_model_without_retrieval():
    model = FakeRetrievalModel()
    model.tasks = frozenset({"caption"})
    with pytest.raises(EvalError, match="cannot do retrieval"):
        evaluate_retrieval(model, _dataset())
