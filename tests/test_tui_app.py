"""The workbench app, driven by Pilot: every flow ends by checking the Session's own state.

One rcc-mini session is created headlessly per module and copied for each test (creating one
costs ~10 s; opening a copy ~4 s). Plans touch one or two layers so stages take seconds. The
command-line wiring, the import budget of the first frame and the worker bridge have quick tests
at the end.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from tui_pilot import (
    make_app,
    op_kinds,
    ready,
    select_by_pattern,
    settle,
    state_of,
    tap,
    type_into,
    wait_until,
)

from rcc.session import ops as O
from rcc.session.session import Session

C_FC = "visual.transformer.resblocks.0.mlp.c_fc"
C_PROJ = "visual.transformer.resblocks.0.mlp.c_proj"
SIZE = (120, 40)



# -- opening ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.asyncio
async def test_opening_the_demo_paints_first_then_loads_the_model_in_a_worker(tmp_path):
    directory = tmp_path / "new-session"
    app = make_app(directory, new=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.main.view is None  # the first frame is up before the model is loaded
        assert app.main.query_one("#layers").loading
        assert "torch" not in app.title
        await ready(pilot)
        session = app.session
        nodes = session.nodes()
        assert [n.op_kind for n in nodes] == ["load_model"] and session.head == nodes[0].id
        assert nodes[0].metrics["eval/primary"] > 0.9
        assert op_kinds(session) == ["load_model"]
        tree = app.main.query_one("#layer-tree")
        assert [child.data.tower for child in tree.root.children] == ["vision", "text"]
        assert "ready" in str(app.main.query_one("#status").render())
        assert app.theme == "rcc-dark"
    # Quitting closed the session: its lock is free, and it opens again with the same state.
    with Session.open(directory, device="cpu", load=False) as again:
        assert [n.id for n in again.nodes()] == [nodes[0].id]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_an_existing_session_opens_at_its_head(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.session.head == 1
        assert len(app.main.view.layers) == 62
        assert app.main.query_one("#history").row_count == 1


@pytest.mark.slow
@pytest.mark.asyncio
async def test_opening_a_locked_session_is_an_error_message_not_a_crash(session_dir):
    holder = Session.open(session_dir, device="cpu", load=False)
    try:
        app = make_app(session_dir)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: not app.main.runner.busy, 60, "the open to fail")
            await pilot.pause()
            assert app.session is None
            assert "in use" in str(app.main.query_one("#status").render())
            assert any("in use" in str(n.message) for n in app._notifications)
            await pilot.press("r")  # no session: refused with a message, no crash
            await pilot.pause()
    finally:
        holder.close()


# -- the layer tree -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.asyncio
async def test_expand_select_and_select_by_pattern(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        tree = app.main.query_one("#layer-tree")
        vision = tree.root.children[0]
        assert not vision.children  # children are built on expand
        await pilot.press("enter")  # expand the vision tower
        await pilot.pause()
        assert [c.data.kind for c in vision.children][:4] == ["block"] * 4
        await pilot.press("down", "space")  # select block 0 (without expanding it)
        await pilot.pause()
        block0 = {layer.name for layer in app.main.view.layers if layer.tower == "vision" and layer.block == 0}
        assert tree.selection == block0 and len(block0) == 6
        assert set(app.main.targets) == block0
        assert str(vision.label).startswith("◧")  # the tower is partly selected
        await pilot.press("space")  # toggles the whole block off again
        await pilot.pause()
        assert tree.selection == set()

        await select_by_pattern(pilot, "tower:vision kind:mlp_in")
        assert tree.selection == {f"visual.transformer.resblocks.{i}.mlp.c_fc" for i in range(4)}
        await select_by_pattern(pilot, "+resblocks.3.mlp.c_proj")
        assert len(tree.selection) == 5
        await select_by_pattern(pilot, "kind:nonsense")  # refused inline, the selection is kept
        assert "kind 'nonsense' is unknown" in str(app.main.query_one("#selection-info").render())
        assert len(tree.selection) == 5
        tree.focus()
        await pilot.press("u")
        await pilot.pause()
        assert tree.selection == set()
        assert op_kinds(app.session) == ["load_model"]  # selecting changes nothing in the session


# -- the layer editor ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.asyncio
async def test_edit_a_layer_then_a_pattern_each_as_one_op(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        editor = app.main.query_one("#editor")
        await select_by_pattern(pilot, C_FC)
        assert app.main.targets == (C_FC,)
        await type_into(pilot, "#sparsity", "0.5")
        await pilot.pause()
        counts = str(app.main.query_one("#editor-counts").render())
        assert "65.5K → 32.8K" in counts  # 512×128 at 50%
        await pilot.press("enter")  # enter in a field applies
        await settle(pilot)
        assert app.session.plan.overrides == {C_FC: {"sparsity": 0.5}}
        assert op_kinds(app.session)[-1] == "edit_layers"
        assert app.session.ops()[-1].body["layers"] == [C_FC]
        assert not editor.error

        # Two layers, one op: an N:M pattern with the sparsity it implies.
        await select_by_pattern(pilot, "resblocks.1.mlp.c_")
        assert len(app.main.targets) == 2
        await type_into(pilot, "#pattern-field", "2:4")
        await type_into(pilot, "#sparsity", "50%")
        app.main.query_one("#layer-tree").focus()
        await pilot.press("a")
        await settle(pilot)
        ops = app.session.ops()
        assert [r.kind for r in ops] == ["load_model", "edit_layers", "edit_layers"]
        assert ops[-1].body["settings"] == {"pattern": "2:4", "sparsity": 0.5}
        for name in ("visual.transformer.resblocks.1.mlp.c_fc", "visual.transformer.resblocks.1.mlp.c_proj"):
            assert app.session.plan.overrides[name] == {"pattern": "2:4", "sparsity": 0.5}
        # The tree shows what the plan will do.
        assert "→2:4" in str(app.main.query_one("#layer-tree").expand_path(
            "visual.transformer.resblocks.1.mlp.c_fc").label)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_bad_value_is_refused_inline_and_nothing_is_applied(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        editor = app.main.query_one("#editor")
        before = state_of(app.session)
        await select_by_pattern(pilot, C_FC)
        await type_into(pilot, "#sparsity", "1.5")
        await pilot.pause()
        assert editor.error == "sparsity 1.5 is out of range; allowed: 0 ≤ sparsity < 1"
        line = app.main.query_one("#editor-error")
        assert line.display and "1.5" in str(line.render())
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert not app.main.runner.busy
        assert state_of(app.session) == before  # no op recorded, plan unchanged

        await type_into(pilot, "#sparsity", "0.5")
        await type_into(pilot, "#rank", "999")  # more than min(512, 128)
        await pilot.pause()
        assert "rank 999 is out of range" in editor.error and "1 ≤ rank ≤ 128" in editor.error
        await type_into(pilot, "#rank", "energy:2")
        await pilot.pause()
        assert "energy 2.0 is out of range" in editor.error
        app.main.query_one("#layer-tree").focus()
        await pilot.press("a")
        await pilot.pause(0.3)
        assert state_of(app.session) == before

        # The run panel refuses too: a fraction above 1.
        await type_into(pilot, "#fraction", "1.5")
        app.main.query_one("#layer-tree").focus()
        await pilot.press("r")
        await pilot.pause(0.3)
        assert "fraction 1.5 is invalid" in app.main.query_one("#run").error
        assert state_of(app.session) == before


@pytest.mark.slow
@pytest.mark.asyncio
async def test_rank_auto_takes_its_budget_from_the_editor_in_one_op(session_dir):
    from rcc.compression.plan import summarize_plan

    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        editor = app.main.query_one("#editor")
        before = state_of(app.session)
        await select_by_pattern(pilot, "visual.transformer.resblocks.*.mlp.*")
        targets = editor.targets
        assert len(targets) >= 2 and all(".mlp." in name for name in targets)
        await type_into(pilot, "#rank", "auto")
        await pilot.pause()
        assert "rank 'auto' needs the plan's budget" in editor.error  # auto without a budget is refused inline
        await type_into(pilot, "#budget", "1.5")
        await pilot.pause()
        assert editor.error.startswith("budget 1.5 is invalid; allowed: a number 0 < budget < 1")
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert state_of(app.session) == before  # refused: nothing recorded

        await type_into(pilot, "#budget", "40%")
        await pilot.pause()
        assert editor.error == ""
        counts = str(app.main.query_one("#editor-counts").render())
        assert "≈" in counts  # the auto ranks are the budget's estimate until the SVD runs
        await pilot.press("enter")
        await settle(pilot)
        ops = app.session.ops()
        assert ops[-1].kind == "edit_layers" and len(ops) == len(before[0]) + 1
        assert ops[-1].body["budget"] == 0.4 and ops[-1].body["settings"] == {"rank": "auto"}
        plan = app.session.plan
        assert plan.budget == 0.4
        assert {name: str(plan.overrides[name]["rank"]) for name in targets} == dict.fromkeys(targets, "auto")
        # What the editor promised is what the engine's summary of the recorded plan says.
        summary = summarize_plan(plan, app.main.view.layers)
        chosen = [c for c in summary.layers if c.name in set(targets)]
        kept = sum(c.after for c in chosen) / sum(c.before for c in chosen)
        assert kept == pytest.approx(0.4, abs=0.02)
        assert app.main.query_one("#budget").value == "0.4"  # the field shows the plan's budget now


@pytest.mark.slow
@pytest.mark.asyncio
async def test_int8_is_a_field_of_the_editor_and_the_quant_stage_runs_from_the_panel(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await select_by_pattern(pilot, C_FC)
        app.main.query_one("#bits").toggle()
        app.main.query_one("#layer-tree").focus()
        await pilot.press("a")
        await settle(pilot)
        assert app.session.plan.overrides == {C_FC: {"bits": 8}}
        assert app.session.ops()[-1].body["settings"] == {"bits": 8}
        assert "→int8" in str(app.main.query_one("#layer-tree").expand_path(C_FC).label)
        app.main.query_one("#stage").value = "quant"
        app.main.query_one("#layer-tree").focus()
        await pilot.press("r")
        await settle(pilot)
        body = app.session.ops()[-1].body
        assert (body["op"], body["stage"], body["layers"]) == ("run_stage", "quant", [C_FC])
        assert app.main.view.state[C_FC].bits == 8
        label = str(app.main.query_one("#layer-tree").expand_path(C_FC).label)
        assert "int8" in label and "→" not in label  # applied: the plan's mark is gone
        assert app.main.query_one("#bits").value  # the editor shows the layer's plan


# -- running ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.asyncio
async def test_run_a_stage_then_check_out_the_root_and_branch_then_label(session_dir, tmp_path):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await select_by_pattern(pilot, C_FC)
        await type_into(pilot, "#sparsity", "0.5")
        await pilot.press("enter")
        await settle(pilot)
        app.main.query_one("#layer-tree").focus()
        await pilot.press("r")  # run the stage set in the run panel (dare ×1) on the target
        await settle(pilot)
        nodes = app.session.nodes()
        assert [n.op_kind for n in nodes] == ["load_model", "run_stage"]
        stage = nodes[-1]
        assert stage.parent == 1 and app.session.head == stage.id
        assert stage.metrics["size/params"] == nodes[0].metrics["size/params"] - 32768
        assert stage.metrics["eval/primary"] > 0.8
        assert app.session.ops()[-1].body["layers"] == [C_FC]
        assert app.main.view.state[C_FC].sparsity == pytest.approx(0.5)
        chart = app.main.query_one("#metric-chart")
        assert len(chart.points) >= 2  # the node before and the stage's result

        # Check out the root from the history graph, then branch from it.
        await pilot.press("2")
        history = app.main.query_one("#history")
        assert history.has_focus and history.selected_node == stage.id
        await pilot.press("down", "enter")  # the root is below its child: newest on top
        await settle(pilot)
        assert app.session.head == 1
        assert op_kinds(app.session)[-1] == "checkout"
        assert app.main.view.state[C_FC].sparsity == 0.0  # the live model went back
        app.main.query_one("#layer-tree").focus()
        await pilot.press("r")
        await settle(pilot)
        nodes = app.session.nodes()
        assert len(nodes) == 3 and nodes[-1].parent == 1  # a second child of the root: a branch
        assert sorted(n.id for n in nodes if n.parent == 1) == [stage.id, nodes[-1].id]

        # Label the first branch through the label dialog.
        await pilot.press("2")
        history.select_node(stage.id)
        await pilot.press("l")
        await pilot.pause()
        from rcc_tui.screens.label_screen import LabelScreen

        assert isinstance(app.screen, LabelScreen)
        await pilot.press(*"dare-50", "tab", *"first try", "enter")
        await settle(pilot)
        labelled = next(n for n in app.session.nodes() if n.id == stage.id)
        assert (labelled.label, labelled.note) == ("dare-50", "first try")
        assert op_kinds(app.session) == ["load_model", "edit_layers", "run_stage", "checkout", "run_stage", "label"]

    # What was done in the app replays headlessly to the same metrics.
    from rcc.cli.main import main

    assert main(["replay", str(session_dir), "--out", str(tmp_path / "replayed"), "--verify", "--device", "cpu"]) == 0
    with Session.open(tmp_path / "replayed", read_only=True) as replayed, \
            Session.open(session_dir, read_only=True) as original:
        assert [(n.parent, n.op_kind, n.label, n.metrics) for n in replayed.nodes()] == \
               [(n.parent, n.op_kind, n.label, n.metrics) for n in original.nodes()]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_run_the_cascade_to_completion(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await select_by_pattern(pilot, C_PROJ)
        await type_into(pilot, "#sparsity", "0.3")
        await pilot.press("enter")
        await settle(pilot)
        app.main.query_one("#layer-tree").focus()
        await pilot.press("c")
        await wait_until(pilot, lambda: app.main.runner.running, 10, "the cascade to start")
        assert "cascade" in str(app.main.query_one("#status").render())
        await settle(pilot)
        nodes = app.session.nodes()
        assert [n.op_kind for n in nodes] == ["load_model", "run_cascade"]
        record = app.session.ops()[-1]
        assert record.kind == "run_cascade" and record.body["layers"] == [C_PROJ]
        assert record.body["threshold"] == 0.95
        assert record.result["attempts"]  # one per stage at least
        assert nodes[-1].metrics["size/params"] < nodes[0].metrics["size/params"]
        chart = app.main.query_one("#metric-chart")
        assert len(chart.points) >= 1 + len(record.result["attempts"])  # every attempt is a chart point
        assert "done" in str(app.main.query_one("#run-status").render())


@pytest.mark.slow
@pytest.mark.asyncio
async def test_cancel_a_run_leaves_the_session_as_it_was(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await select_by_pattern(pilot, "tower:text kind:mlp_in")
        await type_into(pilot, "#sparsity", "0.5")
        await pilot.press("enter")
        await settle(pilot)
        before = state_of(app.session)
        app.main.query_one("#layer-tree").focus()
        await pilot.press("c")
        await wait_until(pilot, lambda: app.main.runner.running, 10, "the cascade to start")
        await tap(pilot, "x")
        await settle(pilot)
        assert state_of(app.session) == before  # same ops, nodes, head and plan
        assert any("cancelled" in str(n.message) for n in app._notifications)
        assert "cancelled" in str(app.main.query_one("#run-status").render())
        # The app goes on: the same run now completes.
        await pilot.press("r")
        await settle(pilot)
        assert len(app.session.nodes()) == 2


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_failed_op_is_a_notification_and_the_app_keeps_running(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        before = state_of(app.session)
        app.main.action_evaluate("no-such-split")
        await settle(pilot)
        assert state_of(app.session) == before
        errors = [n for n in app._notifications if n.severity == "error"]
        assert errors and "no-such-split" in errors[-1].message and "allowed" in errors[-1].message
        assert any("no-such-split" in str(line.text) for line in app.main.query_one("#log").lines)
        app.main.action_evaluate()  # the test split exists: metrics land on the current node
        await settle(pilot)
        assert "test/primary" in app.session.nodes()[0].metrics


@pytest.mark.slow
@pytest.mark.asyncio
async def test_quitting_while_a_run_goes_asks_then_cancels_and_closes_the_session(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await select_by_pattern(pilot, "tower:text kind:mlp_in")
        await type_into(pilot, "#sparsity", "0.5")
        await pilot.press("enter")
        await settle(pilot)
        before = state_of(app.session)
        app.main.query_one("#layer-tree").focus()
        await pilot.press("c")
        await wait_until(pilot, lambda: app.main.runner.running, 10, "the cascade to start")
        from rcc_tui.screens.quit_screen import QuitScreen

        await tap(pilot, "q")
        await wait_until(pilot, lambda: isinstance(app.screen, QuitScreen), 10, "the question")
        await tap(pilot, "n")  # stay: the run goes on
        await wait_until(pilot, lambda: not isinstance(app.screen, QuitScreen), 10, "the question to close")
        assert app.main.runner.running
        await tap(pilot, "q")
        await wait_until(pilot, lambda: isinstance(app.screen, QuitScreen), 10, "the question")
        await tap(pilot, "y")
        # Until the app's own shutdown is over (leaving run_test earlier would start a second one).
        await wait_until(pilot, lambda: app._task is not None and app._task.done(), 120, "the app to exit")
        assert app._exit and app.session is None
    # The lock is released and nothing of the cancelled cascade was recorded.
    with Session.open(session_dir, device="cpu", load=False) as again:
        assert state_of(again) == before


# -- history, compare, themes, palette ---------------------------------------------------------

@pytest.mark.slow
@pytest.mark.asyncio
async def test_compare_two_nodes_opens_the_comparison(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.main.start(O.EditLayers(layers=(C_FC,), settings={"sparsity": 0.25}))
        await settle(pilot)
        app.main.start(O.RunStage(stage="dare", layers=(C_FC,)))
        await settle(pilot)
        await pilot.press("2", "m", "down", "m")  # mark the newest node, then compare it with the root
        await pilot.pause()
        from rcc_tui.screens.compare_screen import CompareScreen

        assert isinstance(app.screen, CompareScreen)
        assert (app.screen.a, app.screen.b) == (2, 1)
        assert len(app.session.nodes()) == 2  # comparing changes nothing


@pytest.mark.slow
@pytest.mark.asyncio
async def test_themes_from_the_option_the_environment_and_the_palette(session_dir, monkeypatch):
    monkeypatch.setenv("TEXTUAL_THEME", "rcc-light")
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.theme == "rcc-light"
        assert {"rcc-dark", "rcc-light", "rcc-ansi"} <= set(app.available_themes)
        await ready(pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"Theme: rcc-ansi")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause()
        assert app.theme == "rcc-ansi"
        assert op_kinds(app.session) == ["load_model"]  # a theme is not a session op
    app = make_app(session_dir, theme="rcc-dark")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.theme == "rcc-dark"  # --theme wins over TEXTUAL_THEME
    app = make_app(session_dir, theme="no-such-theme")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.theme == "rcc-dark"
        assert any("no-such-theme" in n.message for n in app._notifications)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_palette_offers_every_action_and_each_node(session_dir):
    from rcc_tui.commands import RccCommands

    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.main.start(O.EditLayers(layers=(C_FC,), settings={"sparsity": 0.25}))
        await settle(pilot)
        app.main.start(O.RunStage(stage="dare", layers=(C_FC,)))
        await settle(pilot)
        provider = RccCommands(app.screen)
        names = [name for name, _, _ in provider._commands()]
        for wanted in ("Run stage", "Run cascade", "Cancel the running op", "Apply the layer edit",
                       "Evaluate on the test split", "Export compressed", "Select layers by pattern",
                       "Show the history graph", "Check out node 1", "Label node 2",
                       "Compare node 1 with the current node", "Theme: rcc-light", "Help", "Quit"):
            assert wanted in names
        await pilot.press("ctrl+p")
        await pilot.press(*"Check out node 1")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await settle(pilot)
        assert app.session.head == 1 and op_kinds(app.session)[-1] == "checkout"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_keymap_file_rebinds_keys_by_binding_id(session_dir, tmp_path):
    keymap = tmp_path / "keymap.toml"
    keymap.write_text('[keys]\n"rcc.run_stage" = "s"\n')
    app = make_app(session_dir, keymap_path=str(keymap))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await select_by_pattern(pilot, C_FC)
        await type_into(pilot, "#sparsity", "0.5")
        await pilot.press("enter")
        await settle(pilot)
        app.main.query_one("#layer-tree").focus()
        await pilot.press("r")  # no longer bound
        await pilot.pause(0.3)
        assert not app.main.runner.busy and len(app.session.nodes()) == 1
        await pilot.press("s")
        await settle(pilot)
        assert [n.op_kind for n in app.session.nodes()] == ["load_model", "run_stage"]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_help_screen_opens_and_closes(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        from rcc_tui.screens.help_screen import HelpScreen

        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


# -- quick: the worker bridge, the command line, the import budget -----------------------------

@pytest.mark.asyncio
async def test_progress_is_coalesced_but_chart_points_and_the_end_always_arrive_in_order():
    from textual.app import App
    from textual.message import Message

    from rcc.session.progress import OpProgress
    from rcc_tui.workers import OpProgressed, OpRunner, OpStarted

    class Done(Message):
        pass

    class Sink(App):
        def __init__(self) -> None:
            super().__init__()
            self.got: list[Message] = []

        def on_op_started(self, message) -> None:
            self.got.append(message)

        def on_op_progressed(self, message) -> None:
            self.got.append(message)

        def on_done(self, message) -> None:
            self.got.append(message)

    def job(progress, cancel):
        for i in range(3000):  # a fast stage: far more events than a screen can show
            progress(OpProgress(op="run_cascade", phase="dare", done=i + 1, total=3000, detail=f"layer {i}"))
            if i % 500 == 0:
                progress(OpProgress(op="run_cascade", phase="dare", metric=i / 3000, params=i))
            if i % 1000 == 999:
                time.sleep(0.15)  # let the timer deliver a few ticks
        return Done()

    app = Sink()
    async with app.run_test() as pilot:
        runner = OpRunner(app)
        runner.run("a fast job", job)
        await asyncio.wait_for(runner.wait(), 30)
        await pilot.pause()
        assert not runner.busy
    assert isinstance(app.got[0], OpStarted) and isinstance(app.got[-1], Done)
    progress = [m.progress for m in app.got if isinstance(m, OpProgressed)]
    assert [p.metric for p in progress if p.metric is not None] == [i / 3000 for i in range(0, 3000, 500)]
    layer = [p.done for p in progress if p.metric is None]
    assert 1 <= len(layer) < 100 and layer == sorted(layer)  # coalesced, never out of order


@pytest.mark.asyncio
async def test_a_cancelled_job_ends_as_a_cancelled_failure():
    from textual.app import App

    from rcc.errors import Cancelled
    from rcc_tui.workers import OpFailed, OpRunner

    class Sink(App):
        failed: OpFailed | None = None

        def on_op_failed(self, message: OpFailed) -> None:
            self.failed = message

    def job(progress, cancel):
        for _ in range(1000):
            if cancel():
                raise Cancelled("cancelled between layers")
            time.sleep(0.01)
        raise AssertionError("never cancelled")

    app = Sink()
    async with app.run_test() as pilot:
        runner = OpRunner(app)
        runner.run("a long job", job)
        await pilot.pause(0.1)
        assert runner.running and runner.cancel()
        await asyncio.wait_for(runner.wait(), 30)
        await pilot.pause()
    assert app.failed is not None and app.failed.cancelled
    assert "cancelled" in app.failed.message and not app.failed.trace


def test_the_app_commands_parse():
    from rcc.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["open", "S", "--device", "cuda:0", "--theme", "rcc-light", "--keymap", "k.toml"])
    assert (args.session, args.device, args.theme, args.keymap) == ("S", "cuda:0", "rcc-light", "k.toml")
    args = parser.parse_args(["new"])
    assert (args.model, args.data, args.session, args.device, args.theme) == ("rcc-mini", "digits", None, "auto", None)
    args = parser.parse_args(["serve"])
    assert (args.command, args.host, args.port, args.serve_command) == ("serve", "127.0.0.1", 8000, None)


def test_no_command_opens_a_new_demo_session_and_options_pass_through(monkeypatch, tmp_path):
    from rcc.cli.main import main

    calls = []
    monkeypatch.setattr("rcc_tui.cli._run_app", lambda *args: calls.append(args) or 0)
    assert main([]) == 0
    assert calls[-1] == (None, True, "rcc-mini", "digits", "auto", None, None)
    assert main(["new", "--model", "open_clip:ViT-B-32", "--data", "digits", "--session", str(tmp_path / "s"),
                 "--device", "cpu", "--theme", "rcc-ansi", "--keymap", "k.toml"]) == 0
    assert calls[-1] == (str(tmp_path / "s"), True, "open_clip:ViT-B-32", "digits", "cpu", "rcc-ansi", "k.toml")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "session.db").touch()
    assert main(["open", str(tmp_path / "old"), "--device", "cuda:0"]) == 0
    assert calls[-1][:2] == (str(tmp_path / "old"), False) and calls[-1][4] == "cuda:0"


def test_open_and_new_refuse_bad_directories_with_exit_2(tmp_path, capsys):
    from rcc.cli.main import main

    assert main(["open", str(tmp_path)]) == 2
    assert "is not a session" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["new", "--session", str(tmp_path)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_serve_binds_to_loopback_unless_told(monkeypatch):
    from rcc.cli.main import main

    servers = []

    class FakeServer:
        def __init__(self, command, host="localhost", port=8000, title=None):
            servers.append((command, host, port))

        def serve(self):
            pass

    monkeypatch.setattr("textual_serve.server.Server", FakeServer)
    assert main(["serve"]) == 0
    command, host, port = servers[-1]
    assert (host, port) == ("127.0.0.1", 8000) and command.endswith("-m rcc.cli.main new")
    assert main(["serve", "--host", "0.0.0.0", "--port", "9000", "--command", "rcc-tui open S"]) == 0
    assert servers[-1] == ("rcc-tui open S", "0.0.0.0", 9000)


def test_help_and_the_first_frame_import_nothing_heavy():
    """`rcc-tui --help` loads neither Textual nor torch; the app module loads Textual but no ML library."""
    script = (
        "import sys\n"
        "from rcc.cli.main import build_parser\n"
        "build_parser().format_help()\n"
        "print(sorted(m for m in ('textual', 'torch') if m in sys.modules))\n"
        "import rcc_tui.app\n"
        "print(sorted(m for m in ('torch', 'transformers', 'open_clip', 'rcc.session.session') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "[]"]
