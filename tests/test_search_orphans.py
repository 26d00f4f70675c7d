"""Search workers die with the command that started them: a real SIGKILL of the parent.

``rcc-tui search --workers 2`` runs as a process; once its worker process is inside a trial,
the parent is SIGKILLed (no handler, no cleanup of its own). The worker must exit promptly
(PR_SET_PDEATHSIG, then its parent check), its running trial must be recorded FAIL, and no
trial of it may finish after the parent died.
"""

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest

from rcc.search.storage import default_url
from rcc.search.worker import orphan_check
from rcc.session.session import Session

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def session_dir(tmp_path_factory, tiny_spec):
    directory = tmp_path_factory.mktemp("orphans") / "session"
    Session.create(directory, model=tiny_spec, device="cpu").close()
    return directory


def _worker_trials(url: str, study: str, worker: int) -> list:
    try:
        trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    except (KeyError, optuna.exceptions.StorageInternalError):
        return []  # not created yet
    return [t for t in trials if t.user_attrs.get("record", {}).get("extra", {}).get("worker") == worker]


def test_a_sigkilled_search_takes_its_workers_with_it(session_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-m", "rcc.cli.main", "search", str(session_dir), "--study", "orphans",
                               "--workers", "2", "--trials", "400", "--device", "cpu"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = default_url(session_dir)
    worker = None
    try:
        deadline = time.monotonic() + 240
        running = []
        while time.monotonic() < deadline and not running:
            assert parent.poll() is None, parent.stderr.read().decode()[-2000:]
            if worker is None:
                children = psutil.Process(parent.pid).children()
                worker = next((c for c in children if "rcc.search.worker" in " ".join(c.cmdline())), None)
            running = [t for t in _worker_trials(url, "orphans", 1) if t.state == optuna.trial.TrialState.RUNNING]
            time.sleep(0.05)
        assert worker is not None and running, "worker 1 never started a trial"
        killed_at = dt.datetime.now()
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        worker.wait(timeout=30)  # raises psutil.TimeoutExpired if it outlives its parent
    finally:
        if parent.poll() is None:
            parent.kill()
        if worker is not None and worker.is_running():
            worker.kill()
    trials = {t.number: t for t in _worker_trials(url, "orphans", 1)}
    states = {t.number: t.state for t in trials.values()}
    assert optuna.trial.TrialState.RUNNING not in states.values(), states
    watched = trials[running[0].number]
    finished_late = [t.number for t in trials.values() if t.state == optuna.trial.TrialState.COMPLETE
                     and t.datetime_complete > killed_at + dt.timedelta(seconds=0.5)]
    assert finished_late == [], "a worker finished trials after its parent died"
    if watched.datetime_complete is None or watched.datetime_complete > killed_at + dt.timedelta(seconds=0.5):
        assert watched.state == optuna.trial.TrialState.FAIL
    assert any(t.state == optuna.trial.TrialState.FAIL for t in trials.values()), states


def test_the_parent_check_sees_a_parent_gone():
    assert orphan_check(os.getppid())() is False
    assert orphan_check(os.getppid() + 1_000_000)() is True  # as if it had died and we were adopted
