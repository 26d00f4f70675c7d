"""Calibration statistics: the inputs each layer sees, padding excluded; the default calibration sets."""

import json

import numpy as np
import torch

from openclip_tiny import TINY_OPEN_CLIP_CONFIG
from rcc.compression.calibration import CalibrationData, collect_input_stats
from rcc.compression.calibration_sets import calibration_sets
from rcc.compression.layers import unfuse
from rcc.data.images import ArrayImages
from rcc.data.text_corpus import docstring_sentences
from rcc.models.registry import load_model


def _tiny(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
    torch.manual_seed(0)
    return load_model(f"open_clip:{path}")


def test_gram_and_norms_equal_the_inputs_recorded_by_hand(tmp_path):
    model = _tiny(tmp_path)
    unfuse(model.module, model.layers())
    layer = model.layer_index["visual.transformer.resblocks.1.mlp.c_fc"]
    images = ArrayImages(np.random.default_rng(0).integers(0, 256, size=(5, 16, 16, 3), dtype=np.uint8))
    recorded = []
    handle = model.module.get_submodule("visual.transformer.resblocks.1.mlp.c_fc").register_forward_pre_hook(
        lambda _m, args: recorded.append(args[0].detach().reshape(-1, args[0].shape[-1])))
    stats = collect_input_stats(model, [layer], CalibrationData(images=images, texts=()), batch_size=2)
    handle.remove()
    x = torch.cat(recorded)
    # 5 images × (4 patches + 1 class token) tokens, width 32.
    assert x.shape == (25, 32) and stats[layer.name].count == 25
    torch.testing.assert_close(stats[layer.name].gram, x.t() @ x, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(stats[layer.name].norms, x.norm(dim=0), rtol=1e-5, atol=1e-5)


def test_text_padding_tokens_are_not_counted(tmp_path):
    model = _tiny(tmp_path)
    unfuse(model.module, model.layers())
    layer = model.layer_index["transformer.resblocks.0.mlp.c_fc"]
    texts = ("a cat", "a small red dog on the grass")
    stats = collect_input_stats(model, [layer], CalibrationData(images=None, texts=texts))
    real = int((model.tokenize(list(texts))["input_ids"] != 0).sum())
    assert stats[layer.name].count == real < 2 * TINY_OPEN_CLIP_CONFIG["text_cfg"]["context_length"]


def test_length_sorted_cut_text_batches_record_what_the_full_context_records(tmp_path):
    # Calibration runs texts sorted by length, 16 at a time, each batch cut to its longest text;
    # the statistics must be those of the real tokens of a plain full-context forward.
    model = _tiny(tmp_path)
    unfuse(model.module, model.layers())
    layer = model.layer_index["transformer.resblocks.1.mlp.c_fc"]
    texts = tuple("a " + "very " * (i % 13) + "red cat" for i in range(40))  # 4 to 12+ tokens (context 12)
    tokens = model.tokenize(list(texts))
    recorded = []
    handle = model.module.get_submodule(layer.name).register_forward_pre_hook(
        lambda _m, args: recorded.append(args[0].detach().reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        model.module.encode_text(tokens["input_ids"])
    handle.remove()
    x = recorded[0][(tokens["input_ids"] != 0).reshape(-1)]
    widths = []
    width_hook = model.module.token_embedding.register_forward_pre_hook(
        lambda _m, args: widths.append(args[0].shape[1]))
    stats = collect_input_stats(model, [layer], CalibrationData(images=None, texts=texts))
    width_hook.remove()
    assert stats[layer.name].count == x.shape[0]
    torch.testing.assert_close(stats[layer.name].gram, x.t() @ x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stats[layer.name].norms, x.norm(dim=0), rtol=1e-5, atol=1e-5)
    lengths = sorted((tokens["input_ids"] != 0).sum(dim=1).tolist())
    assert widths == [max(lengths[i:i + 16]) for i in range(0, len(texts), 16)]
    assert widths[0] < widths[-1] == tokens["input_ids"].shape[1]  # short texts ran on fewer positions


def test_default_calibration_sets_are_disjoint_and_cover_every_class():
    x, k0 = calibration_sets("digits", per_class=4, seed=0)
    assert len(x.images) == len(k0.images) == 40
    assert not set(x.images.indices) & set(k0.images.indices)
    assert not set(x.texts) & set(k0.texts)
    assert "a photo of the number seven." in x.texts
    assert len(docstring_sentences("calib")) > 200 and not set(docstring_sentences("calib")) & set(
        docstring_sentences("eval"))
