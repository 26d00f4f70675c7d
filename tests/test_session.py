"""Sessions end to end: nodes and metrics, checkout across structures, branches, cancel, failures,
store dedupe, reopening, the single-writer lock, corrupt blobs, gc and progress."""

import os

import pytest
import torch
from torch import nn

from rcc.compression.layers import LowRankLinear, SplitAttention
from rcc.compression.plan import CompressionPlan, Rule, plan_to_dict
from rcc.compression.structure import structure_of
from rcc.errors import Cancelled, RccError
from rcc.session import ops as O
from rcc.session.lanes import graph_rows
from rcc.session.lock import SessionInUse
from rcc.session.progress import OpProgress
from rcc.session.session import Session

# Every MLP matrix half pruned: DARE changes a layer's weight and adds its mask, nothing else.
MLP_HALF = CompressionPlan(rules=(Rule(kind="mlp_in", settings={"sparsity": 0.5}),
                                  Rule(kind="mlp_out", settings={"sparsity": 0.5})))
# Vision attention split (q factorised rank 4), vision mlp_in factorised, every vision matrix pruned.
SPLIT = CompressionPlan(rules=(Rule(tower="vision", settings={"sparsity": 0.5}),
                               Rule(tower="vision", kind="attn_q", settings={"rank": 4}),
                               Rule(tower="vision", kind="mlp_in", settings={"rank": 4})))
# Another structure: text mlp_in rank 6 and text mlp_out pruned; vision untouched.
OTHER = CompressionPlan(rules=(Rule(tower="text", kind="mlp_in", settings={"rank": 6}),
                               Rule(tower="text", kind="mlp_out", settings={"sparsity": 0.3})), seed=3)
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster and steadier

VISION_MLP = ["visual.transformer.resblocks.0.mlp.c_fc", "visual.transformer.resblocks.1.mlp.c_proj",
              "transformer.resblocks.0.mlp.c_proj", "transformer.resblocks.1.mlp.c_fc"]


def _state(session) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in session.model.module.state_dict().items()}


def _assert_state(session, saved) -> None:
    now = session.model.module.state_dict()
    assert set(now) == set(saved)
    for key, value in saved.items():
        assert now[key].dtype == value.dtype and torch.equal(now[key], value), key


def _blob_bytes(session) -> int:
    return sum(p.stat().st_size for p in session.store.blobs.rglob("*.safetensors"))


def _picture(session):
    """Everything a failed or cancelled op must leave alone."""
    return {"head": session.head, "nodes": session.nodes(), "ops": session.ops(),
            "plan": session.plan, "plan setting": session.setting("plan"),
            "structure": structure_of(session.model.module), "blobs": session.store.all_hashes()}


@pytest.fixture
def tiny(tmp_path, tiny_spec):
    session = Session.create(tmp_path / "s", model=tiny_spec, data="digits", device="cpu")
    yield session
    session.close()


# -- rcc-mini: the root node's real metrics -------------------------------------------------------

@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    session = Session.create(tmp_path_factory.mktemp("mini") / "s", device="cpu")
    yield session
    session.close()


@pytest.fixture(scope="module")
def fresh_mini():
    from rcc.models.registry import load_model

    return load_model("rcc-mini", device="cpu")


@pytest.mark.slow
def test_the_root_node_holds_the_metrics_of_the_base_model(mini, fresh_mini):
    from rcc.data.registry import load_dataset
    from rcc.eval.suite import primary_metric, run_eval

    root = mini.nodes()[0]
    expected = primary_metric(run_eval(fresh_mini, load_dataset("digits", "val")))
    assert expected >= 0.9
    assert root.metrics["val/primary"] == expected
    params = sum(p.numel() for p in fresh_mini.module.parameters())
    assert params == 23_439_105
    assert root.metrics["size/params"] == root.metrics["size/total"] == params == root.params
    assert root.metrics["size/bytes"] == 4 * params  # fp32, nothing masked
    assert (root.id, root.parent, root.op_kind) == (1, None, "load_model")
    assert [mini.setting(k) for k in ("model", "data", "eval_split", "test_split")] == [
        "rcc-mini", "digits", "val", "test"]
    assert mini.splits() == {"layout": "train 70 % / val 10 % / test 20 % of scikit-learn's 1,797 digits "
                                       "(stratified, seed 0)", "items": {"train": 1257, "val": 180, "test": 360}}
    first = mini.ops()[0]
    assert (first.seq, first.kind, first.node_before, first.node_after) == (1, "load_model", None, 1)


