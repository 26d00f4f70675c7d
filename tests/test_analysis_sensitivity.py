"""The sensitivity scan: what it measures per layer, that it leaves the model alone, storage, rcc-mini."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hf_tiny import random_images
from rcc.analysis.errors import AnalysisError
from rcc.analysis.probe import outcome_probe
from rcc.analysis.sensitivity import (
    ScanSetting, load_sensitivity, read_sensitivity, save_sensitivity, scan_sensitivity, scan_units, select_layers,
    sensitivity_from_dict, sensitivity_path,
)
from rcc.compression.calibration import CalibrationData
from rcc.data.images import ArrayImages
from rcc.data.types import ClassificationDataset
from rcc.models.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")
CALIBRATION = CalibrationData(images=random_images(8, seed=1),
                              texts=("a photo of a cat", "two dogs on the grass", "a red car", "a small bird"))
CLASSNAMES = ("cat", "dog", "car", "bird")


@pytest.fixture
def tiny(config_path):
    torch.manual_seed(0)
    return load_model(f"open_clip:{config_path}", device="cpu")


@pytest.fixture(scope="module")
def probe():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(16, 16, 16, 3), dtype=np.uint8)
    dataset = ClassificationDataset("synthetic", "test", ArrayImages(pixels), tuple(i % 4 for i in range(16)),
                                    CLASSNAMES)
    return outcome_probe(dataset, templates=("a photo of a {c}.", "{c}"))


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _same(model, saved) -> bool:
    now = model.module.state_dict()
    return set(now) == set(saved) and all(torch.equal(now[k], v) for k, v in saved.items())


def test_a_rank_scan_measures_every_layer_and_leaves_the_model_as_it_was(tiny, probe):
    saved = _state(tiny)
    setting = ScanSetting(rank=0.25)
    result = scan_sensitivity(tiny, setting, probe, CALIBRATION, data="synthetic", split="test")
    assert _same(tiny, saved)  # fused attention put back, factorised layers undone
    assert [u.name for u in result.units] == [layer.name for layer in tiny.layers()]
    assert result.task == "zeroshot" and result.extra == {"examples": 16}
    for unit in result.units:
        assert unit.drift >= 0 and math.isfinite(unit.drift)
        assert unit.metric_drop == pytest.approx(result.baseline - unit.metric)
    by_name = {u.name: u for u in result.units}
    index = tiny.layer_index
    # 128×32 c_fc: rank 8 factors store 8·160 = 1,280 < 4,096 numbers: factorised, saves the difference.
    fc = by_name["visual.transformer.resblocks.0.mlp.c_fc"]
    m, n = index[fc.name].shape
    r = round(0.25 * min(m, n))
    assert fc.factorised == 1 and fc.saved == m * n - r * (m + n)
    # The bare projection (x @ W) cannot be factorised: truncated in place, nothing saved.
    proj = by_name["visual.proj"]
    assert proj.factorised == 0 and proj.saved == 0
    # truncation_loss is Σ_{i≥r} σ_i² / Σ σ_i² of the dense weight.
    from rcc.compression.layers import dense_weight

    sigma = torch.linalg.svdvals(dense_weight(tiny.module, index[fc.name]).detach().double())
    assert fc.proxies["truncation_loss"] == pytest.approx(float(sigma[r:].square().sum() / sigma.square().sum()))
    assert proj.proxies["wanda_mass"] is None and proj.proxies["output_error"] is None  # no calibration input
    assert set(result.correlations) == {"truncation_loss", "wanda_mass", "output_error", "weight_error"}
    assert result.scores()[fc.name] == fc.drift
    assert result.ranked()[0].drift == max(u.drift for u in result.units)


def test_a_pruning_scan_reports_the_pruned_wanda_mass_and_the_numbers_saved(tiny, probe):
    names = ["transformer.resblocks.0.mlp.c_fc", "transformer.resblocks.1.attn.in_proj.k"]
    layers = select_layers(tiny, names=names)
    result = scan_sensitivity(tiny, ScanSetting(sparsity=0.5, method="wanda"), probe, CALIBRATION, layers)
    for unit in result.units:
        m, n = tiny.layer_index[unit.name].shape
        assert unit.saved == round(0.5 * m * n)  # torch's l1_unstructured count
        assert unit.factorised == 0 and unit.proxies["truncation_loss"] is None
        assert 0 < unit.proxies["wanda_mass"] < 0.5  # Wanda drops the half with the least score mass
        assert 0 < unit.proxies["weight_error"] < 0.5  # the pruned entries' share of ‖W‖²


def test_grouping_by_block_gives_each_layer_its_groups_score(tiny, probe):
    result = scan_sensitivity(tiny, ScanSetting(rank=0.5, whiten=False), probe, None,
                              select_layers(tiny, towers=["text"]), group_by="block")
    assert [u.name for u in result.units] == ["text block 0", "text block 1", "text_projection"]
    block0 = result.units[0]
    assert len(block0.layers) == 6 and block0.block == 0 and block0.kind is None
    scores = result.scores()
    assert all(scores[name] == block0.drift for name in block0.layers)
    assert len(scores) == 13
    assert scan_units(tiny.layers(), "kind")[0][0] == "vision attn_q"
    with pytest.raises(AnalysisError, match="grouping 'tower' is unknown"):
        scan_units(tiny.layers(), "tower")


def test_results_round_trip_through_json_and_the_session_folder(tiny, probe, tmp_path):
    result = scan_sensitivity(tiny, ScanSetting(rank=0.5), probe, CALIBRATION,
                              select_layers(tiny, names=["text_projection", "transformer.resblocks.0.mlp.c_fc"]))
    path = sensitivity_path(tmp_path / "session", 3)
    assert path == tmp_path / "session" / "analysis" / "sensitivity-3.json"
    assert load_sensitivity(tmp_path / "session", 3) is None
    save_sensitivity(result, path)
    assert read_sensitivity(path) == result
    assert json.loads(path.read_text())["score"] == "drift"
    assert load_sensitivity(tmp_path / "session", 3) == result.scores()
    path.write_text("{not json")
    with pytest.raises(AnalysisError, match="cannot be read"):
        load_sensitivity(tmp_path / "session", 3)
    with pytest.raises(AnalysisError, match="malformed"):
        sensitivity_from_dict({"version": 1, "units": [{"name": "x"}]})


def test_a_scan_of_an_already_compressed_model_compresses_further_and_restores_it(tiny, probe):
    from rcc.compression.cascade import CascadeConfig, run_cascade
    from rcc.compression.plan import CompressionPlan, Rule

    plan = CompressionPlan(rules=(Rule(tower="text", kind="mlp_in", settings={"sparsity": 0.3, "rank": 12}),
                                  Rule(tower="vision", kind="attn_q", settings={"sparsity": 0.5})))
    run_cascade(tiny, plan, lambda model: 1.0, CALIBRATION, None, CascadeConfig(stages=("dare", "nullu"),
                                                                                 threshold=0.0))
    saved = _state(tiny)
    layers = select_layers(tiny, kinds=["mlp_in", "attn_q"])
    result = scan_sensitivity(tiny, ScanSetting(rank=0.25, sparsity=0.6), probe, CALIBRATION, layers)
    assert _same(tiny, saved)
    by_name = {u.name: u for u in result.units}
    fc = by_name["transformer.resblocks.0.mlp.c_fc"]  # rank 12 → 6, factors pruned 30 % → 60 %
    assert fc.factorised == 1 and 0 < fc.params_after < fc.params_before
    q = by_name["visual.transformer.resblocks.0.attn.in_proj.q"]  # pruned 50 % → 60 %, then factorised
    assert q.params_before == round(0.5 * 32 * 32) and q.saved > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 0.0}, "rank fraction 0.0 is out of range"),
    ({"rank": 1.5}, "rank fraction 1.5 is out of range"),
    ({"sparsity": 1.0}, "sparsity 1.0 is out of range"),
    ({"sparsity": 0.5, "method": "random"}, "method 'random' is unknown"),
    ({}, "compresses nothing"),
])
def test_bad_settings_are_refused_with_what_is_allowed(kwargs, message):
    with pytest.raises(AnalysisError, match=message):
        ScanSetting(**kwargs)


def test_unknown_layers_are_refused_with_a_suggestion(tiny):
    with pytest.raises(AnalysisError, match="did you mean 'text_projection'"):
        select_layers(tiny, names=["text_projektion"])
    with pytest.raises(AnalysisError, match="no layer matches"):
        select_layers(tiny, towers=["decoder"])


@pytest.mark.slow
def test_rcc_mini_scan_ranks_the_text_projection_above_a_harmless_query(rcc_mini):
    # Measured (docs/analysis): at 2 % rank, text.proj (rank 3 of 128) costs ~0.19 calib top-1, while
    # layer 4's query (rank 8 of 384) moves no prediction; at 50 % rank no single text layer costs any.
    from rcc.compression.calibration_sets import calibration_sets
    from rcc.data.registry import load_dataset

    harmless = "text.transformer.encoder.layer.4.attention.self.query"
    saved = _state(rcc_mini)
    calibration, _ = calibration_sets("digits", per_class=4, seed=0)
    result = scan_sensitivity(rcc_mini, ScanSetting(rank=0.02), outcome_probe(load_dataset("digits", "val")),
                              calibration, select_layers(rcc_mini, names=["text.proj", harmless]))
    assert _same(rcc_mini, saved)
    ranked = [u.name for u in result.ranked()]
    assert ranked == ["text.proj", harmless]
    by_name = {u.name: u for u in result.units}
    assert by_name["text.proj"].metric_drop >= 0.1
    assert abs(by_name[harmless].metric_drop) <= 0.01
    assert by_name["text.proj"].drift > 100 * by_name[harmless].drift
    assert result.baseline >= 0.95
