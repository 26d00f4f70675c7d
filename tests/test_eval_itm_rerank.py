"""Retrieval as BLIP evaluates it: ITC top-k candidates re-scored by the ITM head, by hand and on a
tiny BLIP against an independent computation with transformers' own forward; both reported."""

from __future__ import annotations

import json

import pytest
import torch

from caption_data import save_tiny_karpathy
from hf_tiny import save_tiny_blip, save_tiny_clip, sharpen_blip_heads
from rcc.cli.main import main
from rcc.data.registry import load_dataset
from rcc.errors import EvalError
from rcc.eval.itm_rerank import candidate_pairs, itm_rerank, reranked_scores
from rcc.eval.retrieval import evaluate_retrieval, flatten_captions, retrieval_recall
from rcc.eval.suite import primary_metric, run_eval
from rcc.models.hf_blip import load_hf_blip


# Tiny models on a loaded 2-core machine: one thread each is several times faster.
pytestmark = pytest.mark.usefixtures("one_thread")

def test_reranking_by_hand():
    # ITC ranks a wrong candidate first for t0 and for img0; ITM puts the right ones on top.
    itc = torch.tensor([[0.50, 0.6, 0.1],
                        [0.55, 0.7, 0.3]])
    owner = [0, 1, 1]  # t0 → img0, t1 and t2 → img1
    top_texts, top_images, keys = candidate_pairs(itc, k=2)
    assert top_texts.tolist() == [[1, 0], [1, 0]]
    assert top_images.tolist() == [[1, 0], [1, 0], [1, 0]]
    # Distinct pairs over both directions: i2t {(0,1),(0,0),(1,1),(1,0)} ∪ t2i adds (1,2), (0,2).
    assert keys.tolist() == [0, 1, 2, 3, 4, 5]
    match = torch.tensor([4.0, -1.0, 0.0, -2.0, 3.0, 1.0])  # m(i, t) at key i·3 + t
    scores = reranked_scores(itc, top_texts, top_images, keys, match, k=2)
    assert scores.pairs == 6
    # Candidates score m + s; the rest floor + s, floor = lowest candidate (−2 + 0.55) − 3.
    floor = -1.45 - 3
    expected_i2t = [[4.5, -0.4, floor + 0.1], [-1.45, 3.7, floor + 0.3]]
    expected_t2i = [[4.5, -0.4, 0.1], [-1.45, 3.7, 1.3]]
    for got, want in zip(scores.image_to_text.tolist() + scores.text_to_image.tolist(), expected_i2t + expected_t2i):
        assert got == pytest.approx(want)
    itc_recall = retrieval_recall(itc, owner, ks=(1,))
    assert (itc_recall.text_to_image, itc_recall.image_to_text) == (pytest.approx((2 / 3,)), (0.5,))
    t2i = retrieval_recall(scores.text_to_image, owner, ks=(1,)).text_to_image
    i2t = retrieval_recall(scores.image_to_text, owner, ks=(1,)).image_to_text
    assert (t2i, i2t) == ((1.0,), (1.0,))


def test_beyond_k_the_itc_order_is_kept():
    itc = torch.tensor([[0.9, 0.5, 0.4, 0.3]])
    top_texts, top_images, keys = candidate_pairs(itc, k=1)
    scores = reranked_scores(itc, top_texts, top_images, keys, torch.full((len(keys),), -50.0), k=1)
    # The one candidate (−50 + 0.9) still outranks the rest, which keep their ITC order.
    assert scores.image_to_text[0].argsort(descending=True).tolist() == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def blip_and_data(tmp_path_factory):
    path = save_tiny_blip(tmp_path_factory.mktemp("itm"), "retrieval")
    data = save_tiny_karpathy(tmp_path_factory.mktemp("flickr"), {"test": 6})
    model = load_hf_blip(f"hf-blip:{path}", str(path))
    sharpen_blip_heads(model)  # a random ITM head scores every pair alike: re-ranking would move nothing
    return model, load_dataset(f"flickr30k-karpathy:{data}", "test"), path, data