@pytest.mark.slow
def test_evaluate_adds_test_metrics_to_the_head_node_without_making_a_node(mini, fresh_mini):
    from rcc.data.registry import load_dataset
    from rcc.eval.suite import primary_metric, run_eval

    if mini.head != 1:
        mini.apply(O.Checkout(node=1))
    nodes_before, ops_before = len(mini.nodes()), len(mini.ops())
    outcome = mini.apply(O.Evaluate(split="test"))
    assert outcome.new_node is None and outcome.node_after == 1
    root = mini.nodes()[0]
    fresh = run_eval(fresh_mini, load_dataset("digits", "test"))
    assert root.metrics["test/primary"] == root.metrics["test/top1"] == primary_metric(fresh) >= 0.9
    assert root.metrics["test/n"] == 360
    assert root.metrics["test/top5"] == fresh.metrics["top5"]
    assert "val/primary" in root.metrics and set(outcome.metrics) == {k for k in root.metrics if k.startswith("test/")}
    assert len(mini.nodes()) == nodes_before and len(mini.ops()) == ops_before + 1
    assert mini.ops()[-1].kind == "evaluate"
    # A split the dataset does not have: refused, nothing recorded.
    with pytest.raises(RccError, match="validation.*train, val, test"):
        mini.apply(O.Evaluate(split="validation"))
    assert len(mini.ops()) == ops_before + 1 and mini.nodes()[0] == root


@pytest.mark.slow
def test_a_cascade_on_rcc_mini_backs_off_to_stay_above_the_threshold(mini, fresh_mini):
    vision = CompressionPlan(rules=(Rule(tower="vision", settings={"sparsity": 0.95}),))
    mini.apply(O.SetPlan(plan=plan_to_dict(vision)))
    mini.apply(O.Checkout(node=1))
    outcome = mini.apply(O.RunCascade(stages=("dare",), threshold=0.97, max_attempts=3, calib_per_class=1,
                                      whiten=False))
    root, node = mini.nodes()[0], mini.nodes()[-1]
    assert node.id == outcome.new_node and node.parent == 1
    result = outcome.result
    dense = root.metrics["val/primary"]
    assert result["dense_metric"] == dense
    attempts = result["attempts"]
    assert [a["accepted"] for a in attempts] == [a["metric"] >= 0.97 * dense for a in attempts]
    assert attempts[0]["fraction"] == 1.0 and not attempts[0]["accepted"]  # 95 % of every vision matrix: too much
    assert attempts[-1]["accepted"] and attempts[-1]["fraction"] < 1.0
    assert node.metrics["val/primary"] == result["final_metric"] == attempts[-1]["metric"] >= 0.97 * dense
    layers = [layer for layer in mini.model.layers() if layer.tower == "vision"]
    pruned = sum(round(0.95 * attempts[-1]["fraction"] * layer.params) for layer in layers)
    assert result["params_before"] - result["params_after"] == pruned
    assert root.metrics["size/params"] - node.metrics["size/params"] == pruned
    # Back to the root: exactly the shipped weights again, attention fused as before.
    mini.apply(O.Checkout(node=1))
    fresh = fresh_mini.module.state_dict()
    now = mini.model.module.state_dict()
    assert set(now) == set(fresh) and all(torch.equal(now[k], v) for k, v in fresh.items())


# -- nodes, checkout, branches ------------------------------------------------------------------

def test_compressing_ops_make_child_nodes_with_fewer_parameters(tiny):
    root = tiny.nodes()[0]
    outcome = tiny.apply(O.SetPlan(plan=plan_to_dict(SPLIT)))
    assert outcome.new_node is None and tiny.head == 1 and tiny.plan == SPLIT
    assert len(tiny.nodes()) == 1 and [op.kind for op in tiny.ops()] == ["load_model", "set_plan"]

    stage = tiny.apply(O.RunStage(stage="nullu", fraction=1.0))
    assert stage.new_node == 2 and stage.node_before == 1 and tiny.head == 2
    assert stage.result["changed"] == 4  # two q, two mlp_in, factorised
    cascade = tiny.apply(O.RunCascade(stages=("dare",), threshold=0.5))
    assert cascade.new_node == 3 and tiny.head == 3

    nodes = tiny.nodes()
    assert [(n.id, n.parent, n.op_kind) for n in nodes] == [
        (1, None, "load_model"), (2, 1, "run_stage"), (3, 2, "run_cascade")]
    sizes = [n.metrics["size/params"] for n in nodes]
    assert sizes[0] == root.metrics["size/params"] > sizes[1] > sizes[2]
    assert [n.params for n in nodes] == sizes
    assert nodes[0].metrics["size/bytes"] > nodes[1].metrics["size/bytes"] > nodes[2].metrics["size/bytes"]
    # Factorising rank 4 stores 4·(out + in) numbers instead of out·in, for 2 q (32×32) and 2 mlp_in (128×32).
    assert sizes[0] - sizes[1] == 2 * (32 * 32 - 4 * 64) + 2 * (128 * 32 - 4 * 160)
    assert stage.result["params_before"] - stage.result["params_after"] == sizes[0] - sizes[1]
    assert all("val/primary" in n.metrics for n in nodes)
    assert cascade.result["attempts"][0]["accepted"] is True


