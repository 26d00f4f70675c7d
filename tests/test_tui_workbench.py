"""The workbench's screens, widgets and keys, driven by Pilot on a fake session (tests/fake_session.py).

These tests are about the app, not the engine: what is shown, what each key does, which op a
request becomes, how the job runner's messages move the panels. The fake session applies the
same ops through the engine's own plan code and reports the same progress phases as a real one,
in milliseconds. What only a real session can prove (the engine's numbers, cancel restoring
weights, locks, replay) is in tests/test_tui_app.py and the analysis / search / train files.
"""

from __future__ import annotations

import threading
import time

import pytest
from fake_session import FakeSession, branched, fake_app
from tui_pilot import (
    log_text,
    plan_sparsity,
    ready,
    running,
    select_by_pattern,
    settle,
    text_of,
    type_into,
    wait_until,
)

from rcc.session import ops as O

pytestmark = pytest.mark.asyncio

C_FC = "visual.transformer.resblocks.0.mlp.c_fc"
C_PROJ = "visual.transformer.resblocks.0.mlp.c_proj"
SIZE = (120, 40)
SMALL = (80, 24)


def edits(session: FakeSession) -> list[O.Op]:
    return [op for op in session.applied if op.kind == "edit_layers"]


# -- the layer tree -----------------------------------------------------------------------------

async def test_expand_select_and_select_by_pattern(tmp_path):
    app, session = fake_app(tmp_path)
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
        await pilot.press("space")
        await pilot.pause()
        assert tree.selection == set()
        await select_by_pattern(pilot, "tower:vision kind:mlp_in")
        assert tree.selection == {f"visual.transformer.resblocks.{i}.mlp.c_fc" for i in range(4)}
        await select_by_pattern(pilot, "+resblocks.3.mlp.c_proj")
        assert len(tree.selection) == 5
        await select_by_pattern(pilot, "kind:nonsense")  # refused inline, the selection is kept
        assert "kind 'nonsense' is unknown" in text_of(app, "#selection-info")
        assert len(tree.selection) == 5
        tree.focus()
        await pilot.press("u")
        await pilot.pause()
        assert tree.selection == set() and session.applied == []  # selecting changes nothing in the session


# -- the editor: one op per edit, counts in stored bytes, refusals inline -------------------------

async def test_an_edit_is_one_op_and_the_editor_says_what_the_targets_and_model_would_store(tmp_path):
    app, session = fake_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await select_by_pattern(pilot, C_FC)
        await type_into(pilot, "#sparsity", "0.5")
        await pilot.pause()
        # 512×128 float32 = 262,144 B now; half kept (131,072 B) + a 65,536-bit mask (8,192 B) = 139,264 B.
        root = session.nodes[0].metrics["size/bytes"]
        assert text_of(app, "#editor-counts") == \
            "targets 262 KB → 139 KB (−47%) · model 91.4 MB → 91.3 MB (−0.1%)"
        assert root - 262_144 + 139_264 == 91_289_465  # the model figure is the node's size/bytes, changed so
        await pilot.press("enter")  # enter in a field applies
        await settle(pilot)
        assert [(op.layers, op.settings) for op in edits(session)] == [((C_FC,), {"sparsity": 0.5})]
        assert session.plan.overrides == {C_FC: {"sparsity": 0.5}}

        await select_by_pattern(pilot, "resblocks.1.mlp.c_")  # two layers, one op: N:M with its sparsity
        await type_into(pilot, "#pattern-field", "2:4")
        await type_into(pilot, "#sparsity", "50%")
        app.main.query_one("#layer-tree").focus()
        await pilot.press("a")
        await settle(pilot)
        assert edits(session)[-1].settings == {"pattern": "2:4", "sparsity": 0.5} and len(edits(session)) == 2
        assert "→2:4" in str(app.main.query_one("#layer-tree").expand_path(
            "visual.transformer.resblocks.1.mlp.c_fc").label)
        assert "✓ #2 edit_layers" in log_text(app)


