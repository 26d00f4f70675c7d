"""Exports: packed compressed (rcc.load_compressed) and dense (plain open_clip / transformers loading)."""

import copy
import json

import pytest
import torch

import rcc
from hf_tiny import random_images, save_tiny_blip, save_tiny_clip
from rcc.compression.calibration import CalibrationData
from rcc.compression.cascade import CascadeConfig, run_cascade
from rcc.compression.plan import CompressionPlan, Rule
from rcc.compression.structure import MANIFEST, WEIGHTS, save_compressed, structure_of
from rcc.errors import RccError
from rcc.models.registry import load_model
from rcc.exports.checkpoints import OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, README, export_compressed, export_dense

pytestmark = pytest.mark.usefixtures("one_thread")

CALIBRATION = CalibrationData(images=random_images(8, seed=1),
                              texts=("a photo of a cat", "two dogs on the grass", "a red car", "a small bird"))
TEXTS = ["a photo of a cat", "three red birds", "a car"]
ACCEPT_ALL = CascadeConfig(stages=("dare", "nullu"), threshold=0.0)
# Every layer half pruned (attention split for its q/k/v masks), vision mlp_in also factorised:
# masked Linears, masked bare projections and masked low-rank factors all get packed.
HALF = CompressionPlan(rules=(Rule(settings={"sparsity": 0.5}),
                              Rule(tower="vision", kind="mlp_in", settings={"rank": 8})))


def _compress(model, plan=HALF):
    torch.manual_seed(0)
    run_cascade(model, plan, lambda m: 1.0, CALIBRATION, config=ACCEPT_ALL)
    return model


@pytest.fixture(scope="module")
def tiny(config_path):
    return _compress(load_model(f"open_clip:{config_path}", device="cpu"))


def _pixels(model):
    return model.preprocess_batch(random_images(3, seed=5))


def _outputs(model):
    with torch.no_grad():
        return model.encode_image(_pixels(model)), model.encode_text(model.tokenize(TEXTS))


def _state_bytes(state) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _assert_packed_round_trip(model, out):
    report = export_compressed(model, out, extra={"note": "test"})
    loaded = rcc.load_compressed(out)
    assert loaded.spec == model.spec and structure_of(loaded.module) == structure_of(model.module)
    saved, back = model.module.state_dict(), loaded.module.state_dict()
    assert list(back) == list(saved)
    for key, value in saved.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    for got, expected in zip(_outputs(loaded), _outputs(model)):
        assert torch.equal(got, expected)
    manifest = json.loads((out / MANIFEST).read_text())
    assert (manifest["format"], manifest["version"], manifest["note"]) == ("rcc-compressed", 2, "test")
    assert manifest["structure"] == structure_of(model.module) and manifest["model"] == model.spec
    assert sorted(report.files) == sorted([MANIFEST, WEIGHTS, README])
    assert report.total_bytes == sum(p.stat().st_size for p in out.iterdir())
    return report, manifest


