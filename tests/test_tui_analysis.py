"""Analyses in the app, driven by Pilot: the sensitivity scan that colours the layer tree, and the
compare screen's statistics. Every check ends on what is stored (the scan's file, the session's
ops, the model's tensors) or on what the engine computes for the same arguments.

One rcc-mini session is created headlessly per module and copied for each test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tui_pilot import make_app, ready, settle, tap, wait_until

from rcc.analysis.compare import compare_nodes_stats
from rcc.analysis.sensitivity import load_sensitivity, sensitivity_path
from rcc.session import ops as O
from rcc.session.session import Session

SIZE = (120, 40)
BLOCK0_MLP = "resblocks.0.mlp"  # the pattern: vision block 0's c_fc and c_proj
SPARSE = tuple(f"visual.transformer.resblocks.{i}.mlp.c_fc" for i in range(4))


def weights(session) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in session.model.module.state_dict().items()}


def same_weights(session, before: dict[str, torch.Tensor]) -> bool:
    now = session.model.module.state_dict()
    return set(now) == set(before) and all(torch.equal(now[k], v) for k, v in before.items())


def recorded(session) -> tuple:
    return tuple((r.seq, r.kind) for r in session.ops()), tuple(session.nodes()), session.head


def status_text(main, selector: str) -> str:
    widget = main.query_one(selector)
    return widget.text if hasattr(widget, "text") else str(widget.render())


def check_tree_colours(tree, scores: dict[str, float]) -> None:
    """The tree's heat follows the stored scores: the most sensitive layer is the hottest, order kept."""
    from rcc_tui.widgets.layer_tree import HEAT_STEPS, score_text

    ranked = sorted(scores, key=scores.get)
    heats = [tree.heat(name) for name in ranked]
    assert heats == sorted(heats) and heats[-1] == HEAT_STEPS - 1
    for name in ranked:
        node = tree.expand_path(name)
        label = node.label
        colour = tree._colour(tree.heat(name))
        assert "●" in label.plain and score_text(scores[name]) in label.plain
        assert any(str(span.style) == colour for span in label.spans), (name, label.spans, colour)


# -- sensitivity ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.asyncio
async def test_scan_sensitivity_colours_the_tree_stores_the_scan_and_a_reopened_app_shows_it(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        main, session = app.main, app.session
        tree = main.query_one("#layer-tree")
        assert tree.sensitivity is None and main.sensitivity is None  # never scanned: no colours
        await pilot.press("escape", "slash", *BLOCK0_MLP, "enter")
        await pilot.pause()
        chosen = set(tree.selection)
        assert 2 <= len(chosen) <= 3
        before, history = weights(session), recorded(session)
        head = session.head

        await pilot.press("v")
        await settle(pilot)

        path = sensitivity_path(session_dir, head)
        assert path.is_file()
        scores = load_sensitivity(session_dir, head)
        assert set(scores) == chosen
        assert same_weights(session, before)  # every scanned layer restored bit for bit
        assert recorded(session) == history  # an analysis, not an op: nothing recorded
        assert tree.sensitivity == scores
        check_tree_colours(tree, scores)
        legend = status_text(main, "#sensitivity-legend")
        assert f"sensitivity of node {head}" in legend and "rank 50%" in legend
        assert "ready" in status_text(main, "#status")
        stamp = path.stat().st_mtime_ns

    # Reopened: the stored scan colours the tree at once, without scanning again.
    again = make_app(session_dir)
    async with again.run_test(size=SIZE) as pilot:
        await ready(pilot)
        main = again.main
        await wait_until(pilot, lambda: main.sensitivity is not None, 30, "the stored scan")
        tree = main.query_one("#layer-tree")
        assert tree.sensitivity == scores and main.sensitivity.node == head
        check_tree_colours(tree, scores)
        assert main.query_one("#sensitivity-legend").display
    assert path.stat().st_mtime_ns == stamp


@pytest.mark.slow
@pytest.mark.asyncio
async def test_cancel_a_scan_writes_nothing_and_the_app_responds(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        main, session = app.main, app.session
        before, history = weights(session), recorded(session)
        assert main.targets  # the cursor is on the vision tower: all its layers
        await pilot.press("v")
        run_status = "#run-status"
        await wait_until(pilot, lambda: "sensitivity · layer" in status_text(main, run_status), 60, "the first layer")
        await tap(pilot, "x")
        await settle(pilot)

        assert not sensitivity_path(session_dir, session.head).exists()
        assert not (session_dir / "analysis").exists() or not any((session_dir / "analysis").iterdir())
        assert same_weights(session, before) and recorded(session) == history
        assert "cancelled" in status_text(main, run_status)
        assert main.sensitivity is None
        await pilot.press("2")  # the app responds: the History tab opens
        await pilot.pause()
        assert main.query_one("#tabs").active == "tab-history"
        assert "ready" in status_text(main, "#status")


# -- compare ----------------------------------------------------------------------------------------

@pytest.fixture
def two_nodes(session_dir) -> Path:
    """The demo with a second node: four vision MLP layers pruned to 90 %, so the two differ."""
    with Session.open(session_dir, device="cpu") as session:
        session.apply(O.EditLayers(layers=SPARSE, settings={"sparsity": 0.9}))
        session.apply(O.RunStage(stage="dare", layers=SPARSE))
    return session_dir


@pytest.mark.slow
@pytest.mark.asyncio
async def test_compare_screen_shows_the_statistics_compare_nodes_stats_computes(two_nodes):
    from rcc_tui.screens.compare_screen import CompareScreen, interval_text

    app = make_app(two_nodes)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        a, b = 1, app.session.head
        assert a != b
        # Leaving while the statistics load drops them: no crash, and the next screen computes its own.
        app.main.compare(a, b)
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.comparison is not None,
                         30, "the graph comparison")
        left = app.screen
        assert left.query_one("#compare-stats").loading and left.statistics is None
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, CompareScreen)

        app.main.compare(a, b)
        await wait_until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.query("#compare-stats"),
                         10, "the compare screen")
        screen = app.screen
        assert screen.query_one("#compare-stats").loading or screen.statistics is not None
        await wait_until(pilot, lambda: screen.statistics is not None or screen.statistics_error is not None,
                         120, "the statistics")
        assert screen.statistics_error is None
        assert left.statistics is None and left.statistics_error is None  # the left screen's result was dropped
        expected = compare_nodes_stats(two_nodes, a, b)
        assert screen.statistics == expected
        shown = str(screen.query_one("#compare-stats").render())
        assert f"p = {expected.paired.p_value:.3g}" in shown
        assert interval_text(expected.paired.difference, signed=True) in shown
        assert interval_text(expected.interval_a) in shown and interval_text(expected.interval_b) in shown
        assert not screen.query_one("#compare-stats").loading
        assert screen.query_one("#compare-metrics").row_count > 0  # the graph comparison is still there
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, CompareScreen)


