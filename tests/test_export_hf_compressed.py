"""The hf-compressed export: a compressed-tensors checkpoint that plain transformers loads in a fresh
process without rcc, with rcc's int8 values, and one-line notes for what the format cannot hold."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from hf_tiny import random_images, save_tiny_blip, save_tiny_clip
from rcc.compression.calibration import CalibrationData
from rcc.compression.cascade import CascadeConfig, run_cascade
from rcc.compression.plan import CompressionPlan, Rule
from rcc.errors import RccError
from rcc.exports import export_model
from rcc.models.registry import load_model

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

CALIBRATION = CalibrationData(images=random_images(8, seed=1),
                              texts=("a photo of a cat", "two dogs on the grass", "a red car", "a small bird"))
# Every Linear int8 (embedding tables too, by default); the MLP inputs half pruned first.
PLAN = CompressionPlan(rules=(Rule(settings={"bits": 8}), Rule(kind="mlp_in", settings={"sparsity": 0.5})))

LOAD_CLIP = """
import json, sys, torch
from transformers import CLIPModel
model = CLIPModel.from_pretrained(sys.argv[1])
data = torch.load(sys.argv[2])
with torch.no_grad():  # the first forward call decompresses (compressed-tensors' hook)
    out = model(input_ids=data["ids"], attention_mask=data["mask"], pixel_values=data["pixels"])
torch.save({"image": out.image_embeds, "text": out.text_embeds}, sys.argv[3])
print(json.dumps({"rcc": "rcc" in sys.modules, "compressed_tensors": "compressed_tensors" in sys.modules}))
"""


def _fresh_process(script: str, *args, cwd) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-I", "-c", script, *map(str, args)], capture_output=True, text=True,
                            cwd=cwd, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    save_tiny_clip(folder / "clip")
    model = load_model(f"hf:{folder / 'clip'}", device="cpu")
    run_cascade(model, PLAN, lambda m: 1.0, CALIBRATION, config=CascadeConfig(threshold=0.0))
    return model, export_model(model, "hf-compressed", folder / "out")


def test_transformers_loads_it_without_rcc_and_matches_the_node(clip, tmp_path):
    model, report = clip
    pixels = model.preprocess_batch(random_images(3, seed=5))
    tokens = model.tokenize(["a cat", "two red birds on a car"])
    torch.save({"pixels": pixels, "ids": tokens["input_ids"], "mask": tokens["attention_mask"]}, tmp_path / "in.pt")
    loaded = _fresh_process(LOAD_CLIP, report.directory, tmp_path / "in.pt", tmp_path / "out.pt", cwd=tmp_path)
    assert loaded == {"rcc": False, "compressed_tensors": True}
    out = torch.load(tmp_path / "out.pt")
    with torch.inference_mode():
        image, text = model.encode_image(pixels), model.encode_text(tokens)
    # compressed-tensors quantises activations per token, rcc's kernel per tensor: close, not equal.
    assert torch.nn.functional.cosine_similarity(out["image"], image).min() > 0.999
    assert torch.nn.functional.cosine_similarity(out["text"], text).min() > 0.999


def test_the_checkpoint_holds_rcc_int8_values_and_the_config_the_library_writes(clip):
    model, report = clip
    config = json.loads((report.directory / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "int-quantized"
    assert config["sparsity_config"] == {}
    group = config["config_groups"]["group_0"]
    assert group["weights"]["num_bits"] == 8 and group["weights"]["strategy"] == "channel"
    assert group["weights"]["symmetric"] and group["input_activations"]["dynamic"]
    # 2 towers × 2 blocks × 6 Linears, and the two projections.
    assert "text_model.encoder.layers.0.mlp.fc1" in group["targets"] and len(group["targets"]) == 26
    layer = model.module.text_model.encoder.layers[0].mlp.fc1
    with safe_open(str(report.directory / "model.safetensors"), "pt") as weights:
        values = weights.get_tensor("text_model.encoder.layers.0.mlp.fc1.weight")
        scales = weights.get_tensor("text_model.encoder.layers.0.mlp.fc1.weight_scale")
    assert values.dtype == torch.int8 and torch.equal(values, layer.weight)
    torch.testing.assert_close(scales.reshape(-1), layer.weight_scale, rtol=0, atol=0)
    assert not values[~layer.weight_mask].any()  # pruned entries: stored, as zeros


def test_what_the_format_cannot_hold_is_said_in_one_line_each(clip):
    _, report = clip
    notes = report.details["notes"]
    assert any("pruned (masked) tensors are written dense" in note and "sparse-bitmask" in note for note in notes)
    assert any("embedding tables are written float" in note for note in notes)
    readme = (report.directory / "README.txt").read_text()
    assert all(note in readme for note in notes) and "CLIPModel.from_pretrained" in readme


def test_a_blip_retrieval_model_loads_back_with_transformers(tmp_path):
    save_tiny_blip(tmp_path / "blip")
    model = load_model(f"hf-blip:{tmp_path / 'blip'}", device="cpu")
    run_cascade(model, CompressionPlan(rules=(Rule(settings={"bits": 8}),)), lambda m: 1.0, CALIBRATION,
                config=CascadeConfig(threshold=0.0))
    report = export_model(model, "hf-compressed", tmp_path / "out")
    targets = json.loads((report.directory / "config.json").read_text())["quantization_config"][
        "config_groups"]["group_0"]["targets"]
    assert "vision_model.encoder.layers.0.self_attn.qkv" in targets  # q, k, v all int8: the fused Linear is
    pixels = model.preprocess_batch(random_images(2, seed=4))
    tokens = model.tokenize(["a cat", "a red car"])
    torch.save({"pixels": pixels, "ids": tokens["input_ids"], "mask": tokens["attention_mask"]}, tmp_path / "in.pt")
    script = """
