"""Saving and loading compressed models: structure, weights, outputs, file size, bad manifests."""

import json

import pytest
import torch

from hf_tiny import random_images, save_tiny_clip
from rcc.compression.calibration import CalibrationData
from rcc.compression.cascade import CascadeConfig, run_cascade
from rcc.compression.layers import SplitAttention, layer_form, stored_parameters
from rcc.compression.plan import CompressionPlan, Rule
from rcc.compression.structure import MANIFEST, WEIGHTS, load_compressed, save_compressed, structure_of
from rcc.errors import RccError
from rcc.models.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

CALIBRATION = CalibrationData(images=random_images(8, seed=1),
                              texts=("a photo of a cat", "two dogs on the grass", "a red car", "a small bird"))
TEXTS = ["a photo of a cat", "three red birds", "a car"]
ACCEPT_ALL = CascadeConfig(stages=("dare", "nullu"), threshold=0.0)


@pytest.fixture(scope="module")
def open_clip_spec(config_path):
    return f"open_clip:{config_path}"


@pytest.fixture(scope="module")
def hf_spec(tmp_path_factory):
    return f"hf:{save_tiny_clip(tmp_path_factory.mktemp('clip') / 'clip')}"


def _outputs(model):
    pixels = model.preprocess_batch(random_images(3, seed=5))
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(model.tokens_to_device(model.tokenize(TEXTS)))


def _stored(model) -> dict[str, int]:
    return {layer.name: stored_parameters(model.module, layer) for layer in model.layers()}


def _compress(spec, plan, config=ACCEPT_ALL):
    torch.manual_seed(0)
    model = load_model(spec, device="cpu")
    run_cascade(model, plan, lambda m: 1.0, CALIBRATION, config=config)
    return model


def _assert_round_trip(model, directory):
    save_compressed(model, directory, extra={"note": "test"})
    loaded = load_compressed(directory)
    assert loaded.spec == model.spec
    assert structure_of(loaded.module) == structure_of(model.module)
    assert _stored(loaded) == _stored(model)
    assert loaded.num_parameters() == model.num_parameters()
    saved, back = model.module.state_dict(), loaded.module.state_dict()
    assert set(saved) == set(back)
    for key, value in saved.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    for got, expected in zip(_outputs(loaded), _outputs(model)):
        assert torch.equal(got, expected)
    manifest = json.loads((directory / MANIFEST).read_text())
    assert (manifest["format"], manifest["version"], manifest["note"]) == ("rcc-compressed", 1, "test")
    return loaded, manifest


def test_open_clip_pruned_factorised_and_split_round_trips(open_clip_spec, tmp_path):
    plan = CompressionPlan(rules=(
        Rule(tower="text", settings={"sparsity": 0.5}),  # includes the bare text_projection
        Rule(tower="text", kind="mlp_in", settings={"rank": 4}),  # pruned then factorised: masked factors
        Rule(tower="vision", kind="attn_q", settings={"rank": 8}),  # fused q split out, then factorised
        Rule(name="visual.proj", settings={"sparsity": 0.3}),
    ))
    model = _compress(open_clip_spec, plan)
    structure = structure_of(model.module)
    assert len(structure["split"]) == 4  # every attention holding a selected layer
    assert structure["factorised"] == {
        "transformer.resblocks.0.mlp.c_fc": 4, "transformer.resblocks.1.mlp.c_fc": 4,
        "visual.transformer.resblocks.0.attn.in_proj.q": 8, "visual.transformer.resblocks.1.attn.in_proj.q": 8}
    assert structure["masks"]["text_projection_mask"] == [24, 16]  # stored (in, out) like the parameter
    assert structure["masks"]["visual.proj_mask"] == [32, 16]
    assert structure["masks"]["transformer.resblocks.0.mlp.c_fc.up_mask"] == [96, 4]
    assert "attn_mask" not in structure["masks"]  # OpenCLIP's causal mask buffer is not a pruning mask
    loaded, manifest = _assert_round_trip(model, tmp_path / "out")
    assert manifest["structure"] == structure
    assert isinstance(loaded.module.get_submodule("transformer.resblocks.0.attn"), SplitAttention)
    assert layer_form(loaded.module, loaded.layer_index["transformer.resblocks.1.mlp.c_fc"]) == "factorised"
    assert layer_form(loaded.module, loaded.layer_index["text_projection"]) == "masked"
    # The loaded model is a compressed model again: every mask is bool, pruned entries are zero.
    mask = loaded.module.get_submodule("transformer.resblocks.0.mlp.c_proj").weight_mask
    assert mask.dtype == torch.bool and (loaded.module.transformer.resblocks[0].mlp.c_proj.weight[~mask] == 0).all()