def _independent_itm_recall(model, dataset, k: int):
    """BLIP's evaluation written out with transformers' forward: ITC from use_itm_head=False, the
    ITM logit of each top-k candidate from use_itm_head=True, ranks by logit + ITC."""
    texts, owner = flatten_captions(dataset)
    pixels = model.preprocess_batch([dataset.images[i] for i in range(len(dataset.images))])
    tokens = model.tokenize(texts)
    with torch.no_grad():
        itc = torch.stack([model.module(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                                        pixel_values=pixels[i:i + 1], use_itm_head=False).itm_score[0]
                           for i in range(len(pixels))])

        def best(images: list[int], texts_: list[int]) -> int:
            """Index of the pair (images[j], texts_[j]) with the highest ITM logit + ITC."""
            out = model.module(input_ids=tokens["input_ids"][texts_], attention_mask=tokens["attention_mask"][texts_],
                               pixel_values=pixels[images], use_itm_head=True).itm_score[:, 1]
            return int((out + itc[images, texts_]).argmax())

        i2t_hits = []
        for i in range(len(pixels)):
            candidates = itc[i].topk(k).indices.tolist()
            i2t_hits.append(owner[candidates[best([i] * k, candidates)]] == i)
        t2i_hits = []
        for t in range(len(texts)):
            candidates = itc[:, t].topk(k).indices.tolist()
            t2i_hits.append(candidates[best(candidates, [t] * k)] == owner[t])
    return itc, sum(t2i_hits) / len(t2i_hits), sum(i2t_hits) / len(i2t_hits)


def test_itm_recall_matches_blips_evaluation_and_itc_stays_clip_benchmarks(blip_and_data):
    model, dataset, _, _ = blip_and_data
    plain = evaluate_retrieval(model, dataset, ks=(1, 5))
    reranked = evaluate_retrieval(model, dataset, ks=(1, 5), itm_k=3)
    assert plain.itm is None and "itm_k" not in plain.as_dict()
    # The ITC figures do not move when ITM re-ranking is added.
    assert (reranked.text_to_image, reranked.image_to_text) == (plain.text_to_image, plain.image_to_text)
    itc, t2i, i2t = _independent_itm_recall(model, dataset, k=3)
    texts, owner = flatten_captions(dataset)
    itc_recall = retrieval_recall(itc, owner, ks=(1, 5))
    assert plain.text_to_image == pytest.approx(itc_recall.text_to_image, abs=1e-6)
    assert reranked.itm.text_to_image[0] == pytest.approx(t2i)
    assert reranked.itm.image_to_text[0] == pytest.approx(i2t)
    # Re-ranking moved the first-ranked image of the texts here (to another image of equal recall).
    scores = itm_rerank(model, dataset.images, texts, itc, k=3)
    assert scores.text_to_image.argmax(0).tolist() != itc.argmax(0).tolist()
    shown = reranked.as_dict()
    assert shown["itm_k"] == 3 and shown["itm_text_to_image_recall@1"] == reranked.itm.text_to_image[0]
    assert 0 < shown["itm_pairs"] <= 6 * 3 + 12 * 3


def test_run_eval_reranks_blip_by_default_and_its_primary_is_the_reranked_recall(blip_and_data):
    model, dataset, _, _ = blip_and_data
    report = run_eval(model, dataset)
    metrics = report.metrics
    assert metrics["itm_k"] == 16  # every candidate of this 6-image set
    assert primary_metric(report) == pytest.approx(
        (metrics["itm_text_to_image_recall@1"] + metrics["itm_image_to_text_recall@1"]) / 2)
    itc_only = run_eval(model, dataset, itm_k=0)
    assert "itm_k" not in itc_only.metrics
    assert primary_metric(itc_only) == pytest.approx(
        (metrics["text_to_image_recall@1"] + metrics["image_to_text_recall@1"]) / 2)


def test_itm_k_is_refused_where_it_cannot_apply(blip_and_data, tmp_path):
    model, dataset, _, _ = blip_and_data
    with pytest.raises(EvalError, match="itm_k -1 is invalid"):
        evaluate_retrieval(model, dataset, itm_k=-1)
    from rcc.models.hf_clip import load_hf_clip

    clip_dir = save_tiny_clip(tmp_path / "clip")
    clip = load_hf_clip(f"hf:{clip_dir}", str(clip_dir))
    with pytest.raises(EvalError, match="no image-text matching head; allowed: itm_k 0"):
        evaluate_retrieval(clip, dataset, itm_k=4)
    assert "itm_k" not in run_eval(clip, dataset).metrics  # CLIP: ITC alone by default


def test_cli_eval_reports_itc_and_itm_and_refuses_a_bad_k(blip_and_data, tmp_path, capsys):
    _, _, model_dir, data = blip_and_data
    out = tmp_path / "eval.json"
    args = ["eval", "--model", f"hf-blip:{model_dir}", "--data", f"flickr30k-karpathy:{data}", "--split", "test",
            "--device", "cpu"]
    assert main(args + ["--itm-k", "2", "--json", str(out), "--no-cache"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["itm_k"] == 2 and "itm_image_to_text_recall@10" in metrics and "text_to_image_recall@1" in metrics
    printed = capsys.readouterr().out
    assert "itm_text_to_image_recall@1" in printed and "text_to_image_recall@1" in printed
    assert main(args + ["--itm-k", "-3"]) == 2
    assert "--itm-k -3 is invalid" in capsys.readouterr().err