def test_checkout_restores_each_node_bit_for_bit_across_structure_changes(tiny):
    saved = {1: _state(tiny)}
    root_structure = structure_of(tiny.model.module)
    tiny.apply(O.SetPlan(plan=plan_to_dict(SPLIT)))
    tiny.apply(O.RunStage(stage="nullu"))
    tiny.apply(O.RunStage(stage="dare", fraction=0.5))
    saved[3] = _state(tiny)
    split_structure = structure_of(tiny.model.module)
    assert split_structure["split"] and split_structure["factorised"] and split_structure["masks"]
    # A sibling of another structure, branched from the root.
    tiny.apply(O.Checkout(node=1))
    tiny.apply(O.SetPlan(plan=plan_to_dict(OTHER)))
    assert tiny.apply(O.RunStage(stage="nullu")).new_node == 4
    assert tiny.apply(O.RunStage(stage="dare")).new_node == 5
    saved[5] = _state(tiny)
    other_structure = structure_of(tiny.model.module)

    attn = lambda: tiny.model.module.visual.transformer.resblocks[0].attn  # noqa: E731
    c_fc = lambda: tiny.model.module.visual.transformer.resblocks[0].mlp.c_fc  # noqa: E731
    for node, structure in [(1, root_structure), (3, split_structure), (5, other_structure), (3, split_structure),
                            (1, root_structure), (5, other_structure), (1, root_structure)]:
        outcome = tiny.apply(O.Checkout(node=node))
        assert outcome.new_node is None and tiny.head == node
        _assert_state(tiny, saved[node])
        assert structure_of(tiny.model.module) == structure
        split = node == 3
        assert isinstance(attn(), SplitAttention) == split and isinstance(attn(), nn.MultiheadAttention) != split
        assert isinstance(c_fc(), LowRankLinear) == split
    # The working plan is the user's draft: checkouts keep it; each node keeps the plan that made it.
    assert tiny.plan == OTHER
    assert [tiny.graph.state(n).plan for n in (1, 3, 5)] == [
        plan_to_dict(CompressionPlan()), plan_to_dict(SPLIT), plan_to_dict(OTHER)]
    assert len(tiny.nodes()) == 5  # checkouts make no nodes


def test_checkout_between_nodes_of_one_structure_loads_only_the_tensors_that_differ(tiny):
    tiny.apply(O.SetPlan(plan=plan_to_dict(MLP_HALF)))
    layer = VISION_MLP[0]
    tiny.apply(O.RunStage(stage="dare", fraction=0.5, layers=(layer,)))
    tiny.apply(O.RunStage(stage="dare", fraction=1.0, layers=(layer,)))
    two, three = tiny.graph.state(2), tiny.graph.state(3)
    assert two.structure == three.structure
    differ = {name for name in two.tensors if two.tensors[name] != three.tensors[name]}
    assert differ == {f"{layer}.weight", f"{layer}.weight_mask"}
    sizes = tiny.graph.node_hashes([2])[2]
    loaded = tiny.apply(O.Checkout(node=2)).result["bytes_loaded"]
    assert loaded == sum(sizes[name][1] for name in differ) == 128 * 32 * (4 + 1)
    assert tiny.apply(O.Checkout(node=2)).result["bytes_loaded"] == 0  # already there


