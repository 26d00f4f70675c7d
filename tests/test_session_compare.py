"""Comparing two nodes: metrics side by side and the layers whose tensors differ."""

from __future__ import annotations

import pytest

from rcc.errors import RccError
from rcc.session.compare import LayerForm, compare_nodes, layer_form, layer_of

Q = "visual.transformer.resblocks.0.attn.in_proj.q"
ATTN = "visual.transformer.resblocks.0.attn"
FC = "visual.transformer.resblocks.0.mlp.c_fc"
PLAN = {"version": 1, "defaults": {"sparsity": 0.5}, "rules": [], "overrides": {FC: {"rank": 16}}, "seed": 0}


def test_state_dict_names_group_by_module_and_bare_tensors_stand_alone():
    assert layer_of(f"{Q}.weight") == layer_of(f"{Q}.weight_mask") == layer_of(f"{Q}.bias") == Q
    assert layer_of(f"{FC}.up") == layer_of(f"{FC}.down_mask") == FC
    assert layer_of(f"{ATTN}.in_proj_weight") == ATTN
    assert layer_of("visual.proj") == layer_of("visual.proj_mask") == "visual.proj"
    assert layer_of("logit_scale") == "logit_scale"


def test_layer_forms_read_the_structure():
    structure = {"split": [ATTN], "factorised": {FC: 8}, "masks": {f"{Q}.weight_mask": [4, 4],
                                                                  "visual.proj_mask": [2, 3],
                                                                  f"{FC}.up_mask": [5, 8]}}
    assert layer_form(ATTN, structure, set()) == LayerForm("split")
    assert layer_form(FC, structure, {f"{FC}.up"}) == LayerForm("factorised", rank=8, masked_factors=True)
    assert layer_form(Q, structure, {f"{Q}.weight"}).describe() == "masked 4×4"
    assert layer_form("visual.proj", structure, {"visual.proj"}).describe() == "masked 2×3"
    assert layer_form("x.y", structure, {"x.y.weight"}).describe() == "dense"
    assert layer_form("x.y", structure, set()).describe() == "—"
    assert LayerForm("factorised", rank=8, masked_factors=True).describe() == "rank 8 masked"
    int8 = {**structure, "quantized": {FC: {"bits": 8, "smoothed": False}, "x.y": {"bits": 8, "smoothed": False}}}
    assert layer_form(FC, int8, {f"{FC}.up"}).describe() == "rank 8 masked int8"
    assert layer_form("x.y", int8, {"x.y.weight"}).describe() == "int8"
    assert layer_of(f"{FC}.up_scale") == FC and layer_of(f"{Q}.weight_scale") == layer_of(f"{Q}.input_scale") == Q


@pytest.fixture(scope="module")
def session(tmp_path_factory, tiny_spec):
    """A tiny OpenCLIP (width 32) on digits: 1 root; 2 = DARE on q (splits the attention) and the
    bare visual.proj, labelled; 3 = branch from 1: Nullu rank 16 on c_fc, evaluated on test."""
    from rcc.session import ops as O
    from rcc.session.session import Session

    directory = tmp_path_factory.mktemp("compare") / "session"
    session = Session.create(directory, model=tiny_spec, data="digits", device="cpu")
    session.apply(O.SetPlan(plan=PLAN))
    session.apply(O.RunStage(stage="dare", layers=(Q, "visual.proj"), calib_per_class=2))
    session.apply(O.Label(node=2, label="dare q+proj"))
    session.apply(O.Checkout(node=1))
    session.apply(O.SetPlan(plan=PLAN))
    session.apply(O.RunStage(stage="nullu", layers=(FC,), calib_per_class=2))
    session.apply(O.Evaluate(split="test"))
    assert [n.id for n in session.nodes()] == [1, 2, 3]
    yield session
    session.close()


