"""`rcc-tui plan` and `rcc-tui compress` in-process: plans, end-to-end runs, reloads, user errors."""

import json

import pytest

from hf_tiny import random_images, save_tiny_clip
from rcc.cli.main import main
from rcc.compression.layers import get_mask, layer_form, stored_parameters
from rcc.compression.plan import load_plan
from rcc.compression.structure import MANIFEST, load_compressed
from rcc.models.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    folder = tmp_path_factory.mktemp("captions")
    rows = ["image,caption"]
    for i, image in enumerate(random_images(6, seed=1)):
        image.save(folder / f"img{i}.png")
        rows += [f"img{i}.png,a photo of the red dog {i}", f"img{i}.png,the small cat number {i}"]
    (folder / "captions.csv").write_text("\n".join(rows) + "\n")
    return f"captions-csv:{folder / 'captions.csv'}"


def _half(params: int) -> int:
    return params - round(0.5 * params)  # kept after magnitude pruning at 0.5, as l1_unstructured counts


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert err.startswith("rcc-tui: error: ") and "\n" not in err, err
    for word in words:
        assert word in err, err
    return err


def test_plan_writes_a_plan_whose_summary_matches(clip_dir, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--model", f"hf:{clip_dir}", "--sparsity", "0.5", "--tower", "text", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    raw = json.loads(out.read_text())
    assert raw["version"] == 1 and raw["budget"] is None and raw["seed"] == 0
    assert raw["rules"] == [{"tower": "text", "settings": {"sparsity": 0.5, "method": "magnitude",
                                                           "pattern": "unstructured", "rank": None,
                                                           "correction": False}}]
    text = [layer for layer in load_model(f"hf:{clip_dir}").layers() if layer.tower == "text"]
    # 2 blocks × (4 · 32·32 attention + 2 · 37·32 MLP) + the 16 × 32 text projection.
    before = sum(layer.params for layer in text)
    after = sum(_half(layer.params) for layer in text)
    assert (len(text), before, after) == (13, 13440, 6720)
    assert f"{before:,}" in printed and f"{after:,}" in printed and "0.5000" in printed
    assert str(out) in printed.replace("\n", "")
    plan = load_plan(out)
    assert plan.rules[0].tower == "text" and plan.rules[0].settings["sparsity"] == 0.5


def test_compress_end_to_end_on_a_tiny_hf_clip(clip_dir, captions, tmp_path, capsys):
    plan, out, report = tmp_path / "plan.json", tmp_path / "out", tmp_path / "report.json"
    assert main(["plan", "--model", f"hf:{clip_dir}", "--sparsity", "0.5", "--tower", "text", "--out", str(plan)]) == 0
    # Random weights: any metric is noise, so threshold 0 keeps every attempt.
    assert main(["compress", "--model", f"hf:{clip_dir}", "--plan", str(plan), "--data", captions,
                 "--threshold", "0", "--out", str(out), "--json", str(report), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "50.0% removed" in printed
    result = json.loads(report.read_text())
    cascade = result["cascade"]
    # The cascade checked val; the report's test numbers read test: two disjoint splits, each named.
    assert (result["eval_split"], result["test_split"], result["data"]) == ("val", "test", captions)
    assert result["metrics"]["val/primary"] == {"dense": cascade["dense_metric"], "compressed": cascade["final_metric"]}
    assert result["metrics"]["test/primary"] == {"dense": result["test_dense"], "compressed": result["test_compressed"]}
    assert result["splits"]["layout"] == "train 70 % / val 10 % / test 20 % of the file's images (seed 0)"
    assert "metric on val (dense → compressed)" in printed and "metric on test" in printed
    assert (cascade["params_before"], cascade["params_after"]) == (13440, 6720)
    assert cascade["removed_fraction"] == 0.5
    assert cascade["skipped"] == [] and all(a["accepted"] for a in cascade["attempts"])
    # The plan asks for no rank, correction or bits: those stages run and change nothing.
    assert [(a["stage"], a["changed"] > 0) for a in cascade["attempts"]] == [
        ("dare", True), ("nullu", False), ("alphaedit", False), ("quant", False)]
    assert cascade["attempts"][0]["changed"] == 13
    assert 0.0 <= result["test_compressed"] <= 1.0 and 0.0 <= result["test_dense"] <= 1.0

    loaded = load_compressed(out)
    assert loaded.spec == f"hf:{clip_dir}"
    text = [layer for layer in loaded.layers() if layer.tower == "text"]
    assert all(layer_form(loaded.module, layer) == "masked" for layer in text)
    assert sum(stored_parameters(loaded.module, layer) for layer in text) == 6720
    assert all(layer_form(loaded.module, layer) == "dense" for layer in loaded.layers() if layer.tower == "vision")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["plan"] == str(plan) and manifest["cascade"]["removed_fraction"] == 0.5


def test_compress_with_a_rank_writes_factorised_layers_that_reload(clip_dir, captions, tmp_path):
    plan, out, report = tmp_path / "plan.json", tmp_path / "out", tmp_path / "report.json"
    assert main(["plan", "--model", f"hf:{clip_dir}", "--rank", "8", "--tower", "vision", "--kind", "mlp_in",
                 "--out", str(plan)]) == 0
    assert main(["compress", "--model", f"hf:{clip_dir}", "--plan", str(plan), "--data", captions,
                 "--threshold", "0", "--stages", "nullu", "--out", str(out), "--json", str(report)]) == 0
    cascade = json.loads(report.read_text())["cascade"]
    # Two vision fc1 layers, 37 × 32: 1184 each → 8 · (37 + 32) = 552.
    assert (cascade["params_before"], cascade["params_after"]) == (2 * 1184, 2 * 552)
    assert cascade["model_params_before"] - cascade["model_params_after"] == 2 * (1184 - 552)
    loaded = load_compressed(out)
    fc1 = [layer for layer in loaded.layers() if layer.tower == "vision" and layer.kind == "mlp_in"]
    assert [layer_form(loaded.module, layer) for layer in fc1] == ["factorised", "factorised"]
    assert loaded.num_parameters() == cascade["model_params_after"]


@pytest.mark.slow
def test_compress_rcc_mini_text_mlps_keep_digits_accuracy(tmp_path):
    # The text tower's MLP inputs (6 × 1536 × 384, a quarter of the tower): the whole tower costs
    # ~4× more, nearly all in AlphaEdit's masked solves of the 1536-wide mlp_out layers, which
    # tests/test_compression_alphaedit.py checks against the direct solve.
    plan, out, report = tmp_path / "plan.json", tmp_path / "out", tmp_path / "report.json"
    assert main(["plan", "--sparsity", "0.5", "--method", "wanda", "--correction", "--tower", "text",
                 "--kind", "mlp_in", "--out", str(plan)]) == 0
    assert main(["compress", "--plan", str(plan), "--out", str(out), "--json", str(report), "--device", "cpu"]) == 0
    result = json.loads(report.read_text())
    cascade = result["cascade"]
    assert (result["model"], result["data"], result["test_split"]) == ("rcc-mini", "digits", "test")
    assert result["test_compressed"] >= 0.9
    assert cascade["removed_fraction"] == pytest.approx(0.5, abs=1e-6)
    # DARE masked the 6 layers, Nullu had no rank to apply, AlphaEdit corrected all 6 within their masks.
    assert [(a["stage"], a["changed"], a["accepted"]) for a in cascade["attempts"]] == \
           [("dare", 6, True), ("nullu", 0, True), ("alphaedit", 6, True), ("quant", 0, True)]  # no bits planned
    model = load_model("rcc-mini")
    selected = [layer for layer in model.layers() if layer.tower == "text" and layer.kind == "mlp_in"]
    assert len(selected) == 6
    assert cascade["params_before"] == sum(layer.params for layer in selected)
    assert cascade["params_after"] == sum(_half(layer.params) for layer in selected)
    assert cascade["skipped"] == []
    loaded = load_compressed(out)
    for layer in loaded.layers():
        if layer.tower == "text" and layer.kind == "mlp_in":
            mask = get_mask(loaded.module, layer)
            assert int((~mask).sum()) == round(0.5 * layer.params), layer.name
            # Wanda prunes per output row: every row loses half of its inputs.
            assert (mask.sum(dim=1) == layer.shape[1] - round(0.5 * layer.shape[1])).all(), layer.name


def test_compress_refuses_a_missing_plan_file(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    assert main(["compress", "--plan", str(missing), "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, str(missing), "does not exist")
    assert not (tmp_path / "out").exists()


def test_compress_refuses_a_plan_rule_that_matches_no_layer(clip_dir, captions, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "rules": [{"name": "vision_model.nothing.*",
                                                         "settings": {"sparsity": 0.5}}]}))
    assert main(["compress", "--model", f"hf:{clip_dir}", "--plan", str(plan), "--data", captions,
                 "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, "rules[0]", "'vision_model.nothing.*'", "matches no layer")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, words", [
    (["--stages", "dare,bogus"], ["'bogus'", "dare, nullu, alphaedit"]),
    (["--threshold", "1.5"], ["threshold 1.5", "0 ≤ threshold ≤ 1"]),
    (["--max-attempts", "0"], ["max_attempts 0"]),
    (["--schedule", "fast"], ["'fast'", "linear, cosine, exponential, adaptive"]),
])
def test_compress_refuses_bad_settings_before_loading_anything(args, words, tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "rules": [{"tower": "text", "settings": {"sparsity": 0.5}}]}))
    assert main(["compress", "--model", "hf:/no/such/model", "--plan", str(plan),
                 "--out", str(tmp_path / "out"), *args]) == 2
    _one_line_error(capsys, *words)  # the bad setting is named, not the (also missing) model
    assert not (tmp_path / "out").exists()


def test_plan_bits_8_and_compress_write_int8_layers_that_reload(clip_dir, captions, tmp_path, capsys):
    from rcc.compression.quantized_layers import QuantizedLinear

    plan, out, report = tmp_path / "plan.json", tmp_path / "out", tmp_path / "report.json"
    assert main(["plan", "--model", f"hf:{clip_dir}", "--bits", "8", "--tower", "vision", "--out", str(plan)]) == 0
    assert json.loads(plan.read_text())["rules"][0]["settings"]["bits"] == 8
    assert main(["compress", "--model", f"hf:{clip_dir}", "--plan", str(plan), "--data", captions,
                 "--threshold", "0", "--quant-method", "rtn", "--out", str(out), "--json", str(report)]) == 0
    cascade = json.loads(report.read_text())["cascade"]
    assert [(a["stage"], a["changed"]) for a in cascade["attempts"]][-1] == ("quant", 14)  # 12 Linears, proj, table
    loaded = load_compressed(out)
    fc1 = loaded.module.vision_model.encoder.layers[0].mlp.fc1
    assert isinstance(fc1, QuantizedLinear) and fc1.weight.dtype.itemsize == 1


@pytest.mark.parametrize("args, words", [
    (["--bits", "4"], ["bits 4", "8, or null"]),
    (["--sparsity", "1.2"], ["sparsity 1.2"]),
    (["--rank", "auto"], ["'auto' needs a budget"]),
    (["--method", "random"], ["'random'", "dare"]),
])
def test_plan_refuses_bad_settings(clip_dir, args, words, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--model", f"hf:{clip_dir}", "--out", str(out), *args]) == 2
    _one_line_error(capsys, *words)
    assert not out.exists()