def test_a_model_changing_op_after_checking_out_an_older_node_starts_a_branch(tiny):
    tiny.apply(O.SetPlan(plan=plan_to_dict(MLP_HALF)))
    for layer in VISION_MLP[:2]:
        tiny.apply(O.RunStage(stage="dare", layers=(layer,)))
    saved3 = _state(tiny)
    tiny.apply(O.Checkout(node=2))
    outcome = tiny.apply(O.RunStage(stage="dare", layers=(VISION_MLP[2],)))
    assert (outcome.new_node, outcome.node_before, tiny.head) == (4, 2, 4)
    nodes = {n.id: n for n in tiny.nodes()}
    assert {i for i, n in nodes.items() if n.parent == 2} == {3, 4}
    assert nodes[3].parent == 2 and nodes[2].parent == 1
    assert [row.prefix for row in graph_rows(list(nodes.values()), tiny.head)] == [
        "◉ ", "│ ● ", "●─┘ ", "● "]
    tiny.apply(O.Checkout(node=3))  # the old branch is still whole
    _assert_state(tiny, saved3)


def test_label_and_note_name_a_node_without_making_one(tiny):
    tiny.apply(O.SetPlan(plan=plan_to_dict(MLP_HALF)))
    tiny.apply(O.RunStage(stage="dare", layers=(VISION_MLP[0],)))
    outcome = tiny.apply(O.Label(node=1, label="dense", note="the base model"))
    assert outcome.new_node is None and tiny.head == 2
    nodes = tiny.nodes()
    assert [(n.label, n.note) for n in nodes] == [("dense", "the base model"), ("", "")]
    tiny.apply(O.Label(node=1, label=""))
    assert (tiny.nodes()[0].label, tiny.nodes()[0].note) == ("", "")
    before = _picture(tiny)
    with pytest.raises(RccError, match="node 7 does not exist"):
        tiny.apply(O.Label(node=7, label="nope"))
    assert _picture(tiny) == before


# -- cancel and failure ---------------------------------------------------------------------------

def _cancel_after(calls: int):
    seen = []

    def progress(event):
        seen.append(event)

    return seen, progress, lambda: len(seen) >= calls


@pytest.mark.parametrize("calls", [0, 3, 12])
def test_a_cancelled_cascade_leaves_the_session_exactly_as_before(tiny, calls):
    tiny.apply(O.SetPlan(plan=plan_to_dict(SPLIT)))
    tiny.apply(O.RunStage(stage="dare", fraction=0.5, layers=(VISION_MLP[0],)))
    before, weights = _picture(tiny), _state(tiny)
    seen, progress, cancel = _cancel_after(calls)
    with pytest.raises(Cancelled):
        tiny.apply(O.RunCascade(stages=("dare", "nullu", "alphaedit"), threshold=0.5), progress, cancel)
    assert len(seen) >= calls
    assert _picture(tiny) == before
    _assert_state(tiny, weights)
    # Still usable: the same op, not cancelled, makes the next node.
    outcome = tiny.apply(O.RunCascade(stages=("dare", "nullu", "alphaedit"), threshold=0.5))
    assert outcome.new_node == 3 and outcome.node_before == 2


def test_a_cascade_cancelled_during_an_evaluation_stops_inside_it(tiny):
    # The cascade's evaluations check cancel between batches: the first check that says stop
    # must come from the evaluation code, not from the next layer after a whole evaluation.
    import traceback

    tiny.apply(O.SetPlan(plan=plan_to_dict(SPLIT)))
    before, weights = _picture(tiny), _state(tiny)
    callers = []

    def cancel() -> bool:
        callers.append("".join(traceback.format_stack(limit=6)))
        return True

    with pytest.raises(Cancelled):
        tiny.apply(O.RunCascade(stages=("dare", "nullu", "alphaedit"), threshold=0.5), cancel=cancel)
    assert len(callers) == 1 and "rcc/eval/" in callers[0].replace("\\", "/")
    assert _picture(tiny) == before
    _assert_state(tiny, weights)


def test_a_cancelled_stage_leaves_the_session_exactly_as_before(tiny):
    tiny.apply(O.SetPlan(plan=plan_to_dict(SPLIT)))
    before, weights = _picture(tiny), _state(tiny)
    seen, progress, cancel = _cancel_after(2)
    with pytest.raises(Cancelled):
        tiny.apply(O.RunStage(stage="nullu"), progress, cancel)
    assert _picture(tiny) == before
    _assert_state(tiny, weights)
    assert isinstance(tiny.model.module.visual.transformer.resblocks[0].attn, nn.MultiheadAttention)