@pytest.mark.slow
def test_a_child_differs_from_its_parent_in_the_layers_its_op_changed(session):
    comparison = compare_nodes(session.graph, 1, 2)
    assert comparison.common_ancestor == 1
    layers = {layer.path: layer for layer in comparison.layers}
    assert set(layers) == {ATTN, f"{ATTN}.in_proj.q", f"{ATTN}.in_proj.k", f"{ATTN}.in_proj.v", "visual.proj"}
    assert (layers[ATTN].a.describe(), layers[ATTN].b.describe()) == ("dense", "split q/k/v")
    assert layers[ATTN].changed == ("in_proj_bias", "in_proj_weight") and layers[ATTN].bytes_b == 0
    assert (layers[Q].a.describe(), layers[Q].b.describe()) == ("—", "masked 32×32")
    assert layers[Q].changed == ("bias", "weight", "weight_mask")
    assert layers[f"{ATTN}.in_proj.k"].b == LayerForm("dense")
    assert (layers["visual.proj"].a.kind, layers["visual.proj"].b.mask_shape) == ("dense", (32, 16))
    assert layers["visual.proj"].changed == ("proj", "proj_mask")

    hashes = session.graph.node_hashes([1, 2])
    differing = {n for n in set(hashes[1]) | set(hashes[2]) if hashes[1].get(n, ("",))[0] != hashes[2].get(n, ("",))[0]}
    assert comparison.tensors_changed == len(differing) == sum(len(layer.changed) for layer in comparison.layers)
    assert comparison.bytes_a == sum(hashes[1][n][1] for n in differing if n in hashes[1])
    assert comparison.bytes_b == comparison.bytes_changed == sum(hashes[2][n][1] for n in differing if n in hashes[2])
    assert layers[Q].bytes_b == 32 * 32 * 4 + 32 * 4 + 32 * 32  # fp32 weight and bias, bool mask

    metrics = {m.key: m for m in comparison.metrics}
    assert comparison.metrics[0].key == "val/primary"
    assert metrics["size/params"].a == session.graph.node(1).metrics["size/params"]
    assert metrics["size/params"].difference == -(32 * 32 // 2 + 32 * 16 // 2)  # half of q and of proj
    assert comparison.node_b.label == "dare q+proj"


@pytest.mark.slow
def test_with_the_store_each_layer_shows_what_the_compressed_export_stores(session):
    comparison = compare_nodes(session.graph, 1, 2, store=session.store)
    layers = {layer.path: layer for layer in comparison.layers}
    # q pruned to half: 512 kept fp32 values + 1,024 mask bits packed in 128 bytes, and its bias;
    # in the store it is the dense weight, the bias and a one-byte-per-entry mask (more, not less).
    assert layers[Q].stored_b == 512 * 4 + 1024 // 8 + 32 * 4
    assert layers[Q].bytes_b == 32 * 32 * 4 + 32 * 4 + 32 * 32 > layers[Q].stored_b
    assert layers["visual.proj"].stored_a == 32 * 16 * 4
    assert layers["visual.proj"].stored_b == 256 * 4 + 512 // 8
    # Summed over the layers that differ, the export sizes change by what the nodes' size/bytes say.
    change = sum((layer.stored_b or 0) - (layer.stored_a or 0) for layer in comparison.layers)
    nodes = {node.id: node for node in session.nodes()}
    assert change == nodes[2].metrics["size/bytes"] - nodes[1].metrics["size/bytes"]
    assert compare_nodes(session.graph, 1, 2).layers[0].stored_a is None  # without the store: unknown


@pytest.mark.slow
def test_branches_compare_across_their_common_ancestor_with_every_metric_of_either(session):
    comparison = compare_nodes(session.graph, 2, 3)
    assert comparison.common_ancestor == 1
    layers = {layer.path: layer for layer in comparison.layers}
    assert (layers[FC].a.describe(), layers[FC].b.describe()) == ("dense", "rank 16")
    assert layers[FC].changed == ("down", "up", "weight")
    assert layers[FC].bytes_b == (128 * 16 + 16 * 32) * 4  # up and down; the bias is the same tensor
    assert (layers[ATTN].a.kind, layers[ATTN].b.kind) == ("split", "dense")  # 3 is on the other branch
    metrics = {m.key: m for m in comparison.metrics}
    assert metrics["test/primary"].a is None and metrics["test/primary"].b is not None
    assert metrics["test/primary"].difference is None
    assert set(metrics) >= {"val/primary", "size/params", "size/total", "size/bytes", "test/primary"}


@pytest.mark.slow
def test_a_node_compared_with_itself_differs_nowhere_and_unknown_nodes_are_refused(session):
    comparison = compare_nodes(session.graph, 3, 3)
    assert comparison.layers == () and comparison.tensors_changed == 0 and comparison.bytes_changed == 0
    assert all(m.difference == 0 for m in comparison.metrics)
    with pytest.raises(RccError, match="node 9 does not exist"):
        compare_nodes(session.graph, 1, 9)


@pytest.mark.slow
def test_a_read_only_open_compares_while_the_writer_holds_the_session(session):
    from rcc.session.session import Session

    with Session.open(session.directory, read_only=True) as reader:
        assert reader.workspace is None  # no model loaded
        assert compare_nodes(reader.graph, 1, 3) == compare_nodes(session.graph, 1, 3)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_compare_screen_reads_the_session_read_only_in_a_worker(session):
    from textual.app import App
    from textual.widgets import DataTable

    from rcc_tui.screens.compare_screen import CompareScreen
    from rcc_tui.workers import JobRunner

    class HostApp(App):  # the app's job runner runs the comparison
        def __init__(self) -> None:
            super().__init__()
            self.jobs = JobRunner(self)

    app = HostApp()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = CompareScreen(str(session.directory), 2, 3)
        app.push_screen(screen)
        for _ in range(300):
            await pilot.pause(0.1)
            if screen.comparison is not None or screen.error is not None:
                break
        assert screen.error is None
        assert screen.comparison == compare_nodes(session.graph, 2, 3, store=session.store)
        layers = screen.query_one("#compare-layers", DataTable)
        assert layers.row_count == len(screen.comparison.layers) and not layers.loading
