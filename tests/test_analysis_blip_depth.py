"""BLIP's fusion and decoder layers under analysis: per-example outcomes that see them (ITM
re-ranked hits and match distributions; per-image CIDEr and teacher-forced token distributions),
sensitivity scans calibrated on image–text pairs, captioning with beam search on the CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from caption_data import save_tiny_karpathy
from hf_tiny import save_tiny_blip, sharpen_blip_heads
from rcc.analysis.probe import outcome_probe
from rcc.analysis.sensitivity import ScanSetting, scan_sensitivity, select_layers
from rcc.analysis.statistics import compare_outcomes
from rcc.cli.main import main
from rcc.compression.calibration_sets import calibration_sets
from rcc.data.registry import load_dataset
from rcc.errors import RccError
from rcc.eval.per_example import example_outcomes, prediction_kl, primary_from_outcomes
from rcc.eval.suite import primary_metric, run_eval
from rcc.models.hf_blip import load_hf_blip


# Tiny models on a loaded 2-core machine: one thread each is several times faster.
pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def data_spec(tmp_path_factory) -> str:
    path = save_tiny_karpathy(tmp_path_factory.mktemp("flickr"), {"train": 8, "val": 4, "test": 2})
    return f"flickr30k-karpathy:{path}"


@pytest.fixture(scope="module")
def itm(tmp_path_factory):
    path = save_tiny_blip(tmp_path_factory.mktemp("itm"), "retrieval")
    model = load_hf_blip(f"hf-blip:{path}", str(path))
    sharpen_blip_heads(model)
    return model


@pytest.fixture(scope="module")
def cap(tmp_path_factory):
    path = save_tiny_blip(tmp_path_factory.mktemp("cap"), "caption")
    return load_hf_blip(f"hf-blip:{path}", str(path)), path


def test_retrieval_outcomes_of_blip_are_reranked_and_see_the_fusion_layers(itm, data_spec):
    dataset = load_dataset(data_spec, "val")
    dense = example_outcomes(itm, dataset)
    assert dense.itm_k == 16 and set(dense.log_probs) == {"text_to_image", "image_to_text", "match"}
    # Fixed pairs: each of the 8 texts with its own image and with the next one.
    assert dense.log_probs["match"].shape == (16, 2)
    assert primary_from_outcomes(dense) == pytest.approx(primary_metric(run_eval(itm, dataset)))
    damaged = copy.deepcopy(itm)
    with torch.no_grad():
        damaged.module.get_submodule("text_encoder.encoder.layer.1.crossattention.self.value").weight.mul_(0.2)
    moved = example_outcomes(damaged, dataset)
    # A fusion layer leaves ITC alone: only the ITM distributions move.
    for direction in ("text_to_image", "image_to_text"):
        torch.testing.assert_close(moved.log_probs[direction], dense.log_probs[direction])
    assert prediction_kl(dense, moved) > 0 and prediction_kl(dense, dense) == 0
    assert compare_outcomes(dense, moved).n == 4


def test_caption_outcomes_average_to_cider_and_bin_the_vocabulary(cap, data_spec):
    model, _ = cap
    dataset = load_dataset(data_spec, "val")
    outcomes = example_outcomes(model, dataset)
    report = run_eval(model, dataset)
    assert outcomes.task == "caption" and outcomes.n == 4
    assert primary_from_outcomes(outcomes) == pytest.approx(primary_metric(report), abs=1e-12)
    rows = outcomes.log_probs["tokens"]
    first = [refs[0] for refs in dataset.captions]
    assert rows.shape[0] == int(model.grounded_tokens(first)["attention_mask"][:, 1:].sum())
    # Each row is a distribution over the captions' token ids plus one bin for the rest.
    torch.testing.assert_close(rows.exp().sum(1), torch.ones(len(rows), dtype=rows.dtype))
    assert rows.shape[1] < len(model.tokenizer)
    with pytest.raises(RccError, match="paired tests of 'caption' outcomes are not supported"):
        compare_outcomes(outcomes, outcomes)


def test_sensitivity_scan_measures_fusion_layers_with_calibrated_svd(itm, data_spec):
    calibration, _ = calibration_sets(data_spec, per_class=2, seed=0)
    assert len(calibration.pair_texts) == len(calibration.images) == 4
    layers = select_layers(itm, names=["text_encoder.encoder.layer.0.crossattention.self.value",
                                       "text_encoder.encoder.layer.1.crossattention.output.dense"])
    before = {k: v.clone() for k, v in itm.module.state_dict().items()}
    result = scan_sensitivity(itm, ScanSetting(rank=0.25), outcome_probe(load_dataset(data_spec, "val")),
                              calibration, layers)
    assert all(torch.equal(v, before[k]) for k, v in itm.module.state_dict().items())
    for unit in result.units:
        assert unit.tower == "fusion" and unit.drift > 0, unit.name
        # The output-error proxy needs the layer's calibration inputs: they reached it.
        assert unit.proxies["output_error"] is not None and unit.proxies["wanda_mass"] is not None, unit.name


def test_sensitivity_scan_measures_decoder_layers_of_a_captioner(cap, data_spec):
    model, _ = cap
    calibration, _ = calibration_sets(data_spec, per_class=2, seed=0)
    layers = select_layers(model, names=["text_decoder.bert.encoder.layer.0.attention.self.value",
                                         "text_decoder.bert.encoder.layer.1.crossattention.self.key",
                                         "text_decoder.cls.predictions.transform.dense"])
    result = scan_sensitivity(model, ScanSetting(rank=0.25), outcome_probe(load_dataset(data_spec, "val")),
                              calibration, layers)
    assert result.task == "caption"
    for unit in result.units:
        assert unit.tower == "decoder" and unit.drift > 0, unit.name
        assert unit.proxies["output_error"] is not None, unit.name


def test_cli_captions_by_beam_search_and_refuses_zero_beams(cap, data_spec, tmp_path, capsys):
    model, path = cap
    out = tmp_path / "caption.json"
    args = ["eval", "--model", f"hf-blip:{path}", "--data", data_spec, "--split", "test", "--device", "cpu"]
    assert main(args + ["--num-beams", "3", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["task"] == "caption" and payload["num_beams"] == 3
    dataset = load_dataset(data_spec, "test")
    pixels = model.preprocess_batch([dataset.images[i] for i in range(len(dataset.images))])
    with torch.no_grad():
        ids = model.module.generate(pixel_values=pixels, max_new_tokens=30, num_beams=3, do_sample=False)
    beams = [t.strip() for t in model.tokenizer.batch_decode(ids, skip_special_tokens=True)]
    assert [example["generated"] for example in payload["examples"]] == beams
    assert "beam search, 3 beams" in " ".join(capsys.readouterr().out.split())  # the title, wrapped to the table
    assert main(args + ["--num-beams", "0"]) == 2
    assert "--num-beams 0 is invalid" in capsys.readouterr().err