@pytest.mark.parametrize("op, message", [
    (O.EditLayers(layers=("visual.no_such_layer",), settings={"sparsity": 0.5}), "'visual.no_such_layer'"),
    (O.RunStage(stage="dare"), "selects no layer"),
    (O.RunStage(stage="dare", layers=("text_projection",)), "selects no layer"),
    (O.RunStage(stage="dare", layers=("nope",)), "'nope'"),
    (O.RunCascade(), "selects no layer"),
    (O.Checkout(node=42), "node 42 does not exist"),
    (O.SetPlan(plan={"overrides": {"no.such.layer": {"sparsity": 0.5}}}), "'no.such.layer'"),
    (O.LoadModel(), "has a model already"),
])
def test_a_failing_op_records_nothing(tiny, op, message):
    tiny.apply(O.SetPlan(plan=plan_to_dict(CompressionPlan(rules=(Rule(name="visual.proj",
                                                                          settings={"sparsity": 0.5}),)))))
    tiny.apply(O.RunStage(stage="dare"))
    tiny.apply(O.SetPlan(plan=plan_to_dict(CompressionPlan())))  # now nothing is selected
    before, weights = _picture(tiny), _state(tiny)
    with pytest.raises(RccError) as info:
        tiny.apply(op)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert _picture(tiny) == before
    _assert_state(tiny, weights)


def test_create_refuses_a_directory_that_is_not_empty(tmp_path, tiny_spec):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "mine.txt").write_text("keep me")
    with pytest.raises(RccError, match="not empty"):
        Session.create(tmp_path / "s", model=tiny_spec, device="cpu")
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["mine.txt"]
    with pytest.raises(RccError, match="is not a session"):
        Session.open(tmp_path / "s")


def test_a_cancelled_or_failed_create_leaves_the_directory_empty(tmp_path, tiny_spec):
    with pytest.raises(Cancelled):
        Session.create(tmp_path / "s", model=tiny_spec, device="cpu", cancel=lambda: True)
    assert list((tmp_path / "s").iterdir()) == []
    with pytest.raises(RccError, match="validation"):
        Session.create(tmp_path / "s", model=tiny_spec, device="cpu", eval_split="validation")
    assert list((tmp_path / "s").iterdir()) == []
    with Session.create(tmp_path / "s", model=tiny_spec, device="cpu") as session:
        assert [n.id for n in session.nodes()] == [1]


# -- the store ------------------------------------------------------------------------------------

def test_nodes_that_change_one_layer_each_cost_about_that_layer_in_the_store(tiny):
    tiny.apply(O.SetPlan(plan=plan_to_dict(MLP_HALF)))
    for layer in VISION_MLP:
        before = _blob_bytes(tiny)
        parent = tiny.graph.state(tiny.head).tensors
        outcome = tiny.apply(O.RunStage(stage="dare", fraction=0.5, layers=(layer,)))
        grown = _blob_bytes(tiny) - before
        sizes = tiny.graph.node_hashes([outcome.new_node])[outcome.new_node]
        changed = {name for name, (digest, _) in sizes.items() if parent.get(name) != digest}
        assert changed == {f"{layer}.weight", f"{layer}.weight_mask"}, changed
        changed_bytes = sum(sizes[name][1] for name in changed)
        assert 0.9 * changed_bytes <= grown <= 1.1 * changed_bytes, (layer, grown, changed_bytes)
    assert len(tiny.nodes()) == 1 + len(VISION_MLP)
    # The whole store: the base model once, plus what the nodes changed.
    base = sum(size for _, size in tiny.graph.node_hashes([1])[1].values())
    assert _blob_bytes(tiny) <= 1.1 * base + 1.1 * sum(
        4 * 5 * n for n in (128 * 32, 32 * 128, 24 * 96, 96 * 24))


def test_gc_removes_unreferenced_blobs_and_never_a_referenced_one(tiny):
    tiny.apply(O.SetPlan(plan=plan_to_dict(MLP_HALF)))
    tiny.apply(O.RunStage(stage="dare", layers=(VISION_MLP[0],)))
    stray = tiny.store.put(torch.arange(1000, dtype=torch.float32) * 0.5)
    (tiny.store.tmp / "x.part").write_bytes(b"half")
    referenced = tiny.graph.reachable_hashes()
    assert stray.hash not in referenced and referenced <= tiny.store.all_hashes()
    size = tiny.store.size_of(stray.hash)
    report = tiny.gc()
    assert (report.removed, report.freed_bytes, report.kept) == (1, size, len(referenced))
    assert tiny.store.all_hashes() == referenced
    assert not (tiny.store.tmp / "x.part").exists()
    assert tiny.gc().removed == 0
    saved2 = _state(tiny)
    tiny.apply(O.Checkout(node=1))
    tiny.apply(O.Checkout(node=2))
    _assert_state(tiny, saved2)