async def test_int8_is_an_editor_field_whose_bytes_it_counts_and_quant_a_stage_of_the_run_panel(tmp_path):
    app, session = fake_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await select_by_pattern(pilot, C_FC)
        app.main.query_one("#bits").toggle()
        await pilot.pause()
        # 512×128 int8 values (65,536 B) + 512 float32 row scales (2,048 B) = 67,584 B, from 262,144 B.
        assert text_of(app, "#editor-counts") == \
            "targets 262 KB → 67.6 KB (−74%) · model 91.4 MB → 91.2 MB (−0.2%)"
        app.main.query_one("#layer-tree").focus()
        await pilot.press("a")
        await settle(pilot)
        assert [(op.layers, op.settings) for op in edits(session)] == [((C_FC,), {"bits": 8})]
        assert "→int8" in str(app.main.query_one("#layer-tree").expand_path(C_FC).label)
        assert app.main.query_one("#bits").value  # the editor shows the plan it made
        app.main.query_one("#stage").value = "quant"
        app.main.query_one("#layer-tree").focus()
        await pilot.press("r")
        await settle(pilot)
        run = session.applied[-1]
        assert (run.kind, run.stage, run.layers) == ("run_stage", "quant", (C_FC,))


BAD_VALUES = (
    ("#sparsity", "1.5", "sparsity 1.5 is out of range; allowed: 0 ≤ sparsity < 1"),
    ("#sparsity", "abc", "sparsity 'abc' is not a number; allowed: 0 ≤ sparsity < 1"),
    ("#rank", "999", "rank 999 is out of range"),
    ("#rank", "energy:2", "energy 2.0 is out of range"),
)


async def test_a_bad_value_is_named_inline_and_nothing_is_applied(tmp_path):
    app, session = fake_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        editor = app.main.query_one("#editor")
        await select_by_pattern(pilot, C_FC)
        for field, text, message in BAD_VALUES:
            await type_into(pilot, field, text)
            await pilot.pause()
            assert message in editor.error, (text, editor.error)
            assert app.main.query_one("#editor-error").display
            await pilot.press("enter")
            await pilot.pause(0.1)
            assert not app.jobs.busy and session.applied == []
            app.main.query_one(field).value = ""  # the next value is checked alone


async def test_the_run_panel_refuses_a_bad_fraction_inline(tmp_path):
    app, session = fake_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await type_into(pilot, "#fraction", "1.5")
        app.main.query_one("#layer-tree").focus()
        await pilot.press("r")
        await pilot.pause(0.2)
        assert "fraction 1.5 is invalid" in app.main.query_one("#run").error and session.applied == []


async def test_rank_auto_takes_its_budget_from_the_editor_in_one_op(tmp_path):
    app, session = fake_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        editor = app.main.query_one("#editor")
        await select_by_pattern(pilot, "visual.transformer.resblocks.*.mlp.*")
        await type_into(pilot, "#rank", "auto")
        await pilot.pause()
        assert "rank 'auto' needs the plan's budget" in editor.error
        await type_into(pilot, "#budget", "1.5")
        await pilot.pause()
        assert editor.error.startswith("budget 1.5 is invalid; allowed: a number 0 < budget < 1")
        await type_into(pilot, "#budget", "40%")
        await pilot.pause()
        assert editor.error == "" and "≈" in text_of(app, "#editor-counts")  # the budget's estimate
        await pilot.press("enter")
        await settle(pilot)
        op = edits(session)[-1]
        assert op.budget == 0.4 and {k: str(v) for k, v in op.settings.items()} == {"rank": "auto"}
        assert session.plan.budget == 0.4 and app.main.query_one("#budget").value == "0.4"


# -- progress: phase, percentage, ETA, cancel ------------------------------------------------------

