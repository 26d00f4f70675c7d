"""Structured pruning in sessions: store, checkout (shrinking and growing back), reopen, replay, compare,
search apply, recovery training and exports, all with changed shapes."""

import copy
import json
from pathlib import Path

import pytest
import torch

import rcc
from hf_tiny import random_images, save_tiny_blip, save_tiny_clip
from rcc.cli.main import main
from rcc.compression.calibration import CalibrationData
from rcc.compression.cascade import run_stage
from rcc.compression.plan import CompressionPlan, Rule, plan_to_dict
from rcc.compression.structure import structure_of
from rcc.errors import RccError
from rcc.models.registry import load_model
from rcc.compression.trial_record import make_record
from rcc.session import ops as O
from rcc.session.compare import compare_nodes
from rcc.exports.checkpoints import export_dense
from rcc.session.replay import load_recipe, replay
from rcc.session.session import Session
from rcc.session.state import manifest_of


# Module-wide one thread (the recorded session is built once): replay compares exact weights of a trained node.
pytestmark = pytest.mark.usefixtures("one_thread_module")

CHANNELS = {"sparsity": 0.5, "pattern": "channel", "method": "wanda", "correction": True}
HEADS = {"sparsity": 0.5, "pattern": "head", "method": "magnitude", "correction": True}
PLAN = CompressionPlan(rules=(Rule(kind="mlp_in", settings=CHANNELS), Rule(kind="attn_q", block=1, settings=HEADS)),
                       seed=3)
TEXTS = ["a photo of a cat", "three red birds", "a car"]
CALIBRATION = CalibrationData(images=random_images(8, seed=1), texts=("a photo of a cat", "two dogs", "a red car"))


def outputs(model):
    with torch.no_grad():
        pixels = model.preprocess_batch(random_images(3, seed=5))
        return model.encode_image(pixels), model.encode_text(model.tokenize(TEXTS))


@pytest.fixture(scope="module")
def model_root(tiny_spec) -> Path:
    return Path(tiny_spec.split("@")[1]).parent


@pytest.fixture(scope="module")
def recorded(one_thread_module, tmp_path_factory, tiny_spec):
    """Root (1) → structured stage (2) → checkout 1 → a plain prune (3) → checkout 2 → train (4)."""
    directory = tmp_path_factory.mktemp("structured") / "session"
    with Session.create(directory, model=tiny_spec, data="digits", device="cpu") as session:
        session.apply(O.SetPlan(plan=plan_to_dict(PLAN)))
        session.apply(O.RunStage(stage="dare", calib_per_class=4))                       # node 2
        session.apply(O.Checkout(node=1))
        session.apply(O.EditLayers(layers=("visual.transformer.resblocks.0.mlp.c_fc",),
                                   settings={"pattern": "unstructured"}))
        session.apply(O.RunStage(stage="dare", calib_per_class=4,
                                 layers=("visual.transformer.resblocks.0.mlp.c_fc",)))   # node 3
        session.apply(O.Checkout(node=2))
        session.apply(O.Train(steps=2, batch_size=8, eval_every=None))                    # node 4
    return directory


