"""Snapshots of the workbench (pytest-textual-snapshot): the main screen at 120×40 and 80×24, and the
layer editor refusing a bad value. Update with ``pytest tests/test_tui_snapshots.py --snapshot-update``
and look at the SVGs under tests/__snapshots__/ before keeping them.

The app runs in its deterministic mode (no clock times, durations or full paths on screen) on a
copy of one rcc-mini session whose directory is always named ``session``.
"""

from __future__ import annotations

import shutil

import pytest
from test_tui_app import C_FC
from tui_pilot import ready, select_by_pattern, type_into

pytestmark = pytest.mark.slow


@pytest.fixture
def snapshot_app(demo_session, tmp_path):
    from rcc_tui.app import RccApp

    target = tmp_path / "session"
    shutil.copytree(demo_session, target)
    app = RccApp(session_dir=str(target), new=False, device="cpu", theme="rcc-dark")
    app.deterministic = True
    return app


async def _opened_with_block_0(pilot) -> None:
    await ready(pilot)
    await pilot.press("enter", "down", "enter", "down", "down", "down", "down", "down")  # vision → block 0 → c_fc
    await pilot.pause()


def test_main_screen_120x40(snap_compare, snapshot_app):
    assert snap_compare(snapshot_app, terminal_size=(120, 40), run_before=_opened_with_block_0)


def test_main_screen_80x24(snap_compare, snapshot_app):
    assert snap_compare(snapshot_app, terminal_size=(80, 24), run_before=_opened_with_block_0)


async def _bad_sparsity(pilot) -> None:
    await ready(pilot)
    await select_by_pattern(pilot, C_FC)
    await type_into(pilot, "#sparsity", "1.5")
    await pilot.press("escape")  # back to the tree: no blinking cursor in the snapshot
    await pilot.pause()
    assert pilot.app.main.query_one("#editor").error.startswith("sparsity 1.5 is out of range")


def test_editor_refuses_a_bad_value(snap_compare, snapshot_app):
    assert snap_compare(snapshot_app, terminal_size=(120, 40), run_before=_bad_sparsity)