def test_compressed_export_packs_masked_tensors_and_loads_back_exactly(tiny, tmp_path):
    report, manifest = _assert_packed_round_trip(tiny, tmp_path / "packed")
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "packed" / WEIGHTS))
    state = tiny.module.state_dict()
    assert len(manifest["packed"]) == len(structure_of(tiny.module)["masks"])
    packed_bytes = dense_bytes = 0
    for entry in manifest["packed"]:
        values, bits, mask = stored[entry["tensor"]], stored[entry["mask"]], state[entry["mask"]]
        assert entry["shape"] == list(mask.shape) and bits.dtype == torch.uint8
        assert values.shape == (int(mask.sum()),) and bits.numel() == -(-mask.numel() // 8)
        assert torch.equal(values, state[entry["tensor"]][mask])  # kept values, row-major
        packed_bytes += _state_bytes({"v": values, "b": bits})
        dense_bytes += _state_bytes({"w": state[entry["tensor"]]})
    # Half the values kept (4 bytes each) plus 1/8 byte of mask per entry: (0.5·4 + 1/8) / 4 ≈ 0.53.
    assert 0.5 < packed_bytes / dense_bytes <= 0.6
    # Against version 1 (every value, a byte per mask entry) the file shrinks by exactly that, give or take headers.
    save_compressed(tiny, tmp_path / "v1")
    v1 = (tmp_path / "v1" / WEIGHTS).stat().st_size
    expected = sum(4 * (state[e["tensor"]].numel() - int(state[e["mask"]].sum())) + state[e["mask"]].numel()
                   - -(-state[e["mask"]].numel() // 8) for e in manifest["packed"])
    assert abs((v1 - report.files[WEIGHTS]) - expected) < 2048
    assert report.format == "rcc-compressed" and report.total_bytes < report.dense_bytes
    assert report.dense_bytes == _state_bytes(load_model(tiny.spec).module.state_dict())
    assert report.saving == pytest.approx(1 - report.total_bytes / report.dense_bytes)


def test_version_1_directories_still_load(tiny, tmp_path):
    save_compressed(tiny, tmp_path / "v1")
    assert json.loads((tmp_path / "v1" / MANIFEST).read_text())["version"] == 1
    loaded = rcc.load_compressed(tmp_path / "v1")
    for got, expected in zip(_outputs(loaded), _outputs(tiny)):
        assert torch.equal(got, expected)


def test_a_damaged_packed_export_is_a_one_line_error(tiny, tmp_path):
    export_compressed(tiny, tmp_path / "bad")
    manifest = json.loads((tmp_path / "bad" / MANIFEST).read_text())
    manifest["packed"][0]["tensor"] = "no.such.tensor"
    (tmp_path / "bad" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RccError, match="bad 'packed' list") as error:
        rcc.load_compressed(tmp_path / "bad")
    assert "\n" not in str(error.value)


def _load_plain_open_clip(directory):
    """What a user without rcc does: open_clip's own local-dir loading."""
    import open_clip

    module, _, transform = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    return module.eval(), transform, open_clip.get_tokenizer(f"local-dir:{directory}")


def _assert_open_clip_dense_export_matches(model, out, atol):
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    report = export_dense(model, out)
    after = model.module.state_dict()  # the caller's model is untouched: still compressed, same values
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    assert report.format == "open_clip" and {OPEN_CLIP_WEIGHTS, OPEN_CLIP_CONFIG, README} <= set(report.files)
    assert set(json.loads((out / OPEN_CLIP_CONFIG).read_text())) == {"model_cfg", "preprocess_cfg"}
    module, transform, tokenizer = _load_plain_open_clip(out)
    image = random_images(1, seed=3, size=(40, 52))[0]
    assert torch.equal(transform(image), model.preprocess(image))
    assert torch.equal(tokenizer(TEXTS), model.tokenize(TEXTS)["input_ids"])
    pixels = _pixels(model)
    expected_image, expected_text = _outputs(model)
    with torch.no_grad():
        torch.testing.assert_close(module.encode_image(pixels), expected_image, rtol=1e-5, atol=atol)
        torch.testing.assert_close(module.encode_text(tokenizer(TEXTS)), expected_text, rtol=1e-5, atol=atol)
    state = {k: v for k, v in module.state_dict().items()}
    assert report.dense_bytes == _state_bytes(state)
    return report


def test_dense_export_loads_with_plain_open_clip(tiny, tmp_path):
    empty = tmp_path / "dense"
    empty.mkdir()  # an existing empty directory is fine
    report = _assert_open_clip_dense_export_matches(tiny, empty, atol=1e-6)
    assert report.dense_bytes == _state_bytes(load_model(tiny.spec).module.state_dict())


def test_rcc_mini_exports_both_ways(rcc_mini, tmp_path):
    model = _compress(copy.deepcopy(rcc_mini))  # the fixture is shared: never compress it
    report, _ = _assert_packed_round_trip(model, tmp_path / "packed")
    assert report.saving > 0.2  # the MiniLM word embeddings (12M of 23M numbers) are not pruned
    _assert_open_clip_dense_export_matches(model, tmp_path / "dense", atol=1e-5)


def test_dense_export_of_hf_clip_loads_with_transformers(tmp_path):
    from transformers import AutoTokenizer, CLIPModel

    model = _compress(load_model(f"hf:{save_tiny_clip(tmp_path / 'clip')}", device="cpu"), CompressionPlan(rules=(
        Rule(tower="text", settings={"sparsity": 0.5}), Rule(tower="vision", kind="mlp_in", settings={"rank": 8}))))
    report = export_dense(model, tmp_path / "dense")
    assert report.format == "transformers" and "model.safetensors" in report.files
    plain = CLIPModel.from_pretrained(tmp_path / "dense").eval()
    tokens = AutoTokenizer.from_pretrained(tmp_path / "dense")(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(tokens["input_ids"], model.tokenize(TEXTS)["input_ids"])
    expected_image, expected_text = _outputs(model)
    with torch.no_grad():
        image = plain.get_image_features(pixel_values=_pixels(model)).pooler_output
        text = plain.get_text_features(input_ids=tokens["input_ids"],
                                       attention_mask=tokens["attention_mask"]).pooler_output
    torch.testing.assert_close(image, expected_image, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(text, expected_text, rtol=1e-5, atol=1e-6)
    assert set(plain.state_dict()) == set(load_model(model.spec).module.state_dict())


def test_dense_export_of_hf_blip_merges_its_split_qkv(tmp_path):
    from transformers import BlipForImageTextRetrieval

    model = _compress(load_model(f"hf-blip:{save_tiny_blip(tmp_path / 'blip')}", device="cpu"), CompressionPlan(
        rules=(Rule(tower="vision", kind="attn_q", settings={"rank": 4}),)))
    assert structure_of(model.module)["split"]  # the fused qkv was split to factorise q
    export_dense(model, tmp_path / "dense")
    plain = BlipForImageTextRetrieval.from_pretrained(tmp_path / "dense").eval()
    with torch.no_grad():
        vision = plain.vision_model(pixel_values=_pixels(model)).last_hidden_state[:, 0, :]
        torch.testing.assert_close(plain.vision_proj(vision), _outputs(model)[0], rtol=1e-5, atol=1e-6)


def test_a_non_empty_out_dir_is_refused(tiny, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    for export in (export_compressed, export_dense):
        with pytest.raises(RccError) as error:
            export(tiny, taken)
        message = str(error.value)
        assert str(taken) in message and "new or empty directory" in message and "\n" not in message
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]  # nothing the user had is touched
    with pytest.raises(RccError, match="is a file"):
        export_compressed(tiny, taken / "keep.txt")
    with pytest.raises(RccError, match="lies under .*keep.txt.*, which is a file"):
        export_compressed(tiny, taken / "keep.txt" / "sub")


def test_a_family_without_a_dense_format_is_refused(tiny, tmp_path):
    other = copy.copy(tiny)
    other.family = "custom"
    with pytest.raises(RccError, match="'custom'"):
        export_dense(other, tmp_path / "out")
    unconfigured = copy.copy(tiny)
    unconfigured.config = None
    with pytest.raises(RccError, match="no OpenCLIP config"):
        export_dense(unconfigured, tmp_path / "out")
    assert not (tmp_path / "out").exists()
