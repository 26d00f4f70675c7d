"""The engine's use cases (rcc.services) on a tiny OpenCLIP session: what the app and the CLI share.

Each check ends on what the engine itself records or measures: the plan an op records, the bytes
a node stores, the nodes a session holds, the files a command finds.
"""

from __future__ import annotations

import pytest

from rcc.compression.plan import CompressionPlan, plan_to_dict
from rcc.errors import RccError
from rcc.session import ops as O
from rcc.session.session import Session

pytestmark = pytest.mark.usefixtures("one_thread")

Q0 = "visual.transformer.resblocks.0.attn.in_proj.q"
FC0 = "visual.transformer.resblocks.0.mlp.c_fc"


@pytest.fixture
def tiny(tmp_path, tiny_spec):
    session = Session.create(tmp_path / "s", model=tiny_spec, data="digits", device="cpu")
    yield session
    session.close()


# -- edit preview ----------------------------------------------------------------------------------

def test_the_edit_preview_is_the_plan_the_op_records_and_its_bytes_are_what_the_stage_stores(tiny):
    from rcc.compression.layers import stored_bytes
    from rcc.services.edit_preview import preview_edit

    layers = tiny.model.layers()
    settings = {"sparsity": 0.5, "method": "magnitude"}
    preview = preview_edit(tiny.plan, layers, [FC0, Q0], settings)
    tiny.apply(O.EditLayers(layers=(FC0, Q0), settings=settings))
    assert plan_to_dict(preview.plan) == plan_to_dict(tiny.plan)  # the editor promised what the op recorded
    planned = preview.planned_bytes(layers, [FC0, Q0])
    before = tiny.nodes()[-1].metrics["size/bytes"]
    tiny.apply(O.RunStage(stage="dare", layers=(FC0, Q0), calib_per_class=2))
    index = tiny.model.layer_index
    assert planned == sum(stored_bytes(tiny.model.module, index[name]) for name in (FC0, Q0))
    fc0, q0 = index[FC0], index[Q0]
    assert planned == (fc0.params // 2 + q0.params // 2) * 4 + (fc0.params + q0.params) // 8
    node = tiny.nodes()[-1]
    assert node.metrics["size/bytes"] == before - (fc0.params + q0.params) * 4 + planned  # what size_metrics says


def test_the_edit_preview_of_a_channel_pattern_counts_the_narrowed_partner_and_no_mask(tiny):
    from rcc.compression.layers import stored_bytes
    from rcc.services.edit_preview import preview_edit

    proj0 = FC0.replace("c_fc", "c_proj")
    layers = tiny.model.layers()
    index = {layer.name: layer for layer in layers}
    settings = {"sparsity": 0.5, "method": "magnitude", "pattern": "channel"}
    preview = preview_edit(tiny.plan, layers, [FC0], settings)
    assert preview.with_partners(layers, [FC0]) == (FC0, proj0)  # mlp_out loses the same hidden units
    planned = preview.planned_bytes(layers, [FC0, proj0])
    assert planned == (index[FC0].params + index[proj0].params) // 2 * 4  # half the widths, no mask bits
    tiny.apply(O.EditLayers(layers=(FC0,), settings=settings))
    tiny.apply(O.RunStage(stage="dare", layers=(FC0,), calib_per_class=2))
    after = tiny.model.layer_index
    assert after[FC0].shape[0] == index[FC0].shape[0] // 2  # really narrower, as promised
    assert planned == sum(stored_bytes(tiny.model.module, after[name]) for name in (FC0, proj0))


def test_the_edit_preview_counts_int8_as_a_byte_a_value_plus_a_float32_scale_a_row(tiny):
    from rcc.compression.layers import stored_bytes
    from rcc.services.edit_preview import preview_edit

    layers = tiny.model.layers()
    tiny.apply(O.EditLayers(layers=(FC0,), settings={"sparsity": 0.5, "method": "magnitude", "bits": 8}))
    preview = preview_edit(tiny.plan, layers, [Q0], {"rank": 4, "bits": 8})
    tiny.apply(O.EditLayers(layers=(Q0,), settings={"rank": 4, "bits": 8}))
    planned = {name: preview.planned_bytes(layers, [name]) for name in (FC0, Q0)}
    before = tiny.nodes()[-1].metrics["size/bytes"]
    tiny.apply(O.RunCascade(stages=("dare", "nullu", "quant"), threshold=0.0, layers=(FC0, Q0), calib_per_class=2,
                            quant_embeddings=False))
    index = tiny.model.layer_index
    assert planned == {name: stored_bytes(tiny.model.module, index[name]) for name in planned}
    fc0, q0 = index[FC0], index[Q0]
    assert planned[FC0] == fc0.params // 2 + fc0.shape[0] * 4 + fc0.params // 8  # kept int8, row scales, mask
    assert planned[Q0] == 4 * sum(q0.shape) + (q0.shape[0] + 4) * 4  # both factors int8, scales of m + r rows
    node = tiny.nodes()[-1]
    assert node.metrics["size/bytes"] == before - (fc0.params + q0.params) * 4 + sum(planned.values())


def test_the_edit_preview_refuses_what_the_op_refuses_in_the_same_words(tiny):
    from rcc.services.edit_preview import preview_edit

    with pytest.raises(RccError, match=r"sparsity 'abc' is not a number; allowed: 0 ≤ sparsity < 1"):
        preview_edit(tiny.plan, tiny.model.layers(), [FC0], {"sparsity": "abc"})
    with pytest.raises(RccError, match="sparsity 1.5 is out of range"):
        preview_edit(tiny.plan, tiny.model.layers(), [FC0], {"sparsity": 1.5})
    unchanged = preview_edit(tiny.plan, tiny.model.layers(), [FC0], {})
    assert unchanged.plan == tiny.plan and unchanged.budget is None


# -- an op that changes no tensor ------------------------------------------------------------------

def test_an_op_that_changes_no_tensor_is_recorded_without_a_node_and_says_so(tiny):
    from rcc.services.outcomes import describe_outcome

    tiny.apply(O.EditLayers(layers=(FC0,), settings={"sparsity": 0.5, "method": "magnitude"}))
    cascade = O.RunCascade(stages=("dare",), threshold=0.0, layers=(FC0,), calib_per_class=2)
    first = tiny.apply(cascade)
    assert first.new_node == 2 and not first.unchanged
    again = tiny.apply(cascade)  # the layer is at its planned sparsity already: nothing left to do
    assert again.unchanged and again.new_node is None and again.node_after == 2 == tiny.head
    assert [n.id for n in tiny.nodes()] == [1, 2]  # no copy of node 2
    assert [o.kind for o in tiny.ops()][-1] == "run_cascade" and tiny.ops()[-1].result["unchanged"] is True
    text = describe_outcome(again, tiny.nodes())
    assert text.headline == f"#{again.seq} run_cascade changed no tensor: no node recorded (node 2 stays current)"
    made = describe_outcome(first, tiny.nodes())
    stored = tiny.nodes()[1].metrics["size/bytes"]
    assert made.headline.startswith(f"#{first.seq} run_cascade → node 2: val ")  # the metric names its split
    assert f"{stored:,.0f} bytes stored" in made.headline and "from node 1" in made.headline


# -- sessions: names, paths, the latest ------------------------------------------------------------

def test_sessions_are_found_by_name_or_path_and_the_latest_demo_is_known(tmp_path, tiny_spec, monkeypatch):
    from rcc.services.sessions import (
        find_session,
        latest_session,
        list_sessions,
        new_session_dir,
        reopen_command,
    )

    home = tmp_path / "home"
    monkeypatch.setenv("RCC_SESSIONS_DIR", str(home))
    first = new_session_dir()
    Session.create(first, model=tiny_spec, data="digits", device="cpu").close()
    second = new_session_dir()
    assert second != first and second.parent == home  # a second session in the same second gets its own name
    with Session.create(second, model=tiny_spec, data="digits", device="cpu") as session:
        session.apply(O.Label(node=1, label="newer"))
    entries = list_sessions()
    assert [e.name for e in entries] == sorted([first.name, second.name])
    assert all(e.nodes == 1 and e.head == 1 and e.head_eval is not None for e in entries)
    assert entries[0].head_eval_text() == f"val {entries[0].head_eval:.4f}"  # as `session ls` prints it
    assert find_session(first.name) == home / first.name  # the name `session ls` prints
    assert find_session(str(second)) == second  # or a path
    with pytest.raises(RccError, match="is not a session; allowed: a session directory .* or a name from"):
        find_session("no-such-session")
    latest = latest_session()
    assert latest is not None and latest.name in (first.name, second.name)
    assert latest.last_change == max(e.last_change for e in entries)
    assert latest_session(demo_only=True) is None  # these are tiny OpenCLIP sessions, not rcc-mini on digits
    assert reopen_command(second) == f"rcc-tui open {second.name}"
    assert reopen_command(tmp_path / "elsewhere" / "s") == f"rcc-tui open {tmp_path / 'elsewhere' / 's'}"
    assert latest.describe().startswith(f"{latest.name} ({tiny_spec} on digits, 1 node, last change ")


def test_new_sessions_go_to_the_data_homes_sessions_folder_unless_told_otherwise(tmp_path, monkeypatch):
    from rcc.services.sessions import new_session_dir, sessions_home

    monkeypatch.delenv("RCC_SESSIONS_DIR", raising=False)
    monkeypatch.setenv("RCC_DATA_HOME", str(tmp_path / "data"))
    assert sessions_home() == tmp_path / "data" / "sessions"  # beside the shared store, data/store
    assert new_session_dir().parent == tmp_path / "data" / "sessions"
    monkeypatch.setenv("RCC_SESSIONS_DIR", str(tmp_path / "mine"))
    assert new_session_dir().parent == tmp_path / "mine"


def test_the_sessions_home_holds_nothing_when_it_does_not_exist(tmp_path, monkeypatch):
    from rcc.services.sessions import latest_session, list_sessions

    monkeypatch.setenv("RCC_SESSIONS_DIR", str(tmp_path / "none"))
    assert list_sessions() == [] and latest_session() is None


def test_an_empty_plan_preview_needs_no_model():
    from rcc.schema.layers import LayerInfo
    from rcc.services.edit_preview import preview_edit

    layers = [LayerInfo("a", "vision", 0, "mlp_in", (8, 4), "a.weight")]
    preview = preview_edit(CompressionPlan(), layers, ["a"], {"rank": 2})
    assert preview.summary.layers[0].after == 2 * (8 + 4) and preview.planned_bytes(layers, ["a"]) == 24 * 4
