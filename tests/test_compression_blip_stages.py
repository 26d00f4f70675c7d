"""The calibrated stages on BLIP's fusion and decoder layers: Wanda, activation-aware (whitened) SVD
and AlphaEdit each use the inputs image–text pairs give those layers (without them, Wanda would
fall back to magnitude, SVD to plain SVD, and AlphaEdit would skip every layer)."""

from __future__ import annotations

import copy

import pytest
import torch

from caption_data import caption_for, save_tiny_karpathy
from hf_tiny import save_tiny_blip
from rcc.compression.calibration_sets import calibration_sets
from rcc.compression.cascade import run_stage
from rcc.compression.layers import dense_weight, get_mask
from rcc.compression.plan import CompressionPlan, Rule
from rcc.compression.stage_context import StageOptions
from rcc.models.hf_blip import load_hf_blip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = save_tiny_karpathy(tmp_path_factory.mktemp("flickr"), {"train": 8, "val": 2, "test": 2})
    return calibration_sets(f"flickr30k-karpathy:{path}", per_class=2, seed=0)


@pytest.fixture(scope="module", params=[("retrieval", "fusion"), ("caption", "decoder")], ids=["fusion", "decoder"])
def blip(request, tmp_path_factory):
    task, tower = request.param
    path = save_tiny_blip(tmp_path_factory.mktemp(task), task)
    return load_hf_blip(f"hf-blip:{path}", str(path)), tower


def _tower_layers(model, tower):
    """Fusion: the text encoder's 2 × 4 cross-attention Linears; decoder: every Linear of the
    decoder's 2 blocks (self-attention, cross-attention, MLP) plus the LM head's transform, 21."""
    return [layer for layer in model.layers() if layer.tower == tower]


def test_wanda_prunes_grounded_layers_by_their_inputs(blip, calibration):
    model, tower = blip
    x, _ = calibration
    masks = {}
    for method in ("wanda", "magnitude"):
        pruned = copy.deepcopy(model)
        plan = CompressionPlan(rules=(Rule(tower=tower, settings={"sparsity": 0.5, "method": method}),))
        run = run_stage(pruned, plan, "dare", 1.0, x)
        assert run.changed == len(_tower_layers(model, tower)) == {"fusion": 8, "decoder": 21}[tower]
        masks[method] = {layer.name: get_mask(pruned.module, layer) for layer in _tower_layers(pruned, tower)}
    # Every layer's Wanda mask (|W_ij| · ‖X_j‖) differs from its magnitude mask: inputs reached each one.
    assert all(not torch.equal(masks["wanda"][name], masks["magnitude"][name]) for name in masks["wanda"])


def test_whitened_svd_and_alphaedit_use_the_grounded_inputs(blip, calibration):
    model, tower = blip
    x, k0 = calibration
    weights = {}
    for whiten in (True, False):
        factorised = copy.deepcopy(model)
        plan = CompressionPlan(rules=(Rule(tower=tower, settings={"rank": 4, "correction": True}),))
        run_stage(factorised, plan, "nullu", 1.0, x, options=StageOptions(whiten=whiten))
        weights[whiten] = {layer.name: dense_weight(factorised.module, layer).detach().clone()
                           for layer in _tower_layers(factorised, tower)}
        if whiten:
            corrected = run_stage(factorised, plan, "alphaedit", 1.0, x, k0)
            # AlphaEdit corrects only layers calibration inputs reach: here every one of them.
            assert corrected.changed == len(weights[True])
    assert all(not torch.allclose(weights[True][name], weights[False][name]) for name in weights[True])


def test_calibration_sets_pair_each_image_with_its_caption_and_k0_with_the_corpus(calibration):
    x, k0 = calibration
    # Train images 0..7 alternate between X (even) and K₀ (odd); X's texts take each image's
    # captions in turn, K₀'s are general sentences (mismatched pairs, outside the task).
    assert x.pair_texts == tuple(caption_for(i, j) for j, i in enumerate((0, 2, 4, 6)))
    assert len(k0.pair_texts) == len(k0.images) == 4
    assert k0.pair_texts == k0.texts[:4] and not set(k0.pair_texts) & set(x.texts)


def test_calibration_sets_pair_digits_with_their_class_prompts():
    from rcc.data.registry import load_dataset
    from rcc.data.sampler import balanced_indices
    from rcc.eval.templates import default_templates, fill

    x, _ = calibration_sets("digits", per_class=1, seed=3)
    train = load_dataset("digits", "train")
    chosen = balanced_indices(train.labels, 2, 3)[0::2]
    templates = default_templates("digits")
    assert x.pair_texts == tuple(fill(templates[j % len(templates)], train.classnames[train.labels[i]])
                                 for j, i in enumerate(chosen))