import json, sys, torch
from transformers import BlipForImageTextRetrieval
model = BlipForImageTextRetrieval.from_pretrained(sys.argv[1])
data = torch.load(sys.argv[2])
with torch.no_grad():
    scores = model(input_ids=data["ids"], attention_mask=data["mask"], pixel_values=data["pixels"],
                   use_itm_head=False).itm_score
torch.save(scores, sys.argv[3])
print(json.dumps({"rcc": "rcc" in sys.modules}))
"""
    assert _fresh_process(script, report.directory, tmp_path / "in.pt", tmp_path / "out.pt", cwd=tmp_path) == {
        "rcc": False}
    scores = torch.load(tmp_path / "out.pt")
    with torch.inference_mode():
        image = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(scores, text @ image.t(), atol=0.02, rtol=0)


def test_narrowed_mlps_load_with_their_widths_and_removed_heads_are_refused(tmp_path):
    save_tiny_clip(tmp_path / "clip")
    model = load_model(f"hf:{tmp_path / 'clip'}", device="cpu")
    plan = CompressionPlan(rules=(Rule(settings={"bits": 8}),
                                  Rule(kind="mlp_in", settings={"pattern": "channel", "sparsity": 0.5})))
    run_cascade(model, plan, lambda m: 1.0, CALIBRATION, config=CascadeConfig(threshold=0.0))
    fc1 = model.module.text_model.encoder.layers[0].mlp.fc1
    dense = model.module.config.text_config.intermediate_size
    assert fc1.weight.dtype == torch.int8 and fc1.out_features == dense - round(0.5 * dense)  # narrowed, then int8
    report = export_model(model, "hf-compressed", tmp_path / "out")
    config = json.loads((report.directory / "config.json").read_text())
    assert config["text_config"]["intermediate_size"] == fc1.out_features  # the width the weights have
    pixels = model.preprocess_batch(random_images(2, seed=5))
    tokens = model.tokenize(["a cat", "two red birds on a car"])
    torch.save({"pixels": pixels, "ids": tokens["input_ids"], "mask": tokens["attention_mask"]}, tmp_path / "in.pt")
    _fresh_process(LOAD_CLIP, report.directory, tmp_path / "in.pt", tmp_path / "out.pt", cwd=tmp_path)
    out = torch.load(tmp_path / "out.pt")
    with torch.inference_mode():
        assert torch.nn.functional.cosine_similarity(out["text"], model.encode_text(tokens)).min() > 0.999

    heads = load_model(f"hf:{tmp_path / 'clip'}", device="cpu")
    run_cascade(heads, CompressionPlan(rules=(Rule(kind="attn_q", settings={"pattern": "head", "sparsity": 0.5}),)),
                lambda m: 1.0, CALIBRATION, config=CascadeConfig(threshold=0.0))
    with pytest.raises(RccError, match="cannot be exported dense: attention .* heads.*--format onnx") as error:
        export_model(heads, "hf-compressed", tmp_path / "refused")
    assert "\n" not in str(error.value) and not (tmp_path / "refused").exists()


def test_models_transformers_does_not_hold_are_refused_in_one_line(config_path, tmp_path):
    model = load_model(f"open_clip:{config_path}", device="cpu")
    with pytest.raises(RccError, match="format 'hf-compressed' needs a Hugging Face CLIP or BLIP model"):
        export_model(model, "hf-compressed", tmp_path / "out")
