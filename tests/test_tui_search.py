"""The search screen, driven by Pilot: a tiny study on the demo session, live; apply a trial; stop; bad values.

Every check reads the truth back from the study's storage (``rcc.search.trials``) or the
Session, never a number written here. Studies stay small as in tests/test_search_*.py: only
the vision tower is searched, one calibration image per class, two random start trials.
"""

from __future__ import annotations

import pytest
from tui_pilot import make_app, ready, running, wait_until

from rcc.search.objective import ObjectiveConfig
from rcc.search.space import SpaceConfig
from rcc.search.storage import default_url, open_storage
from rcc.search.study import StudySettings
from rcc.search.trials import list_trials, load_study, pareto_front
from rcc.session.session import Session

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

SIZE = (120, 40)
FAST = StudySettings(space=SpaceConfig(towers=("vision",)), objective=ObjectiveConfig(calib_per_class=1),
                     startup_trials=2)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """The app's worker and the search share two cores: one torch thread each is steadier."""


async def open_search(pilot):
    from rcc_tui.screens.search_screen import SearchScreen

    pilot.app.main.query_one("#layer-tree").focus()
    await pilot.press("s")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, SearchScreen), 10, "the search screen")
    screen = pilot.app.screen
    screen.base_settings = FAST
    await wait_until(pilot, lambda: not screen.reading, 10, "the first listing")
    return screen


async def fill(pilot, screen, selector: str, text: str) -> None:
    from textual.widgets import Input

    screen.query_one(selector, Input).value = text
    await pilot.pause()


async def start(pilot, screen, trials: int) -> None:
    await fill(pilot, screen, "#search-trials", str(trials))
    screen.query_one("#search-table").focus()
    await pilot.press("s")
    await pilot.pause()


def table_column(screen, column: str) -> dict[int, str]:
    """Trial number → the text of ``column`` in the screen's table."""
    table = screen.query_one("#search-table")
    return {int(str(key.value)): str(table.get_cell(key, column)) for key in table.rows}


def notes(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def test_a_search_lists_trials_live_and_a_completed_trial_becomes_a_node(session_dir):
    from rcc_tui.screens.search_screen import FRONT_MARK, SearchScreen

    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = await open_search(pilot)
        assert screen.query_one("#search-table").row_count == 0  # no study yet: nothing listed, nothing run
        assert str(screen.query_one("#search-table").columns["accuracy"].label) == "val accuracy"  # its split
        assert "no study 'app'" in str(screen.query_one("#search-status").render())
        await start(pilot, screen, 3)
        assert screen.job is not None
        seen_live = 0
        while screen.job is not None:  # rows appear while the search runs, not only at its end
            seen_live = max(seen_live, screen.query_one("#search-table").row_count)
            await pilot.pause(0.1)
        await wait_until(pilot, lambda: not screen.reading, 10, "the last listing")
        await pilot.pause()
        assert seen_live >= 1

        rows = list_trials(default_url(session_dir), "app")
        assert len(rows) == 3 and screen.query_one("#search-table").row_count == len(rows)
        assert {n: s for n, s in table_column(screen, "state").items()} == {r.number: r.state for r in rows}
        front = pareto_front([(r.number, r.size, r.accuracy) for r in rows if r.state == "COMPLETE"])
        marked = {n for n, mark in table_column(screen, "front").items() if mark == FRONT_MARK}
        assert marked == front and set(screen.query_one("#search-chart").front_trials) == front
        assert "trials run" in str(screen.query_one("#search-status").render())

        # Apply a completed trial that compresses something: the main screen makes it a node.
        chosen = next(r for r in rows if r.state == "COMPLETE" and r.removed)
        table = screen.query_one("#search-table")
        table.focus()
        table.move_cursor(row=table.get_row_index(str(chosen.number)))
        await pilot.press("a")
        await wait_until(pilot, lambda: not running(app) and app.main.view.head != 1, 120, "the apply")
        await pilot.pause()
        node = app.session.nodes()[-1]
        trial = load_study(default_url(session_dir), "app").trials[chosen.number]
        assert node.op_kind == "apply_trial" and node.parent == 1 and app.session.head == node.id
        assert node.metrics["val/primary"] == trial.user_attrs["accuracy"]
        assert node.metrics["size/params"] == trial.user_attrs["size"]["size/params"]

        # The head moved off the searched node: applying again checks that node out first, then branches,
        # as one job of the runner (no waiting on the checkout from outside).
        await pilot.press("a")
        await wait_until(pilot, lambda: len(app.session.nodes()) == node.id + 1 and not running(app),
                         120, "the second apply")
        await pilot.pause()
        again = app.session.nodes()[-1]
        assert [r.kind for r in app.session.ops()][-2:] == ["checkout", "apply_trial"]
        assert again.op_kind == "apply_trial" and again.parent == 1 and app.session.head == again.id
        assert again.metrics["val/primary"] == trial.user_attrs["accuracy"]

        # Reopening lists the stored study without starting anything.
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, SearchScreen), 10, "the main screen")
        screen = await open_search(pilot)
        await wait_until(pilot, lambda: screen.query_one("#search-table").row_count == len(rows), 10, "the list")
        assert screen.job is None and len(list_trials(default_url(session_dir), "app")) == len(rows)