# -- pieces, without the app --------------------------------------------------------------------------

def test_the_tree_shows_the_nearest_scanned_ancestor_and_says_so(tmp_path):
    from rcc.analysis.sensitivity import (
        ScanSetting,
        SensitivityResult,
        UnitSensitivity,
        save_sensitivity,
    )
    from rcc.session.graph import NodeRecord
    from rcc_tui.sensitivity import read_tree_sensitivity

    def unit(name: str, drift: float) -> UnitSensitivity:
        return UnitSensitivity(name=name, layers=(name,), tower="vision", block=0, kind="mlp_in", params_before=4,
                               params_after=2, metric=0.9, metric_drop=0.0, drift=drift, proxies={}, factorised=1,
                               seconds=0.0)

    result = SensitivityResult(model="m", data="d", split="s", task="zeroshot", setting=ScanSetting(rank=0.5),
                               group_by="layer", baseline=0.9, units=(unit("x", 0.5), unit("y", 0.1)),
                               correlations={}, seconds=0.0, node=1)
    save_sensitivity(result, sensitivity_path(tmp_path, 1))
    nodes = [NodeRecord(1, None, 1, "load_model", 0.0, 10), NodeRecord(2, 1, 2, "run_stage", 0.0, 8),
             NodeRecord(3, None, 3, "load_model", 0.0, 10)]
    found = read_tree_sensitivity(str(tmp_path), nodes, 2)
    assert found.node == 1 and found.scores == {"x": 0.5, "y": 0.1}
    assert "node 1 (ancestor of 2)" in found.legend()
    assert read_tree_sensitivity(str(tmp_path), nodes, 1).legend().startswith("sensitivity of node 1 ·")
    assert read_tree_sensitivity(str(tmp_path), nodes, 3) is None  # another root: not an ancestor


def test_heat_steps_and_colours_run_from_the_theme_s_success_to_its_error():
    from rcc_tui.widgets.layer_tree import HEAT_STEPS, heat_colour, heat_step

    top = 0.8
    steps = [heat_step(top * i / 10, top) for i in range(11)]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == HEAT_STEPS - 1
    assert heat_step(0.3, 0.0) == 0  # nothing measured: all cool
    # A stored scan may hold non-finite drifts: never a crash while drawing the tree.
    nan, inf = float("nan"), float("inf")
    assert [heat_step(nan, top), heat_step(0.3, nan), heat_step(inf, top), heat_step(inf, inf)] == \
        [0, 0, HEAT_STEPS - 1, HEAT_STEPS - 1]
    colours = [heat_colour(step, "#00ff00", "#ffff00", "#ff0000") for step in range(HEAT_STEPS)]
    assert colours[0] == "#00FF00" and colours[HEAT_STEPS // 2] == "#FFFF00" and colours[-1] == "#FF0000"
    assert len(set(colours)) == HEAT_STEPS
