"""Run a search: create or join a study, then run its trials in this process or in worker processes.

This module sits above ``study`` (settings, sources, one worker's loop) and ``worker`` (the
worker processes, which import ``study`` themselves), so neither of those imports the other back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from rcc.search.objective import size_of
from rcc.search.space import SearchError
from rcc.search.storage import display_url, open_storage, resolve_url
from rcc.search.study import (
    DENSE_ATTR, DENSE_SIZE_ATTR, Limits, ProgressFn, SearchReport, StudySettings, front_rows, load_context,
    make_pruner, make_sampler, open_study, read_source, run_worker, sampler_seed, seed_study, study_source,
)
from rcc.search.trials import load_study, rows_of
from rcc.search.worker import run_parallel


def run_search(session_dir: str | Path, study_name: str, settings: StudySettings, limits: Limits,
               storage: str | None = None, workers: int = 1, sensitivity: Mapping[str, float] | None = None,
               device: str = "auto", progress: ProgressFn | None = None,
               cancel: Callable[[], bool] | None = None) -> SearchReport:
    """Create or join ``study_name`` and run ``limits.trials`` trials in ``workers`` processes on this machine.

    The session is only read (never its write lock); workers beyond the first are separate
    processes (rcc.search.worker), each with its own copy of the model. ``progress`` hears of
    every finished trial; ``cancel()`` true stops the search (see ``run_worker``; worker
    processes are ended, their running trials recorded FAIL).
    """
    began = time.perf_counter()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SearchError(f"workers {workers!r} is invalid; allowed: an integer ≥ 1")
    url = resolve_url(storage, session_dir)
    opened = open_storage(url, heartbeat=True)
    source = read_source(session_dir)
    study, created = open_study(opened, study_name, settings, source, pruner=make_pruner(settings))
    seed = sampler_seed(settings.seed, 0, first=created)
    study.sampler = make_sampler(settings, seed)
    source = study_source(study, session_dir)  # a joined study keeps its own node and base plan
    ctx = load_context(source, settings, device=device, worker=0, seed=seed,
                       dense_accuracy=study.user_attrs.get(DENSE_ATTR), cancel=cancel)
    if DENSE_ATTR not in study.user_attrs:
        study.set_user_attr(DENSE_ATTR, ctx.dense_accuracy)
        study.set_user_attr(DENSE_SIZE_ATTR, size_of(ctx.model))
    if created or not study.get_trials(deepcopy=False):
        seed_study(study, ctx.space, source.plan, sensitivity)
    if workers == 1:
        ran = run_worker(study, ctx, settings, limits, limits.trials, progress, cancel)
    else:
        ran = run_parallel(url, study, ctx, settings, limits, workers, session_dir, device, progress, cancel)
    final = load_study(opened, study_name)
    rows = rows_of(final.get_trials(deepcopy=False), settings.objective.mode, settings.objective.size)
    attrs = final.user_attrs
    return SearchReport(study=study_name, storage=display_url(url), settings=settings,
                        dense_accuracy=float(attrs.get(DENSE_ATTR, math.nan)),
                        dense_size=dict(attrs.get(DENSE_SIZE_ATTR, {})), rows=tuple(rows),
                        front=tuple(front_rows(rows, settings.objective.mode)), ran=ran,
                        seconds=time.perf_counter() - began)