# -- reopening and the lock -----------------------------------------------------------------------

def test_reopening_brings_back_the_head_node_bit_for_bit_and_the_plan(tmp_path, tiny_spec):
    directory = tmp_path / "s"
    with Session.create(directory, model=tiny_spec, device="cpu") as session:
        session.apply(O.SetPlan(plan=plan_to_dict(SPLIT)))
        session.apply(O.RunStage(stage="nullu"))
        session.apply(O.RunStage(stage="dare", fraction=0.5))
        session.apply(O.EditLayers(layers=("visual.proj",), settings={"sparsity": 0.25}))
        plan, saved, nodes = session.plan, _state(session), session.nodes()
        structure = structure_of(session.model.module)
    assert plan.overrides == {"visual.proj": {"sparsity": 0.25}}
    with Session.open(directory, device="cpu") as session:
        assert session.head == 3 and session.nodes() == nodes
        assert session.plan == plan
        assert structure_of(session.model.module) == structure
        _assert_state(session, saved)
        assert isinstance(session.model.module.visual.transformer.resblocks[1].attn, SplitAttention)
        # ... and carries on from there.
        outcome = session.apply(O.RunStage(stage="dare", fraction=1.0))
        assert (outcome.new_node, outcome.node_before) == (4, 3)
        session.apply(O.Checkout(node=1))
    with Session.open(directory, device="cpu") as session:
        assert session.head == 1 and session.plan == plan  # the checkout kept the working plan
        assert isinstance(session.model.module.visual.transformer.resblocks[1].attn, nn.MultiheadAttention)
    with Session.open(directory, device="cpu", load=False) as session:
        assert session.workspace is None and session.head == 1
        with pytest.raises(RccError, match="no model loaded"):
            _ = session.model


def test_a_second_writer_is_refused_in_one_line_while_readers_are_welcome(tiny):
    with pytest.raises(SessionInUse) as info:
        Session.open(tiny.directory, device="cpu")
    text = str(info.value)
    assert "\n" not in text and str(tiny.directory) in text and f"pid {os.getpid()}" in text
    with Session.open(tiny.directory, read_only=True) as reader:
        assert reader.read_only and reader.nodes() == tiny.nodes() and reader.ops() == tiny.ops()
        assert reader.head == tiny.head and reader.workspace is None
        with pytest.raises(RccError, match="read-only"):
            reader.apply(O.Evaluate())
        with pytest.raises(RccError, match="read-only"):
            reader.gc()
    tiny.apply(O.SetPlan(plan=plan_to_dict(MLP_HALF)))  # the writer is unaffected by the reader
    tiny.close()
    with Session.open(tiny.directory, device="cpu", load=False) as again:
        assert len(again.ops()) == 2


# -- corrupt blobs ----------------------------------------------------------------------------------

def test_a_corrupt_blob_is_reported_naming_the_node_and_tensor_and_the_session_stays_usable(tiny):
    saved = {1: _state(tiny)}
    tiny.apply(O.SetPlan(plan=plan_to_dict(MLP_HALF)))
    tiny.apply(O.RunStage(stage="dare", layers=(VISION_MLP[0],)))
    saved[2] = _state(tiny)
    tiny.apply(O.Checkout(node=1))
    tiny.apply(O.RunStage(stage="dare", layers=(VISION_MLP[1],)))
    saved[3] = _state(tiny)
    states = {n: tiny.graph.state(n).tensors for n in (1, 2, 3)}
    weight = f"{VISION_MLP[0]}.weight"
    digest = states[2][weight]
    assert digest not in set(states[1].values()) | set(states[3].values())  # only node 2 uses it
    path = tiny.store.path(digest)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10
    path.write_bytes(bytes(raw))
    before = _picture(tiny)
    with pytest.raises(RccError) as info:
        tiny.apply(O.Checkout(node=2))
    text = str(info.value)
    assert "node 2" in text and repr(weight) in text and digest[:12] in text and "\n" not in text
    assert _picture(tiny) == before and tiny.head == 3
    _assert_state(tiny, saved[3])
    tiny.apply(O.Checkout(node=1))
    _assert_state(tiny, saved[1])
    # A missing blob is reported the same way.
    raw[-3] ^= 0x10
    path.write_bytes(bytes(raw))  # the weight is whole again
    mask = f"{VISION_MLP[0]}.weight_mask"
    tiny.store.path(states[2][mask]).unlink()
    with pytest.raises(RccError, match=f"node 2: tensor '{mask}'.*missing"):
        tiny.apply(O.Checkout(node=2))
    assert tiny.head == 1
    tiny.apply(O.Checkout(node=3))
    _assert_state(tiny, saved[3])