async def test_progress_shows_the_phase_and_percentage_from_the_start_and_the_bar_resets_on_cancel(tmp_path):
    gate = threading.Semaphore(0)
    app, session = fake_app(tmp_path, FakeSession(tmp_path / "s", gate=gate))
    async with app.run_test(size=SMALL) as pilot:  # at 80×24 the status bar is on screen
        await ready(pilot)
        await plan_sparsity(pilot, C_FC, "0.5")
        await pilot.press("c")
        bar = app.main.query_one("#status")
        await wait_until(pilot, lambda: running(app), what="the cascade to start")
        gate.release()  # the first event: calibration 0 of 4
        await wait_until(pilot, lambda: "calibration" in bar.text, what="the first phase")
        assert bar.text.startswith("░" * 10 + "   0% cascade ≥0.95 on 1 layer · calibration · 0/4 images")
        assert bar.fraction == 0.0 and "ETA" not in bar.text and bar.text.endswith("x cancels")
        assert bar.region.height == 1 and bar.region.bottom == SMALL[1] - 1  # right above the footer
        time.sleep(1.1)  # a second of measured progress: an ETA can be estimated
        gate.release()
        await wait_until(pilot, lambda: "1/4" in bar.text, what="the next event")
        assert bar.text.startswith("██░░░░░░░░  25% ") and bar.fraction == 0.25
        assert "ETA " in bar.text  # three more units at about one a second
        assert "calibration · 1/4 images" in text_of(app, "#run-status")  # the run panel follows too
        assert app.main.query_one("#cancel").disabled is False and app.main.query_one("#run-cascade").disabled
        await pilot.press("x")
        await settle(pilot)
        assert bar.fraction is None and "█" not in bar.text  # the bar is cleared, not left where it stopped
        assert bar.text.startswith("cancelled: cascade ≥0.95 on 1 layer · rcc-mini · digits · node 1 of 1")
        assert "cancelled" in text_of(app, "#run-status") and not app.main.query_one("#run-cascade").disabled
        assert [op.kind for op in session.applied] == ["edit_layers"] and len(session.nodes) == 1
        assert any("cancelled" in n.message for n in app._notifications)


async def test_a_finished_run_ends_on_a_new_node_and_its_chart_has_one_quantity_per_axis(tmp_path):
    app, session = fake_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await plan_sparsity(pilot, C_FC, "0.5")
        await pilot.press("c")
        await settle(pilot)
        node = session.nodes[-1]
        assert session.head == node.id == 2
        phases = [event.phase for event in session.events]
        assert phases[0] == "calibration" and "evaluate" in phases and phases[-1] == "saving"
        chart = app.main.query_one("#metric-chart")
        # Left axis: accuracy (the root's, each attempt's, the node's); right axis: stored bytes, nothing else.
        assert chart.second_label == "stored bytes"
        assert chart.points[0] == (0, session.nodes[0].metrics["val/primary"])
        assert chart.points[-1][1] == node.metrics["val/primary"]
        assert [value for _, value in chart.second_points] == [session.nodes[0].metrics["size/bytes"],
                                                              node.metrics["size/bytes"],
                                                              node.metrics["size/bytes"]]
        assert "done: cascade ≥0.95 on 1 layer → node 2" in text_of(app, "#run-status")
        # The tree says what block 0 saves in stored bytes: 122,880 of 786,432 (values alone would say 17 %).
        block = app.main.query_one("#layer-tree").expand_path(C_FC).parent
        assert " −16%" in str(block.label)
        saved = session.nodes[0].metrics["size/bytes"] - node.metrics["size/bytes"]
        assert f"dare step 1 attempt 1: val {node.metrics['val/primary']:.2%} kept" in log_text(app)  # named split
        assert f"→ node 2: val {node.metrics['val/primary']:.4f}, {node.metrics['size/bytes']:,.0f} bytes stored " \
               f"(−{saved:,} bytes" in log_text(app)


async def test_a_run_that_changes_no_tensor_makes_no_node_and_says_so(tmp_path):
    app, session = fake_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await select_by_pattern(pilot, C_FC)  # the plan gives it nothing to do
        app.main.query_one("#layer-tree").focus()
        await pilot.press("c")
        await settle(pilot)
        assert len(session.nodes) == 1 and session.head == 1
        assert "run_cascade changed no tensor: no node recorded (node 1 stays current)" in log_text(app)
        assert any(n.title == "no change" for n in app._notifications)
        assert "(no tensor changed: no node)" in text_of(app, "#run-status")


# -- history: readable at 80×24 and 120×40 -------------------------------------------------------

