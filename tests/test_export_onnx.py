"""The ONNX export: both encoders run in onnxruntime in a fresh process without rcc (or torch),
int8 layers stay int8 (MatMulInteger on int8 initializers), low-rank layers stay two matrices,
and the README states the tolerance measured at export."""

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hf_tiny import random_images, save_tiny_clip
from rcc.compression.calibration import CalibrationData
from rcc.compression.cascade import CascadeConfig, run_cascade
from rcc.compression.plan import CompressionPlan, Rule
from rcc.errors import RccError
from rcc.exports import export_model
from rcc.models.registry import load_model

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

CALIBRATION = CalibrationData(images=random_images(8, seed=1),
                              texts=("a photo of a cat", "two dogs on the grass", "a red car", "a small bird"))
# int8 everywhere but the bare projections; vision MLP inputs factorised (int8 factors), text MLP outputs pruned.
PLAN = CompressionPlan(rules=(Rule(settings={"bits": 8}),
                              Rule(tower="vision", kind="mlp_in", settings={"rank": 8}),
                              Rule(tower="text", kind="mlp_out", settings={"sparsity": 0.5})),
                       overrides={"visual.proj": {"bits": None}, "text_projection": {"bits": None}})

RUN_ONNX = """
import json, sys
import numpy as np
import onnxruntime as ort
folder, inputs = sys.argv[1], np.load(sys.argv[2])
image = ort.InferenceSession(folder + "/image_encoder.onnx", providers=["CPUExecutionProvider"])
text = ort.InferenceSession(folder + "/text_encoder.onnx", providers=["CPUExecutionProvider"])
feeds = {i.name: inputs[i.name] for i in text.get_inputs()}
np.save(sys.argv[3], image.run(None, {"pixels": inputs["pixels"]})[0])
np.save(sys.argv[4], text.run(None, feeds)[0])
print(json.dumps({"rcc": "rcc" in sys.modules, "torch": "torch" in sys.modules}))
"""


def _run_without_rcc(folder, inputs: dict, tmp_path):
    """Both encoders in a fresh interpreter: -I (no user site, no PYTHONPATH), started outside the project."""
    np.savez(tmp_path / "inputs.npz", **{k: v.numpy() for k, v in inputs.items()})
    image_out, text_out = tmp_path / "image.npy", tmp_path / "text.npy"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-I", "-c", RUN_ONNX, str(folder), str(tmp_path / "inputs.npz"),
                             str(image_out), str(text_out)], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"rcc": False, "torch": False}
    return torch.from_numpy(np.load(image_out)), torch.from_numpy(np.load(text_out))


@pytest.fixture(scope="module")
def int8_model(config_path):
    torch.manual_seed(0)
    model = load_model(f"open_clip:{config_path}", device="cpu")
    run_cascade(model, PLAN, lambda m: 1.0, CALIBRATION, config=CascadeConfig(threshold=0.0))
    return model


@pytest.fixture(scope="module")
def exported(int8_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "export"
    return export_model(int8_model, "onnx", out)


def test_both_encoders_run_in_onnxruntime_without_rcc_and_match_the_node(int8_model, exported, tmp_path):
    pixels = int8_model.preprocess_batch(random_images(5, seed=9))
    tokens = int8_model.trim_text_padding(int8_model.tokenize(["a red car", "two small dogs on the grass", "zero"]))
    image, text = _run_without_rcc(exported.directory, {"pixels": pixels, **tokens}, tmp_path)
    with torch.inference_mode():
        image_ref, text_ref = int8_model.encode_image(pixels), int8_model.encode_text(tokens)
    # Activations are quantised at run time by both (rounding differs slightly): close, not equal.
    assert torch.nn.functional.cosine_similarity(image, image_ref).min() > 0.999
    assert torch.nn.functional.cosine_similarity(text, text_ref).min() > 0.999
    assert (image - image_ref).abs().max() < 0.05 * image_ref.abs().max()


def test_int8_layers_stay_int8_and_low_rank_layers_stay_factorised_in_the_file(int8_model, exported):
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(exported.directory / "image_encoder.onnx")).graph
    ops = [node.op_type for node in graph.node]
    # 2 blocks × (q, k, v, out, fc as 2 factors, proj) = 14; q, k and v share one quantised input.
    assert ops.count("MatMulInteger") == 14 and ops.count("DynamicQuantizeLinear") == 10
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    int8 = [array for array in initializers.values() if array.dtype == np.int8]
    low_rank = int8_model.module.visual.transformer.resblocks[0].mlp.c_fc
    shapes = {array.shape for array in int8}
    # Both factors of the rank-8 c_fc, never their 128 × 32 product.
    assert {tuple(low_rank.up.shape[::-1]), tuple(low_rank.down.shape[::-1])} <= shapes | {
        tuple(low_rank.up.shape), tuple(low_rank.down.shape)}
    assert not any(array.shape in ((128, 32), (32, 128)) and array.dtype != np.int8 for array in initializers.values())
    assert sum(array.nbytes for array in int8) > 0.5 * sum(array.nbytes for array in initializers.values()
                                                            if array.ndim == 2 and array.dtype == np.float32)


def test_the_readme_states_the_measured_tolerance_and_what_masks_cost(exported):
    readme = (exported.directory / "README.txt").read_text()
    parity = exported.details
    assert f"lowest cosine {parity['image']['min_cosine']:.6f}" in readme
    assert f"max |difference| {parity['text']['max_abs']:.3g}" in readme
    assert "masks save nothing in ONNX" in readme and "transformer.resblocks.0.mlp.c_proj" in readme
    assert exported.total_bytes < exported.dense_bytes
    assert json.loads((exported.directory / "preprocess.json").read_text())["input_shape"] == [3, 16, 16]


def test_a_hugging_face_clip_exports_with_its_attention_mask_input(tmp_path):
    save_tiny_clip(tmp_path / "clip")
    model = load_model(f"hf:{tmp_path / 'clip'}", device="cpu")
    plan = CompressionPlan(rules=(Rule(tower="text", settings={"bits": 8}),))
    run_cascade(model, plan, lambda m: 1.0, CALIBRATION, config=CascadeConfig(threshold=0.0))
    report = export_model(copy.deepcopy(model), "onnx", tmp_path / "out")
    pixels = model.preprocess_batch(random_images(2, seed=3))
    tokens = model.tokenize(["a cat", "two red birds on a car"])
    image, text = _run_without_rcc(report.directory, {"pixels": pixels, **tokens}, tmp_path)
    with torch.inference_mode():
        assert torch.nn.functional.cosine_similarity(text, model.encode_text(tokens)).min() > 0.999
        torch.testing.assert_close(image, model.encode_image(pixels), atol=1e-4, rtol=1e-4)  # vision stayed float
    assert (report.directory / "tokenizer.json").is_file() or (report.directory / "vocab.json").is_file()


def test_an_export_that_fails_leaves_the_directory_empty(tmp_path, monkeypatch, int8_model):
    import rcc.exports.onnx_export as onnx_export

    def broken(wrapper, args, names, output, dynamic, path):
        path.write_text("half written")
        raise RccError("the exporter broke")

    monkeypatch.setattr(onnx_export, "_export", broken)
    (tmp_path / "out").mkdir()
    with pytest.raises(RccError, match="the exporter broke"):
        export_model(int8_model, "onnx", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