# -- progress ---------------------------------------------------------------------------------------

def test_progress_events_count_layers_up_and_end_with_saving(tiny):
    tiny.apply(O.SetPlan(plan=plan_to_dict(SPLIT)))
    events: list[OpProgress] = []
    tiny.apply(O.RunStage(stage="dare", fraction=0.5), progress=events.append)
    assert all(isinstance(e, OpProgress) and e.op in ("run_stage", "evaluate") for e in events)
    layers = [e for e in events if e.phase == "dare"]
    assert [e.done for e in layers] == list(range(1, 14))  # 13 vision layers
    assert {e.total for e in layers} == {13} and len({e.detail for e in layers}) == 13
    assert events[-1].phase == "saving"
    assert [e.phase for e in events].index("evaluate") > [e.phase for e in events].index("dare")

    events.clear()
    tiny.apply(O.RunCascade(stages=("dare", "nullu"), threshold=0.5), progress=events.append)
    attempts = [e for e in events if e.accepted is not None]
    assert [e.phase for e in attempts] == ["dare", "nullu"]
    assert all(e.metric is not None and e.params is not None for e in attempts)
    # Every counted phase: calibration, the dense evaluation, each stage's layers, each attempt's
    # evaluation, saving; each reports done = 0 as it starts (or its first layer) and climbs to its total.
    runs: list[tuple[str, list[int], int]] = []
    for e in events:
        if e.total is None or e.metric is not None:
            continue
        if runs and runs[-1][0] == e.phase and runs[-1][2] == e.total and e.done >= runs[-1][1][-1]:
            runs[-1][1].append(e.done)
        else:
            runs.append((e.phase, [e.done], e.total))
    assert [phase for phase, _, _ in runs] == ["calibration", "evaluate", "dare", "evaluate", "nullu", "evaluate",
                                              "saving"]
    for phase, counts, total in runs:
        assert counts[0] == (1 if phase in ("dare", "nullu") else 0) and counts[-1] == total, (phase, counts)
        assert counts == sorted(counts)
    calibration = runs[0]
    assert calibration[2] == 10 * 16 + len(calibration_texts(tiny))  # images (16 per class) and texts
    assert events[-1].phase == "saving" and events[-1].done == events[-1].total
    attempt_sizes = [e.stored_bytes for e in attempts]
    assert attempt_sizes[-1] == tiny.nodes()[-1].metrics["size/bytes"]  # what the node stores after the last


def calibration_texts(session) -> tuple[str, ...]:
    calibration, _ = session.workspace.calibration(16, session.plan.seed)
    return calibration.texts


# -- more failure paths ---------------------------------------------------------------------------

def test_a_cancel_during_the_evaluation_after_a_stage_undoes_the_stage(tiny):
    tiny.apply(O.SetPlan(plan=plan_to_dict(SPLIT)))
    before, weights = _picture(tiny), _state(tiny)
    seen, progress, _ = _cancel_after(0)
    evaluating = lambda: any(e.phase == "evaluate" for e in seen)  # noqa: E731 - the stage itself has finished
    with pytest.raises(Cancelled):
        tiny.apply(O.RunStage(stage="nullu"), progress, evaluating)
    assert [e.phase for e in seen].count("nullu") == 4  # every layer was factorised before the cancel
    assert _picture(tiny) == before
    _assert_state(tiny, weights)
    assert isinstance(tiny.model.module.visual.transformer.resblocks[0].attn, nn.MultiheadAttention)


def test_a_failure_while_recording_puts_the_model_back_and_gc_drops_the_orphan_blobs(tiny, monkeypatch):
    tiny.apply(O.SetPlan(plan=plan_to_dict(SPLIT)))
    before, weights = _picture(tiny), _state(tiny)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tiny.graph, "record", disk_full)
    with pytest.raises(OSError):
        tiny.apply(O.RunStage(stage="nullu"))
    monkeypatch.undo()
    after = _picture(tiny)
    orphans = after.pop("blobs") - before.pop("blobs")
    assert after == before and orphans  # the new node's blobs were written before the commit failed
    _assert_state(tiny, weights)
    assert tiny.gc().removed == len(orphans)
    assert tiny.apply(O.RunStage(stage="nullu")).new_node == 2


