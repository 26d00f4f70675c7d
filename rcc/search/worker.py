"""Worker processes: N processes on this machine join one study; the parent reports their progress.

    python -m rcc.search.worker        # reads one JSON job from stdin

The command that starts a search is worker 0 itself (its model is loaded already) and starts
workers 1…N−1 as processes; each gets a JSON job on stdin: ``{"session", "storage", "study",
"worker", "trials", "timeout", "patience", "device", "threads"}``. The storage URL travels on
stdin, not on the command line, so a password in it never shows in ``ps``. Each worker opens
the session read-only (never its write lock), loads its own copy of the model at the study's
node, reads the study's settings from the storage and runs its share of the trials; Optuna's
storage hands out trial numbers, so workers never share or lose one. SIGTERM ends a worker
like Ctrl-C: Optuna marks the running trial FAIL and nothing else is touched.

A worker never outlives the command that started it: on Linux the kernel sends it SIGTERM
when its parent dies (``PR_SET_PDEATHSIG``, set first thing), and everywhere it checks its
parent between trials and between the batches of a trial; either way its running trial is
recorded FAIL and it exits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rcc.errors import Cancelled, RccError
from rcc.search.space import SearchError

POLL_SECONDS = 0.5


def shares(trials: int | None, workers: int) -> list[int | None]:
    """Trials per worker: ``trials`` split as evenly as possible (None: no trial limit, all workers)."""
    if trials is None:
        return [None] * workers
    count = min(trials, workers)
    return [trials // count + (1 if i < trials % count else 0) for i in range(count)]


def _report_finished(url: str, study_name: str, mode: str, measure: str, total: int | None, progress,
                     stop: threading.Event, count: list[int]) -> None:
    """Poll the storage and report every trial that finishes (any worker) until ``stop``; counts them in ``count``."""
    from rcc.search.storage import open_storage
    from rcc.search.study import SearchProgress, best_text
    from rcc.search.trials import load_study, rows_of

    opened = open_storage(url, create=False)
    finished = ("COMPLETE", "PRUNED")
    seen = {row.number for row in rows_of(load_study(opened, study_name).get_trials(deepcopy=False), mode, measure)
            if row.state in finished}
    done = 0
    while True:
        last_round = stop.is_set()
        rows = rows_of(load_study(opened, study_name).get_trials(deepcopy=False), mode, measure)
        for row in rows:
            if row.state in finished and row.number not in seen:
                seen.add(row.number)
                done += 1
                count[0] = done
                if progress:
                    progress(SearchProgress(done=done, total=total, row=row, best=best_text(rows, mode)))
        if last_round:
            return
        stop.wait(POLL_SECONDS)


def run_parallel(url: str, study, ctx, settings, limits, workers: int, session_dir, device: str,
                 progress=None, cancel=None) -> int:
    """This process as worker 0 plus ``workers − 1`` worker processes; returns the trials finished meanwhile.

    Progress comes from polling the storage (a thread), so trials of every worker are reported
    (and those of workers on other machines that finish meanwhile).
    """
    from rcc.search.study import run_worker

    plan = shares(limits.trials, workers)
    threads = max(1, (os.cpu_count() or 1) // len(plan))
    logs, processes = [], []
    stop = threading.Event()
    count = [0]
    reporter = threading.Thread(target=_report_finished, daemon=True,
                                args=(url, study.study_name, settings.objective.mode, settings.objective.size,
                                      limits.trials, progress, stop, count))
    previous_threads = None
    try:
        for index, quota in enumerate(plan[1:], start=1):
            log = tempfile.TemporaryFile(mode="w+b")
            job = {"session": str(Path(session_dir).resolve()), "storage": url, "study": study.study_name,
                   "worker": index, "parent": os.getpid(), "trials": quota, "timeout": limits.timeout, "patience": limits.patience,
                   "device": device, "threads": threads}
            process = subprocess.Popen([sys.executable, "-m", "rcc.search.worker"], stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=log)
            process.stdin.write(json.dumps(job).encode())
            process.stdin.close()
            logs.append(log)
            processes.append(process)
        reporter.start()
        import torch

        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        run_worker(study, ctx, settings, limits, plan[0], cancel=cancel)
        while any(p.poll() is None for p in processes):
            if cancel is not None and cancel():
                raise Cancelled("search cancelled by the user")
            time.sleep(POLL_SECONDS)
        failed = [(i, p.returncode) for i, p in enumerate(processes, start=1) if p.returncode != 0]
        if failed:
            index, code = failed[0]
            logs[index - 1].seek(0)
            lines = [line for line in logs[index - 1].read().decode(errors="replace").splitlines() if line.strip()]
            raise SearchError(f"search worker {index} exited with status {code}: "
                              f"{lines[-1] if lines else 'no message'}")
        stop.set()
        reporter.join(timeout=60)
        return count[0]
    except BaseException:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
    finally:
        stop.set()
        if reporter.is_alive():
            reporter.join(timeout=30)
        if previous_threads is not None:
            import torch

            torch.set_num_threads(previous_threads)
        for log in logs:
            log.close()


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> Callable[[], bool]:
    """Ask the kernel for SIGTERM when ``parent`` dies (Linux); returns the check that it has died.

    The signal goes out when the parent *thread* that started this process ends: ``run_parallel``
    waits for its workers on the thread that started them. A parent that died before the
    ``prctl`` call is caught by the check right after it.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    orphaned = orphan_check(parent)
    if orphaned():
        raise KeyboardInterrupt
    return orphaned


def orphan_check(parent: int) -> Callable[[], bool]:
    """A check, cheap enough for every batch, that ``parent`` is no longer this process's parent."""
    return lambda: os.getppid() != parent


def work(job: dict, orphaned: Callable[[], bool] | None = None) -> int:
    """Run one worker's share of a study (see the module docstring); returns the trials it finished.

    ``orphaned()`` true (the parent died) stops it: between trials, or inside one (recorded FAIL).
    """
    import torch

    from rcc.search.storage import open_storage
    from rcc.search.study import (
        DENSE_ATTR, SETTINGS_ATTR, Limits, load_context, make_pruner, make_sampler, run_worker, sampler_seed,
        settings_from_dict, study_source,
    )
    from rcc.search.trials import load_study

    torch.set_num_threads(int(job.get("threads") or 1))
    opened = open_storage(job["storage"], heartbeat=True)
    stored = load_study(opened, job["study"]).user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        raise SearchError(f"study {job['study']!r} has no rcc settings; allowed: a study made by `rcc-tui search`")
    settings = settings_from_dict(stored)
    seed = sampler_seed(settings.seed, int(job["worker"]), first=False)
    study = load_study(opened, job["study"], sampler=make_sampler(settings, seed), pruner=make_pruner(settings))
    source = study_source(study, job["session"])
    ctx = load_context(source, settings, device=job.get("device", "auto"), worker=int(job["worker"]), seed=seed,
                       dense_accuracy=study.user_attrs.get(DENSE_ATTR))
    limits = Limits(trials=job.get("trials"), timeout=job.get("timeout"), patience=job.get("patience"))
    return run_worker(study, ctx, settings, limits, job.get("trials"), cancel=orphaned)


def main() -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        job = json.loads(sys.stdin.read())
        orphaned = die_with_parent(int(job["parent"])) if job.get("parent") else None
        work(job, orphaned)
    except Cancelled:  # its parent died during a trial (recorded FAIL)
        print("rcc-tui search worker: its parent died; stopped", file=sys.stderr)
        return 130
    except RccError as exc:
        print(f"rcc-tui search worker: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rcc-tui search worker: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
