"""Int8 in sessions: the quant stage as an op, int8 blobs in the store, checkout and replay bit-identical,
recovery training that leaves int8 layers frozen, and the ONNX export op."""

import shutil
from pathlib import Path

import pytest
import torch

from rcc.compression.plan import CompressionPlan, Rule, plan_to_dict
from rcc.compression.quantized_layers import QuantizedLinear, quantized_tensor_names
from rcc.compression.stored_size import size_metrics
from rcc.session import ops as O
from rcc.session.replay import load_recipe, replay
from rcc.session.session import Session

pytestmark = pytest.mark.slow

# Text tower int8 (half of its MLP inputs pruned first); vision MLP inputs factorised then int8.
PLAN = CompressionPlan(rules=(Rule(tower="text", settings={"bits": 8}),
                              Rule(tower="text", kind="mlp_in", settings={"sparsity": 0.5}),
                              Rule(tower="vision", kind="mlp_in", settings={"rank": 4, "bits": 8})),
                       overrides={"text_projection": {"bits": None}}, seed=3)
TRAIN = O.Train(steps=3, batch_size=8, lr=1e-3, warmup_steps=1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread_for_the_module():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_root(tiny_spec) -> Path:
    return Path(tiny_spec.split("@")[1]).parent


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, tiny_spec):
    """root (1) → cascade with quant (2) → checkout 1 → checkout 2 → train (3) → onnx export."""
    directory = tmp_path_factory.mktemp("quant") / "s"
    with Session.create(directory, model=tiny_spec, data="digits", device="cpu") as session:
        session.apply(O.SetPlan(plan=plan_to_dict(PLAN)))
        cascade = session.apply(O.RunCascade(threshold=0.0, calib_per_class=2, quant_method="gptq"))
        with torch.inference_mode():
            tokens = session.model.tokenize(["a photo of a cat", "two birds"])
            int8_text = session.model.encode_text(tokens)
        int8_state = {k: v.clone() for k, v in session.model.module.state_dict().items()}
        session.apply(O.Checkout(node=1))
        dense_types = type(session.model.module.transformer.resblocks[0].mlp.c_fc).__name__
        session.apply(O.Checkout(node=2))
        with torch.inference_mode():
            back_text = session.model.encode_text(tokens)
        back_state = {k: v.clone() for k, v in session.model.module.state_dict().items()}
        trained = session.apply(TRAIN)
        trained_state = {k: v.clone() for k, v in session.model.module.state_dict().items()}
        exported = session.apply(O.Export(format="onnx", out="exports/onnx"))
    return dict(directory=directory, cascade=cascade, int8_text=int8_text, back_text=back_text,
                int8_state=int8_state, back_state=back_state, dense_types=dense_types, trained=trained,
                trained_state=trained_state, exported=exported)


def test_the_cascade_op_quantises_the_planned_layers_and_counts_int8_bytes(recorded):
    quant = [a for a in recorded["cascade"].result["attempts"] if a["stage"] == "quant"]
    assert len(quant) == 1 and quant[0]["accepted"] and quant[0]["changed"] > 12
    with Session.open(recorded["directory"], read_only=True) as session:
        root, node = session.nodes()[0], session.nodes()[1]
        assert node.metrics["size/bytes"] < root.metrics["size/bytes"] / 2
        state = session.graph.state(2)
        assert state.structure["quantized"]["transformer.resblocks.0.mlp.c_fc"] == {"bits": 8, "smoothed": False}
        assert state.structure["factorised"]["visual.transformer.resblocks.0.mlp.c_fc"] == 4
        # The store keeps the int8 values as int8 blobs (one byte each), next to their scales.
        values = session.store.get(state.tensors["transformer.resblocks.0.mlp.c_fc.weight"])
        assert values.dtype == torch.int8 and values.shape == (96, 24)
        assert session.store.get(state.tensors["transformer.resblocks.0.mlp.c_fc.weight_scale"]).shape == (96,)


def test_checkout_away_and_back_restores_int8_layers_bit_identically(recorded):
    assert recorded["dense_types"] == "Linear"  # the root node is float again
    assert torch.equal(recorded["back_text"], recorded["int8_text"])
    back = recorded["back_state"]
    assert set(back) == set(recorded["int8_state"])
    assert all(torch.equal(back[k], recorded["int8_state"][k]) for k in back)


def test_training_keeps_int8_layers_frozen_and_trains_the_float_ones(recorded):
    before, after = recorded["int8_state"], recorded["trained_state"]
    with Session.open(recorded["directory"], read_only=True) as session:
        assert session.graph.state(3).structure == session.graph.state(2).structure
    quantised = [name for name, tensor in after.items() if tensor.dtype == torch.int8]
    assert quantised and all(torch.equal(before[name], after[name]) for name in quantised)
    # Biases of int8 layers stay too; float layers (the vision tower's attention, the LayerNorms) move.
    assert torch.equal(before["transformer.resblocks.0.mlp.c_fc.bias"], after["transformer.resblocks.0.mlp.c_fc.bias"])
    assert not torch.equal(before["visual.transformer.resblocks.0.attn.out_proj.weight"],
                           after["visual.transformer.resblocks.0.attn.out_proj.weight"])
    assert recorded["trained"].result["losses"][-1] < recorded["trained"].result["losses"][0]


def test_the_onnx_export_op_writes_both_encoders_with_their_parity(recorded):
    result = recorded["exported"].result
    out = Path(result["out"])
    assert (out / "image_encoder.onnx").is_file() and (out / "text_encoder.onnx").is_file()
    assert result["format"] == "onnx" and result["total_bytes"] < result["dense_bytes"]
    assert result["text"]["min_cosine"] > 0.999 and result["image"]["min_cosine"] > 0.999


def test_replay_reproduces_the_int8_nodes_exactly(recorded, model_root, tmp_path):
    source = tmp_path / "copy"
    shutil.copytree(recorded["directory"], source, ignore=shutil.ignore_patterns("session.lock"))
    report = replay(load_recipe(source), tmp_path / "again", [model_root], device="cpu")
    assert report.rows and report.mismatches(0.0) == []
    with Session.open(source, read_only=True) as first, Session.open(tmp_path / "again", read_only=True) as again:
        for node in first.nodes():
            assert first.graph.state(node.id).tensors == again.graph.state(node.id).tensors, node.id


def test_size_metrics_of_the_live_model_name_int8_values_and_scales(recorded):
    with Session.open(recorded["directory"], device="cpu") as session:
        module = session.model.module
        names = quantized_tensor_names(module)
        assert "transformer.resblocks.0.mlp.c_fc.weight_scale" in names and "token_embedding.weight" in names
        assert isinstance(module.transformer.resblocks[1].attn.in_proj["q"], QuantizedLinear)
        assert size_metrics(session.model)["size/bytes"] == session.nodes()[-1].metrics["size/bytes"]