def test_evaluate_after_a_checkout_adds_the_metrics_to_the_checked_out_node(tiny):
    tiny.apply(O.SetPlan(plan=plan_to_dict(MLP_HALF)))
    tiny.apply(O.RunStage(stage="dare", layers=(VISION_MLP[0],)))
    tiny.apply(O.Checkout(node=1))
    outcome = tiny.apply(O.Evaluate(split="test"))
    assert outcome.new_node is None and outcome.node_after == 1
    root, child = tiny.nodes()
    assert root.metrics["test/n"] == 360 and "test/top1" in root.metrics
    assert not any(key.startswith("test/") for key in child.metrics)


def test_edit_layers_sets_and_resets_overrides_of_the_working_plan(tiny):
    tiny.apply(O.SetPlan(plan=plan_to_dict(MLP_HALF)))
    tiny.apply(O.EditLayers(layers=(VISION_MLP[0], "visual.proj"), settings={"sparsity": 0.25}))
    assert tiny.plan.overrides == {VISION_MLP[0]: {"sparsity": 0.25}, "visual.proj": {"sparsity": 0.25}}
    tiny.apply(O.EditLayers(layers=("visual.proj",), reset=True))
    assert tiny.plan.overrides == {VISION_MLP[0]: {"sparsity": 0.25}}
    assert tiny.plan.rules == MLP_HALF.rules and len(tiny.nodes()) == 1
    with Session.open(tiny.directory, read_only=True) as reader:
        assert '"sparsity": 0.25' in reader.setting("plan")


def test_the_graph_can_be_read_from_another_thread_while_ops_run(tiny):
    import threading

    tiny.apply(O.SetPlan(plan=plan_to_dict(MLP_HALF)))
    stop, seen, errors = threading.Event(), [], []

    def read():
        while not stop.is_set():
            try:
                seen.append((len(tiny.nodes()), len(tiny.ops()), tiny.head))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for layer in VISION_MLP[:3]:
            tiny.apply(O.RunStage(stage="dare", layers=(layer,)))
    finally:
        stop.set()
        reader.join(timeout=30)
    assert errors == []
    assert len(seen) > 1
    for i in range(3):  # each count only grows (the three reads of one sample may straddle a commit)
        column = [sample[i] for sample in seen]
        assert column == sorted(column)
    assert (len(tiny.nodes()), len(tiny.ops()), tiny.head) == (4, 5, 4)


def test_model_ops_on_a_session_opened_without_its_model_load_it_first(tiny):
    """load=False (gc, a corrupt head) defers the model: the first op that needs it brings it in."""
    tiny.apply(O.SetPlan(plan=plan_to_dict(MLP_HALF)))
    tiny.apply(O.RunStage(stage="dare", layers=(VISION_MLP[0],)))
    at_head = _state(tiny)
    tiny.close()
    with Session.open(tiny.directory, device="cpu", load=False) as session:
        assert session.workspace is None
        outcome = session.apply(O.Evaluate(split="test"))
        assert session.head == 2 and "test/top1" in outcome.metrics
        _assert_state(session, at_head)  # evaluated the head node, not the base model
        session.apply(O.Checkout(node=1))
        assert session.head == 1


def test_a_session_whose_head_node_has_a_corrupt_blob_can_still_go_back_to_another_node(tiny):
    tiny.apply(O.SetPlan(plan=plan_to_dict(MLP_HALF)))
    saved1 = _state(tiny)
    tiny.apply(O.RunStage(stage="dare", layers=(VISION_MLP[0],)))
    weight = f"{VISION_MLP[0]}.weight"
    path = tiny.store.path(tiny.graph.state(2).tensors[weight])
    tiny.close()
    raw = bytearray(path.read_bytes())
    raw[-2] ^= 0x01
    path.write_bytes(bytes(raw))
    for _ in range(2):  # the failed open released the lock: the second try fails the same way
        with pytest.raises(RccError) as info:
            Session.open(tiny.directory, device="cpu")
        assert "node 2" in str(info.value) and repr(weight) in str(info.value)
    # Every other node is whole: the session must let the user go back to one of them.
    with Session.open(tiny.directory, device="cpu", load=False) as session:
        session.apply(O.Checkout(node=1))
        assert session.head == 1
        _assert_state(session, saved1)