@pytest.mark.parametrize("size", [SMALL, SIZE, (200, 50)])
async def test_the_history_fits_its_pane_with_lanes_number_label_op_size_change_and_both_metrics(tmp_path, size):
    app, session = fake_app(tmp_path, branched(tmp_path / "s"))
    async with app.run_test(size=size) as pilot:
        await ready(pilot)
        await pilot.press("2")
        await pilot.pause()
        history = app.main.query_one("#history")
        columns = [column.key.value for column in history.columns.values()]
        assert columns == ["graph", "id", "label", "op", "stored", "change", "eval", "test"]
        assert history.virtual_size.width <= history.scrollable_content_region.width  # nothing cut off
        row = {key: str(history.get_cell(str(3), key)).strip() for key in columns}
        assert row["id"] == "3" and row["label"] == "dare-50" and row["stored"] == "85.1M"
        assert row["change"] == "−4.2M −4.7%"  # from node 2's 89.3M
        assert row["op"] == ("cascade" if size == SMALL else "run_cascade")
        assert row["eval"] == ("96.7" if size == SMALL else "96.67")
        assert history.columns_layout.full_ops == (size != SMALL)
        # The lanes stay when the table scrolls sideways; the selected node's exact figures below it.
        assert history.fixed_columns == 2
        history.select_node(3)
        await pilot.pause()
        details = text_of(app, "#node-details")
        assert details.startswith("#3 “dare-50” run_cascade · stored 85,100,000 B "
                                  "(−4,200,000 B, −4.7% from #2)")
        assert "val 0.9667" in details and "test" not in details  # each metric named by its split
        history.select_node(5)
        await pilot.pause()
        assert "val 0.9778 · test 0.9750" in text_of(app, "#node-details")
        assert [str(history.columns[key].label) for key in ("eval", "test")] == ["val", "test"]


async def test_the_palette_shows_each_node_with_its_label_and_checks_out_a_node(tmp_path):
    from rcc_tui.commands import RccCommands

    app, session = fake_app(tmp_path, branched(tmp_path / "s"))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        commands = {name: about for name, about, _ in RccCommands(app.screen)._commands()}
        assert "Check out node 3 “dare-50”" in commands and commands["Check out node 3 “dare-50”"].endswith(
            "“dare-50”")
        assert all(not about.endswith("·") for about in commands.values())
        for wanted in ("Run stage", "Run cascade", "Cancel the running op", "Apply the layer edit", "Edit the targets",
                       "Evaluate on the test split", "Export compressed", "Export ONNX", "Export hf-compressed",
                       "Show the history graph", "Label node 2",
                       "Compare node 1 with the current node", "Theme: rcc-light", "Help", "Quit"):
            assert wanted in commands
        await pilot.press("ctrl+p")
        await pilot.press(*"Check out node 3")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await settle(pilot)
        assert session.applied[-1] == O.Checkout(node=3) and session.head == 3


async def test_marking_two_nodes_opens_their_comparison(tmp_path):
    from rcc_tui.screens.compare_screen import CompareScreen

    app, session = fake_app(tmp_path, branched(tmp_path / "s"))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("2", "m", "down", "m")
        await pilot.pause()
        assert isinstance(app.screen, CompareScreen) and (app.screen.a, app.screen.b) == (5, 4)
        assert session.applied == []


# -- keys ------------------------------------------------------------------------------------------

async def test_digits_switch_tabs_only_outside_fields(tmp_path):
    app, session = fake_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        tabs = app.main.query_one("#tabs")
        for key, tab in (("2", "tab-history"), ("3", "tab-charts"), ("4", "tab-train"), ("1", "tab-compress")):
            app.main.query_one("#layer-tree").focus()
            await pilot.press(key)
            await pilot.pause()
            assert tabs.active == tab, key
        await select_by_pattern(pilot, C_FC)
        await pilot.press("e")  # the editor
        await pilot.pause()
        assert app.focused.id == "sparsity"
        await pilot.press("end", "backspace", "0", ".", "2", "4")
        await pilot.pause()
        assert app.main.query_one("#sparsity").value == "0.24" and tabs.active == "tab-compress"
        await pilot.press("tab", "tab", "tab")  # through the method select and on to the other fields
        await pilot.pause()
        assert tabs.active == "tab-compress"


async def test_enter_on_a_layer_and_e_anywhere_go_to_the_editor(tmp_path):
    app, session = fake_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        tree = app.main.query_one("#layer-tree")
        await pilot.press("enter")  # a tower: opens it, the tree keeps the focus
        await pilot.pause()
        assert tree.has_focus and tree.root.children[0].is_expanded
        node = tree.expand_path(C_FC)
        await pilot.pause()  # the expanded rows exist before the cursor can move onto one
        tree.move_to(node)
        await pilot.pause()
        await pilot.press("enter")  # a layer: its editor
        await pilot.pause()
        assert app.focused.id == "sparsity" and app.main.query_one("#editor").targets == (C_FC,)
        await pilot.press("escape")
        await pilot.pause()
        assert tree.has_focus
        await pilot.press("2", "e")  # from the History tab too
        await pilot.pause()
        assert app.focused.id == "sparsity" and app.main.query_one("#tabs").active == "tab-compress"