async def test_stop_ends_the_search_cleanly_and_bad_values_are_refused(session_dir):
    import optuna

    from rcc_tui.screens.search_screen import SearchScreen

    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = await open_search(pilot)

        # Bad values: one line naming the value and what is allowed; nothing starts.
        await fill(pilot, screen, "#search-trials", "0")
        screen.query_one("#search-table").focus()
        await pilot.press("s")
        await pilot.pause()
        assert screen.job is None and "trials '0' is invalid; allowed: an integer from 1 to" in notes(app)[-1]
        await fill(pilot, screen, "#search-study", "  ")
        await start(pilot, screen, 3)
        assert screen.job is None and "study name '  ' is invalid; allowed:" in notes(app)[-1]
        await fill(pilot, screen, "#search-study", "app")
        assert not (session_dir / "search.db").exists()

        # Stop while a trial runs: the worker ends and no trial stays RUNNING.
        await start(pilot, screen, 50)
        await wait_until(pilot, lambda: any(r.state == "RUNNING" for r in screen.rows), 120, "a running trial")
        await pilot.press("x")
        await wait_until(pilot, lambda: screen.job is None, 60, "the search to stop")
        await wait_until(pilot, lambda: not screen.reading, 10, "the last listing")
        rows = list_trials(default_url(session_dir), "app")
        assert rows and not any(r.state == "RUNNING" for r in rows) and len(rows) < 50
        assert not any(job.kind == "search" for job in app.jobs.running())
        assert "stopped" in notes(app)[-1]

        # A trial that is not COMPLETE is refused in one line.
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = load_study(open_storage(default_url(session_dir)), "app")
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={}, distributions={}))
        pruned = max(t.number for t in study.trials)
        screen._read("app")
        await wait_until(pilot, lambda: any(r.number == pruned for r in screen.rows), 10, "the pruned trial")
        await pilot.pause()
        table = screen.query_one("#search-table")
        table.move_cursor(row=table.get_row_index(str(pruned)))
        nodes = len(app.session.nodes())
        await pilot.press("a")
        await pilot.pause()
        assert f"trial {pruned} is PRUNED; allowed: a COMPLETE trial" in notes(app)[-1]
        assert len(app.session.nodes()) == nodes and not running(app)

        # The app still responds; quitting while a search runs asks first, then stops it before the app exits.
        from rcc_tui.screens.quit_screen import QuitScreen

        await start(pilot, screen, 50)
        job = screen.job
        assert job is not None and isinstance(app.screen, SearchScreen)
        await pilot.press("q")
        await wait_until(pilot, lambda: isinstance(app.screen, QuitScreen), 10, "the question")
        assert "A search is running" in str(app.screen.query_one("#quit-question").render())
        await pilot.press("y")
        await wait_until(pilot, lambda: app._task is not None and app._task.done(), 120, "the app to exit")
        assert not job.running
    assert not any(r.state == "RUNNING" for r in list_trials(default_url(session_dir), "app"))
    with Session.open(session_dir, device="cpu", load=False) as again:  # the lock was released
        assert [n.op_kind for n in again.nodes()] == ["load_model"]
