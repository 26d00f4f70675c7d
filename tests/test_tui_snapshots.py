"""Snapshots of the workbench (pytest-textual-snapshot) at 80×24 and 120×40, on a fake session.

- the History tab with five nodes and a branch (lanes, numbers, labels, ops, stored sizes and their
  change from the parent, eval and test metrics, the selected node's exact figures);
- the Compress tab while a cascade runs (the status bar's bar, percentage and phase at 80×24);
- the tree opened on block 0, and the editor refusing a bad value.

Update with ``pytest tests/test_tui_snapshots.py --snapshot-update`` and look at the SVGs under
tests/__snapshots__/ before keeping them. The app runs in its deterministic mode (no clock times,
durations, ETAs or full paths on screen); the fake session's directory is always named ``session``.
"""

from __future__ import annotations

import threading

import pytest
from fake_session import FakeSession, branched, fake_app
from tui_pilot import ready, select_by_pattern, type_into, wait_until

C_FC = "visual.transformer.resblocks.0.mlp.c_fc"


def snapshot_app(tmp_path, session: FakeSession | None = None):
    app, session = fake_app(tmp_path, session or FakeSession(tmp_path / "session"), theme="rcc-dark")
    app.deterministic = True
    return app, session


async def _history(pilot) -> None:
    await ready(pilot)
    await pilot.press("2", "down", "down")  # the History tab; the cursor on node 3 (“dare-50”, on the branch)
    await pilot.pause()
    assert pilot.app.main.query_one("#node-details").node == 3


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_the_history_with_a_branch(snap_compare, tmp_path, size):
    app, _ = snapshot_app(tmp_path, branched(tmp_path / "session"))
    assert snap_compare(app, terminal_size=size, run_before=_history)


def test_a_cascade_running_at_80x24(snap_compare, tmp_path):
    gate = threading.Semaphore(0)
    app, _ = snapshot_app(tmp_path, FakeSession(tmp_path / "session", gate=gate))

    async def running(pilot) -> None:
        await ready(pilot)
        await select_by_pattern(pilot, C_FC)
        await type_into(pilot, "#sparsity", "0.5")
        await pilot.press("enter")
        await wait_until(pilot, lambda: not pilot.app.jobs.busy, 10, "the edit")
        pilot.app.main.query_one("#layer-tree").focus()
        await pilot.press("c")
        gate.release(6)  # calibration 0…4 of 4, then the first layer
        await wait_until(pilot, lambda: "layer 1/1" in pilot.app.main.query_one("#status").text, 10, "a layer")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=running)


async def _opened_with_block_0(pilot) -> None:
    await ready(pilot)
    await pilot.press("enter", "down", "enter", "down", "down", "down", "down", "down")  # vision → block 0 → c_fc
    await pilot.pause()


def test_main_screen_120x40(snap_compare, tmp_path):
    app, _ = snapshot_app(tmp_path)
    assert snap_compare(app, terminal_size=(120, 40), run_before=_opened_with_block_0)


async def _bad_sparsity(pilot) -> None:
    await ready(pilot)
    await select_by_pattern(pilot, C_FC)
    await type_into(pilot, "#sparsity", "abc")
    await pilot.press("escape")  # back to the tree: no blinking cursor in the snapshot
    await pilot.pause()
    assert pilot.app.main.query_one("#editor").error.startswith("sparsity 'abc' is not a number")


def test_editor_refuses_a_bad_value(snap_compare, tmp_path):
    app, _ = snapshot_app(tmp_path)
    assert snap_compare(app, terminal_size=(80, 24), run_before=_bad_sparsity)
