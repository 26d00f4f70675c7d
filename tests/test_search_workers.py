"""Two worker processes on one study, on SQLite and on a real PostgreSQL server: nothing lost or doubled.

PostgreSQL: CI (.ci/run) exports RCC_TEST_POSTGRES_URL; without it a throwaway server is
started from the local binaries (tests/postgres_server.py), else the test is skipped.
"""

import os
import uuid

import pytest

from postgres_server import ENV, throwaway_server, unavailable
from rcc.errors import RccError
from rcc.search.objective import ObjectiveConfig
from rcc.search.space import SpaceConfig
from rcc.search.storage import default_url, resolve_url
from rcc.search.run import run_search
from rcc.search.study import Limits, StudySettings
from rcc.search.trials import dominates, list_trials, load_study, study_info
from rcc.session import ops as O
from rcc.session.session import Session

pytestmark = pytest.mark.slow

SETTINGS = StudySettings(space=SpaceConfig(level="group", group_by=("tower",)),
                         objective=ObjectiveConfig(calib_per_class=2), startup_trials=3)
TRIALS = 8


@pytest.fixture(scope="module")
def session_dir(tmp_path_factory, tiny_spec):
    directory = tmp_path_factory.mktemp("search-workers") / "session"
    with Session.create(directory, model=tiny_spec, data="digits", device="cpu"):
        pass
    return directory


@pytest.fixture(scope="module")
def postgres_url():
    if os.environ.get(ENV):
        yield os.environ[ENV]
        return
    reason = unavailable()
    if reason:
        # .ci/run always provides a server; only a developer machine without PostgreSQL skips.
        if os.environ.get("CI"):
            pytest.fail(f"no PostgreSQL server in CI: {reason}; .ci/run must set {ENV}")
        pytest.skip(f"no PostgreSQL server: {reason} (CI sets {ENV})")
    with throwaway_server() as url:
        yield url


def _two_workers_on_one_study(session_dir, storage: str | None) -> None:
    study = f"two-workers-{uuid.uuid4().hex[:8]}"
    # The session stays open for writing the whole time: the search must only ever read it.
    with Session.open(session_dir, load=False) as writer:
        ops_before = len(writer.ops())
        report = run_search(session_dir, study, SETTINGS, Limits(trials=TRIALS), storage=storage, workers=2,
                            device="cpu")
        assert len(writer.ops()) == ops_before
    url = resolve_url(storage, session_dir)
    rows = list_trials(url, study)
    assert [row.number for row in rows] == list(range(TRIALS))  # none lost, none doubled
    assert {row.state for row in rows} <= {"COMPLETE", "PRUNED"}
    assert report.ran == TRIALS
    trials = load_study(url, study).get_trials()
    assert {t.user_attrs["record"]["extra"]["worker"] for t in trials} == {0, 1}  # both processes ran trials
    complete = [r for r in rows if r.state == "COMPLETE"]
    front = [r for r in rows if r.on_front]
    assert front and all(not dominates((o.size, o.accuracy), (f.size, f.accuracy)) for f in front for o in complete)
    assert all(any(dominates((f.size, f.accuracy), (r.size, r.accuracy)) for f in front)
               for r in complete if not r.on_front)
    optuna_front = {t.number for t in load_study(url, study).best_trials}
    assert optuna_front == {r.number for r in front}  # the same front as Optuna's own
    info = study_info(url, study)
    assert info.source["node"] == 1 and info.dense_size["size/params"] > max(r.size for r in complete) * 0.9


def test_two_worker_processes_share_one_sqlite_study_in_the_session(session_dir):
    _two_workers_on_one_study(session_dir, None)
    assert resolve_url(None, session_dir) == default_url(session_dir)
    assert (session_dir / "search.db").is_file()


def test_two_worker_processes_share_one_study_on_a_postgresql_server(session_dir, postgres_url):
    _two_workers_on_one_study(session_dir, postgres_url)


def test_joining_a_study_with_other_settings_is_refused_in_one_line(session_dir):
    run_search(session_dir, "fixed", SETTINGS, Limits(trials=1), device="cpu")
    other = StudySettings(space=SETTINGS.space, objective=ObjectiveConfig(calib_per_class=2, threshold=0.9),
                          startup_trials=3)
    with pytest.raises(RccError, match=r"study 'fixed' was created with setting objective.threshold = 0.95, "
                                       r"not 0.9; allowed: the same setting"):
        run_search(session_dir, "fixed", other, Limits(trials=1), device="cpu")
    # The same settings join and go on numbering.
    run_search(session_dir, "fixed", SETTINGS, Limits(trials=1), device="cpu")
    assert [r.number for r in list_trials(resolve_url(None, session_dir), "fixed")] == [0, 1]
    with Session.open(session_dir, load=False) as session:
        assert all(op.kind != O.ApplyTrial.kind for op in session.ops())