def test_nodes_store_narrow_shapes_and_checkout_shrinks_and_grows_them_back(recorded, tiny_spec):
    fresh = load_model(tiny_spec, device="cpu")
    with Session.open(recorded, device="cpu") as session:
        assert session.head == 4
        narrow = session.graph.state(2).structure
        assert narrow["resized"]["visual.transformer.resblocks.0.mlp.c_fc"] == {"shape": [64, 32], "dense": [128, 32]}
        assert narrow["heads"] == {"visual.transformer.resblocks.1.attn": {"heads": 1, "dense": 2},
                                   "transformer.resblocks.1.attn": {"heads": 1, "dense": 2}}
        assert session.graph.state(4).structure == narrow  # training kept the structure
        assert session.nodes()[3].metrics["size/params"] == session.nodes()[1].metrics["size/params"]
        assert session.nodes()[1].metrics["size/params"] < session.nodes()[0].metrics["size/params"]
        for target in (1, 2, 3, 1, 4, 3, 2):
            session.apply(O.Checkout(node=target))
            state = session.graph.state(target)
            structure, tensors = manifest_of(session.model.module)
            assert structure == state.structure and tensors == dict(state.tensors), target
        session.apply(O.Checkout(node=1))
        assert {layer.name: layer.shape for layer in session.model.layers()} == {
            layer.name: layer.shape for layer in fresh.layers()}
        for a, b in zip(outputs(session.model), outputs(fresh)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        session.apply(O.Checkout(node=2))
    with Session.open(recorded, device="cpu") as session:  # reopening rebuilds the narrow model from the spec
        assert session.head == 2
        teacher = session.model_at(2)
        assert structure_of(teacher.module) == session.graph.state(2).structure
        for a, b in zip(outputs(session.model), outputs(teacher)):
            assert torch.equal(a, b)


def test_replay_is_bit_identical(recorded, model_root, tmp_path):
    report = replay(load_recipe(recorded), tmp_path / "again", [model_root], device="cpu")
    assert report.rows and report.mismatches(0.0) == []
    with Session.open(recorded, read_only=True) as first, Session.open(tmp_path / "again", read_only=True) as second:
        for node in first.nodes():
            assert first.graph.state(node.id).tensors == second.graph.state(node.id).tensors, node.id
            assert first.graph.state(node.id).structure == second.graph.state(node.id).structure


def test_compare_shows_the_narrowed_layers(recorded):
    with Session.open(recorded, read_only=True) as session:
        comparison = compare_nodes(session.graph, 1, 2)
    forms = {layer.path: layer for layer in comparison.layers}
    c_fc = forms["visual.transformer.resblocks.0.mlp.c_fc"]
    assert c_fc.b.shape == (64, 32) and c_fc.b.dense_shape == (128, 32)
    assert c_fc.b.describe() == "dense, 64×32 of 128×32" and c_fc.a.describe() == "dense"
    assert forms["visual.transformer.resblocks.1.attn.out_proj"].b.describe() == "dense, 32×16 of 32×32"


def test_layers_command_lists_the_widths_of_a_session_node(recorded, tmp_path, capsys):
    assert main(["layers", "--session", str(recorded), "--node", "2", "--json", str(tmp_path / "l.json")]) == 0
    listed = {layer["name"]: layer for layer in json.loads((tmp_path / "l.json").read_text())["layers"]}
    c_proj = listed["visual.transformer.resblocks.0.mlp.c_proj"]
    assert c_proj["shape"] == [32, 64] and c_proj["dense_shape"] == [32, 128] and c_proj["stored"] == 32 * 64
    assert listed["visual.transformer.resblocks.1.attn.in_proj.q"]["heads"] == 1
    assert "narrowed by structured pruning" in capsys.readouterr().out


def test_search_apply_runs_a_structured_trial_record(tiny_spec, tmp_path):
    with Session.create(tmp_path / "s", model=tiny_spec, data="digits", device="cpu") as session:
        record = make_record(PLAN, ("dare",), calib_per_class=4, whiten=True, preserve=False, node=1)
        outcome = session.apply(O.ApplyTrial(study="s", trial=0, record=record.as_dict()))
        state = session.graph.state(outcome.new_node)
        assert state.structure["resized"]["transformer.resblocks.0.mlp.c_proj"]["shape"] == [24, 48]
        assert outcome.result["removed_fraction"] > 0.3


def test_compressed_export_loads_back_exactly(recorded, tmp_path):
    with Session.open(recorded, device="cpu") as session:
        session.apply(O.Export(format="compressed", out=str(tmp_path / "packed"), node=2))
        loaded = rcc.load_compressed(tmp_path / "packed")
        expected = session.model_at(2)
    assert structure_of(loaded.module) == structure_of(expected.module)
    for a, b in zip(outputs(loaded), outputs(expected)):
        assert torch.equal(a, b)
    manifest = json.loads((tmp_path / "packed" / "manifest.json").read_text())
    assert manifest["structure"]["resized"]


# -- dense exports ----------------------------------------------------------------------------------

def _uniform_channels(model, sparsity=0.5, **match):
    plan = CompressionPlan(rules=(Rule(kind="mlp_in", **match, settings={**CHANNELS, "sparsity": sparsity}),))
    run_stage(model, plan, "dare", 1.0, CALIBRATION)
    return model


def test_dense_export_of_narrowed_open_clip_loads_in_plain_open_clip(tiny_spec, tmp_path):
    import open_clip

    model = _uniform_channels(load_model(tiny_spec, device="cpu"), 0.3)
    report = export_dense(model, tmp_path / "dense")
    config = json.loads((tmp_path / "dense" / "open_clip_config.json").read_text())["model_cfg"]
    assert int(32 * config["vision_cfg"]["mlp_ratio"]) == 90 and int(24 * config["text_cfg"]["mlp_ratio"]) == 67
    module, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'dense'}")
    module.eval()
    expected_image, expected_text = outputs(model)
    with torch.no_grad():
        torch.testing.assert_close(module.encode_image(model.preprocess_batch(random_images(3, seed=5))),
                                   expected_image, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(module.encode_text(model.tokenize(TEXTS)["input_ids"]), expected_text,
                                   rtol=1e-5, atol=1e-6)
    assert module.visual.transformer.resblocks[1].mlp.c_fc.out_features == 90
    assert report.total_bytes < report.dense_bytes  # the saving is real on disk, in plain open_clip's format


@pytest.mark.parametrize("kind", ["clip", "blip"])
def test_dense_export_of_narrowed_transformers_models_loads_in_plain_transformers(kind, tmp_path):
    from transformers import BlipForImageTextRetrieval, CLIPModel

    source = save_tiny_clip(tmp_path / "m") if kind == "clip" else save_tiny_blip(tmp_path / "m")
    model = _uniform_channels(load_model(f"{'hf' if kind == 'clip' else 'hf-blip'}:{source}", device="cpu"), 0.4)
    export_dense(model, tmp_path / "dense")
    plain = (CLIPModel if kind == "clip" else BlipForImageTextRetrieval).from_pretrained(tmp_path / "dense").eval()
    assert plain.config.vision_config.intermediate_size == 22 and plain.config.text_config.intermediate_size == 22
    pixels = model.preprocess_batch(random_images(3, seed=5))
    with torch.no_grad():
        if kind == "clip":
            image = plain.get_image_features(pixel_values=pixels).pooler_output
        else:
            image = plain.vision_proj(plain.vision_model(pixel_values=pixels).last_hidden_state[:, 0, :])
    torch.testing.assert_close(image, outputs(model)[0], rtol=1e-5, atol=1e-6)


def test_dense_export_refuses_what_plain_configs_cannot_hold_and_names_onnx(tiny_spec, tmp_path):
    uneven = _uniform_channels(load_model(tiny_spec, device="cpu"), 0.5, tower="vision", block=0)
    with pytest.raises(RccError) as error:
        export_dense(uneven, tmp_path / "uneven")
    text = str(error.value)
    assert "the vision tower's blocks have MLP widths 64, 128" in text and "--format onnx" in text
    assert "\n" not in text and not (tmp_path / "uneven").exists()  # refused before anything was written
    headless = load_model(tiny_spec, device="cpu")
    run_stage(headless, CompressionPlan(rules=(Rule(kind="attn_q", settings=HEADS),)), "dare", 1.0, CALIBRATION)
    with pytest.raises(RccError, match=r"runs 1 of its 2 heads.*ONNX export \(--format onnx\)"):
        export_dense(headless, tmp_path / "heads")


def test_the_export_command_refuses_in_one_line_with_exit_2(recorded, tmp_path, capsys):
    code = main(["export", str(recorded), "--node", "2", "--format", "dense", "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "ONNX export" in err and len(err.splitlines()) == 1


def test_sensitivity_scan_of_channel_groups_leaves_the_model_bit_identical(tiny_spec):
    from rcc.analysis.probe import outcome_probe
    from rcc.analysis.sensitivity import ScanSetting, scan_sensitivity
    from rcc.data.registry import load_dataset

    model = load_model(tiny_spec, device="cpu")
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    result = scan_sensitivity(model, ScanSetting(sparsity=0.5, method="wanda", pattern="channel"),
                              outcome_probe(load_dataset("digits", "calib")), CALIBRATION)
    assert [unit.name for unit in result.units] == [layer.name for layer in model.layers() if layer.kind == "mlp_in"]
    assert all(unit.saved == unit.params_before // 2 for unit in result.units)  # half of both layers of each MLP
    after = model.module.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())


def test_a_search_space_over_channels_searches_the_mlp_leaders(tiny_spec):
    from rcc.compression.plan import resolve_plan
    from rcc.search.space import Bounds, SearchError, SpaceConfig, build_space, plan_from_params

    model = load_model(tiny_spec, device="cpu")
    config = SpaceConfig(level="layer", pattern="channel", sparsity=Bounds(0.0, 0.75, 0.25), multiplier=None)
    space = build_space(config, model.layers(), CompressionPlan())
    assert [layer.kind for layer in space.layers] == ["mlp_in"] * 4
    plan = plan_from_params(space, {dim.name: 0.5 for dim in space.dimensions})
    resolved = resolve_plan(plan, model.layers())
    assert {(p.pattern, p.sparsity) for n, p in resolved.items() if p.selected} == {("channel", 0.5)}
    with pytest.raises(SearchError, match="would remove all 2 heads"):
        build_space(SpaceConfig(level="layer", pattern="head", sparsity=Bounds(0.0, 0.8, None), multiplier=None),
                    model.layers(), CompressionPlan())


def test_rcc_mini_text_tower_exports_dense_after_uniform_channel_removal(rcc_mini, tmp_path):
    import open_clip

    model = _uniform_channels(copy.deepcopy(rcc_mini), 0.25, tower="text")
    export_dense(model, tmp_path / "dense")
    hf_config = json.loads((tmp_path / "dense" / "config.json").read_text())
    assert hf_config["intermediate_size"] == 1152
    module, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'dense'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'dense'}")
    with torch.no_grad():
        torch.testing.assert_close(module.eval().encode_text(tokenizer(TEXTS)), outputs(model)[1], rtol=1e-4, atol=1e-5)


def test_the_app_s_layer_state_shows_kept_units_and_knows_when_the_plan_is_applied(recorded):
    from rcc_tui.session_view import read_layer_state
    from rcc_tui.widgets.layer_tree import applied, planned_text, state_text, stored_fraction_saved

    with Session.open(recorded, device="cpu") as session:
        session.apply(O.Checkout(node=2))
        layers = session.model.layers()
        state = read_layer_state(session, layers)
        leader, head = "visual.transformer.resblocks.1.mlp.c_fc", "visual.transformer.resblocks.1.attn.in_proj.q"
        assert state[leader].units == (64, 128, "ch") and state_text(state[leader]) == "64/128 ch"
        assert state[head].units == (1, 2, "heads") and state[leader].stored == 64 * 32
        # Bytes against the dense width: the narrowed MLP saves half of its two layers, as the tree shows.
        consumer = "visual.transformer.resblocks.1.mlp.c_proj"
        assert (state[leader].stored_bytes, state[leader].dense_bytes) == (64 * 32 * 4, 128 * 32 * 4)
        assert (state[consumer].stored_bytes, state[consumer].dense_bytes) == (32 * 64 * 4, 32 * 128 * 4)
        index = {layer.name: layer for layer in layers}
        assert stored_fraction_saved([index[leader], index[consumer]], state) == 0.5
        from rcc.compression.plan import resolve_plan

        resolved = resolve_plan(session.plan, layers)
        assert applied(state[leader], resolved[leader]) and planned_text(resolved[leader]) == "→−50% channels"
        session.apply(O.Checkout(node=1))
        dense = read_layer_state(session, session.model.layers())
        assert not applied(dense[leader], resolved[leader]) and state_text(dense[leader]) == "dense"


def test_the_plan_command_writes_structured_plans_and_refuses_impossible_amounts(tiny_spec, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--model", tiny_spec, "--pattern", "channel", "--sparsity", "0.5", "--method", "wanda",
                 "--correction", "--out", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["rules"] == [{"kind": "mlp_in", "settings": {"sparsity": 0.5, "method": "wanda", "pattern": "channel",
                                                             "rank": None, "correction": True}}]
    printed = capsys.readouterr().out
    assert "0.5000" in printed  # half of every MLP's two layers: half of the selected (and partner) layers
    code = main(["plan", "--model", tiny_spec, "--pattern", "head", "--sparsity", "0.75", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "removes all 2 heads" in err and "attn.in_proj.q" in err


def test_run_ops_carry_the_allocation_and_refuse_an_unknown_one(tiny_spec, tmp_path):
    with pytest.raises(O.OpError, match="op 'run_stage': allocation 'even' is invalid; allowed: uniform, global"):
        O.RunStage(allocation="even")
    with Session.create(tmp_path / "s", model=tiny_spec, data="digits", device="cpu") as session:
        session.apply(O.SetPlan(plan=plan_to_dict(CompressionPlan(rules=(Rule(kind="mlp_in", settings=CHANNELS),)))))
        session.apply(O.RunStage(stage="dare", calib_per_class=2, allocation="global"))
        body = session.ops()[-1].body
        assert body["allocation"] == "global"
        widths = [layer.shape[0] for layer in session.model.layers() if layer.kind == "mlp_in"]
        assert sum(widths[:2]) == 128 and sum(widths[2:]) == 96  # each tower keeps half of its units in total