def test_hf_clip_pruned_and_factorised_round_trips(hf_spec, tmp_path):
    plan = CompressionPlan(rules=(
        Rule(tower="text", settings={"sparsity": 0.5}),
        Rule(tower="vision", kind="mlp_in", settings={"rank": 8}),  # 37 × 32: 8 · 69 = 552 < 1184
    ))
    model = _compress(hf_spec, plan)
    structure = structure_of(model.module)
    assert structure["split"] == [] and len(structure["factorised"]) == 2 and structure["factorised"]
    assert all(rank == 8 for rank in structure["factorised"].values())
    assert len(structure["masks"]) == sum(layer.tower == "text" for layer in model.layers())
    _assert_round_trip(model, tmp_path / "out")


def test_factorised_file_is_smaller_than_the_dense_one(open_clip_spec, tmp_path):
    dense = load_model(open_clip_spec, device="cpu")
    save_compressed(dense, tmp_path / "dense")
    model = _compress(open_clip_spec, CompressionPlan(rules=(Rule(kind="mlp_in", settings={"rank": 4}),)))
    saved = sum(layer.params - stored_parameters(model.module, layer) for layer in model.layers())
    # text c_fc: 2 × (2304 − 4·120); vision c_fc: 2 × (4096 − 4·160) = 3648 + 6912 numbers
    assert saved == 10560
    assert dense.num_parameters() - model.num_parameters() == saved
    save_compressed(model, tmp_path / "low")
    dense_bytes = (tmp_path / "dense" / WEIGHTS).stat().st_size
    low_bytes = (tmp_path / "low" / WEIGHTS).stat().st_size
    # float32: 4 bytes per number saved, give or take the (longer) header naming the factors.
    assert 0 < dense_bytes - low_bytes <= 4 * saved
    assert dense_bytes - low_bytes > 4 * saved - 2048
    _assert_round_trip(model, tmp_path / "low2")


def test_a_saved_uncompressed_open_clip_model_loads_back(open_clip_spec, tmp_path):
    # The causal ``attn_mask`` buffer must not be mistaken for a pruning mask on the way out or in.
    model = load_model(open_clip_spec, device="cpu")
    assert structure_of(model.module) == {"split": [], "factorised": {}, "masks": {}}
    _assert_round_trip(model, tmp_path / "plain")


def test_missing_or_invalid_manifest_is_a_one_line_error(open_clip_spec, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [(empty, ["manifest.json is missing", str(empty)])]
    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / MANIFEST).write_text("{not json")
    cases.append((bad_json, ["is not valid JSON", MANIFEST]))
    wrong = tmp_path / "wrong-format"
    wrong.mkdir()
    (wrong / MANIFEST).write_text(json.dumps({"format": "something-else", "version": 7}))
    cases.append((wrong, ["'something-else'", "version 7", "rcc-compressed version 1"]))
    not_object = tmp_path / "list"
    not_object.mkdir()
    (not_object / MANIFEST).write_text("[1, 2]")
    cases.append((not_object, ["JSON list", "object"]))
    no_model = tmp_path / "no-model"
    no_model.mkdir()
    (no_model / MANIFEST).write_text(json.dumps({"format": "rcc-compressed", "version": 1, "structure": {}}))
    cases.append((no_model, ["lacks a model spec", "'model'"]))
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / MANIFEST).write_text(json.dumps({"format": "rcc-compressed", "version": 1,
                                                   "model": open_clip_spec, "structure": {}}))
    cases.append((no_weights, [WEIGHTS + " is missing", str(no_weights)]))
    for directory, words in cases:
        with pytest.raises(RccError) as error:
            load_compressed(directory)
        message = str(error.value)
        assert "\n" not in message, message
        for word in words:
            assert word in message, message