async def test_checkboxes_say_checked_or_not_without_colour(tmp_path):
    app, session = fake_app(tmp_path, theme="rcc-ansi")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await select_by_pattern(pilot, C_FC)
        box = app.main.query_one("#correction")
        unchecked = box.render().plain
        box.value = True
        await pilot.pause()
        checked = box.render().plain
        assert "X" in checked and "X" not in unchecked and checked.replace("X", " ") == unchecked
        assert "X" in app.main.query_one("#scope").render().plain  # the run panel's scope is checked


async def test_text_typed_quickly_after_clearing_a_field_is_never_lost(tmp_path):
    app, session = fake_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        tree = app.main.query_one("#layer-tree")
        await pilot.press("enter")  # open the vision tower
        await pilot.pause()
        # The cursor moves (its targets reach the editor as a message) and the user types at once.
        await pilot.press("down", "e", "end", "backspace", "0", ".", "3")
        await pilot.pause()
        assert app.main.query_one("#sparsity").value == "0.3"
        assert app.main.query_one("#editor").targets == tuple(
            layer.name for layer in tree.layers_of(tree.cursor_node.data))
        # An op finishing reloads the editor while a field is being typed into: what was typed stays.
        await pilot.press("backspace", "backspace", "backspace")
        await pilot.press("0")
        app.main.start(O.Label(node=1, label="root"), "label node 1")
        await pilot.press(".", "4")
        await settle(pilot)
        assert app.main.query_one("#sparsity").value == "0.4"
        # Fields that were not being typed into do show the reloaded plan.
        assert app.main.query_one("#rank").value == ""


async def test_a_keymap_file_rebinds_keys_by_binding_id(tmp_path):
    keymap = tmp_path / "keymap.toml"
    keymap.write_text('[keys]\n"rcc.run_stage" = "R"\n')
    app, session = fake_app(tmp_path, keymap_path=str(keymap))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await plan_sparsity(pilot, C_FC, "0.5")
        await pilot.press("r")  # no longer bound
        await pilot.pause(0.2)
        assert not app.jobs.busy and len(session.nodes) == 1
        await pilot.press("R")
        await settle(pilot)
        assert [n.op_kind for n in session.nodes] == ["load_model", "run_stage"]


async def test_the_help_screen_lists_every_key_of_the_main_screen(tmp_path):
    from rcc_tui.screens.help_screen import HelpScreen
    from rcc_tui.screens.main_screen import MainScreen

    app, session = fake_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        listed = {row[3] for row in app.screen.rows}
        assert {binding.id for binding in MainScreen.BINDINGS} <= listed
        assert {"rcc.tree.select", "rcc.quit", "rcc.help"} <= listed
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


# -- themes, failures ------------------------------------------------------------------------------

async def test_themes_from_the_option_the_environment_and_the_palette(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTUAL_THEME", "rcc-light")
    app, session = fake_app(tmp_path)
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
        assert app.theme == "rcc-ansi" and session.applied == []  # a theme is not a session op
    app, _ = fake_app(tmp_path, theme="rcc-dark")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.theme == "rcc-dark"  # --theme wins over TEXTUAL_THEME
    app, _ = fake_app(tmp_path, theme="no-such-theme")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.theme == "rcc-dark" and any("no-such-theme" in n.message for n in app._notifications)


async def test_a_failed_op_is_a_notification_and_the_app_keeps_running(tmp_path):
    app, session = fake_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.main.action_evaluate("no-such-split")
        await settle(pilot)
        errors = [n for n in app._notifications if n.severity == "error"]
        assert errors and "no-such-split" in errors[-1].message and "allowed" in errors[-1].message
        assert "no-such-split" in log_text(app)
        await pilot.press("E")  # evaluate on the test split: its metric lands on the node
        await settle(pilot)
        assert "test/primary" in session.nodes[0].metrics
        assert f"test: {session.nodes[0].metrics['test/primary']:.4f}" in log_text(app)
