"""What the app's Pilot tests share: the demo session fixtures, opening the app, and waiting on it.

The real end-to-end tests (tests/test_tui_app.py and the analysis, search and train ones) copy
one rcc-mini session created headlessly once per test run (creating one costs ~10 s; opening a
copy ~4 s); a module that needs another starting session defines its own ``demo_session``.
Widget, key and snapshot tests run the app on a fake session (tests/fake_session.py) instead.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

SIZE = (120, 40)


@pytest.fixture(autouse=True)
def private_sessions_home(tmp_path_factory, monkeypatch):
    # A test that starts a new session without a directory must never write into the real home.
    monkeypatch.setenv("RCC_SESSIONS_DIR", str(tmp_path_factory.mktemp("sessions-home")))


@pytest.fixture(scope="session")
def demo_session(tmp_path_factory) -> Path:
    """A fresh rcc-mini + digits session (root node only), made once per test run, never opened for writing."""
    from rcc.session.session import Session

    directory = tmp_path_factory.mktemp("demo") / "session"
    Session.create(directory, device="cpu").close()
    return directory


@pytest.fixture
def session_dir(demo_session, tmp_path) -> Path:
    """A private copy of the module's demo session for one test."""
    target = tmp_path / "session"
    shutil.copytree(demo_session, target)
    return target


def make_app(session_dir: Path | None, new: bool = False, **kwargs):
    from rcc_tui.app import RccApp

    return RccApp(session_dir=None if session_dir is None else str(session_dir), new=new, device="cpu", **kwargs)


async def wait_until(pilot, condition, timeout: float = 120.0, what: str = "condition") -> None:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


async def ready(pilot, timeout: float = 120.0) -> None:
    """Until the session is open and no work is running or undelivered."""
    main, jobs = pilot.app.main, pilot.app.jobs
    await wait_until(pilot, lambda: main.view is not None and not jobs.busy, timeout, "the session")
    await pilot.pause()


async def settle(pilot, timeout: float = 180.0) -> None:
    """Until every job ended and its messages reached the screen."""
    await asyncio.wait_for(pilot.app.jobs.wait(), timeout)
    await pilot.pause()
    await pilot.pause()


def running(app) -> bool:
    """A job holds the session."""
    return app.jobs.session_job is not None


def text_of(app, selector: str) -> str:
    """What a widget of the main screen shows, as plain text."""
    widget = app.main.query_one(selector)
    return widget.text if hasattr(widget, "text") else str(widget.render())


def log_lines(app) -> list[str]:
    """The log's lines as drawn (a long line wraps onto the next ones)."""
    return [str(line.text) for line in app.main.query_one("#log").lines]


def log_text(app) -> str:
    """The whole log as one string, wrapped lines joined again by single spaces."""
    return " ".join(line.strip() for line in log_lines(app))


async def type_into(pilot, selector: str, text: str) -> None:
    widget = pilot.app.main.query_one(selector)
    widget.focus()
    widget.value = ""
    await pilot.pause()
    await pilot.press(*text)


async def select_by_pattern(pilot, pattern: str) -> None:
    """``/``, the pattern, enter: the pattern is put in the field at once (typing is tested elsewhere)."""
    await pilot.press("escape", "slash")  # out of any field, into the pattern input
    pilot.app.main.query_one("#pattern").value = pattern
    await pilot.press("enter")
    await pilot.pause()


async def plan_sparsity(pilot, pattern: str, sparsity: str) -> None:
    """Select ``pattern`` in the tree, type ``sparsity`` in the editor and apply it (one op); back in the tree."""
    await select_by_pattern(pilot, pattern)
    await type_into(pilot, "#sparsity", sparsity)
    await pilot.press("enter")
    await settle(pilot)
    pilot.app.main.query_one("#layer-tree").focus()


async def tap(pilot, *keys: str) -> None:
    """Press keys without waiting for the process to go idle (it is busy while work runs)."""
    from textual import events

    for key in keys:
        pilot.app.post_message(events.Key(key, key if len(key) == 1 else None))
        await asyncio.sleep(0.05)


def op_kinds(session) -> list[str]:
    return [record.kind for record in session.ops()]


def state_of(session) -> tuple:
    """Everything an op could change: ops, nodes (with metrics and labels), head, plan."""
    from rcc.compression.plan import plan_to_dict

    return (tuple((r.seq, r.kind) for r in session.ops()), tuple(session.nodes()), session.head,
            plan_to_dict(session.plan))
