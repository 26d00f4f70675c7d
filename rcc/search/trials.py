"""Reading a study back: its trials as rows (for tables, scatters, the app), the front, one trial's record.

Everything here only reads the storage: no table is created and no SQLite file appears
where none was. ``list_trials`` is cheap enough to poll (one query through Optuna's storage
per call, no torch import; pass an opened storage object, ``open_storage(url, create=False)``,
to reuse its connection pool).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from typing import TYPE_CHECKING

from rcc.errors import RccError
from rcc.search.storage import display_url, open_storage

if TYPE_CHECKING:  # the record module imports torch; listings must stay light
    from rcc.compression.trial_record import TrialRecord


class StudyNotFound(RccError):
    """A study name the storage does not hold."""


@dataclass(frozen=True)
class TrialRow:
    """One trial as a screen shows it."""

    number: int
    state: str  # COMPLETE, PRUNED, RUNNING, WAITING, FAIL
    size: float | None  # the size objective (stored values or bytes), also for pruned trials
    params: float | None  # stored values (size/params) whatever the objective
    accuracy: float | None  # eval-split accuracy; for a pruned trial the last rung's
    removed: float | None  # fraction of the selected layers' parameters removed
    on_front: bool  # not dominated in (size ↓, accuracy ↑) by another completed trial
    feasible: bool | None  # min-size: accuracy ≥ threshold × dense; None for pareto studies
    origin: str  # sampler, current plan, sensitivity
    seconds: float | None
    note: str = ""  # why it was pruned


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """(size, accuracy) a dominates b: no larger, no less accurate, and better in one."""
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def pareto_front(points: Sequence[tuple[Hashable, float, float]]) -> set[Hashable]:
    """Keys of the points (key, size, accuracy) that no other point dominates."""
    clean = [(key, s, a) for key, s, a in points if not (math.isnan(s) or math.isnan(a))]
    return {key for key, s, a in clean if not any(dominates((s2, a2), (s, a)) for _, s2, a2 in clean)}


def _storage(storage):
    return open_storage(storage, create=False) if isinstance(storage, str) else storage


def load_study(storage, study: str, sampler=None, pruner=None):
    """The study ``study`` in ``storage`` (a URL or an opened storage); refuses an unknown name."""
    import optuna

    opened = _storage(storage)
    try:
        return optuna.load_study(study_name=study, storage=opened, sampler=sampler, pruner=pruner)
    except KeyError:
        names = optuna.get_all_study_names(opened)
        where = display_url(storage) if isinstance(storage, str) else "this storage"
        raise StudyNotFound(f"study {study!r} is not in {where}; allowed: "
                            f"{', '.join(sorted(names)) or 'none yet (run `rcc-tui search` first)'}") from None


def _float(value) -> float | None:
    return None if value is None else float(value)


def rows_of(trials, mode: str = "pareto", measure: str = "params") -> list[TrialRow]:
    """TrialRows of Optuna FrozenTrials; ``mode`` pareto or min-size, ``measure`` params or bytes."""
    from optuna.trial import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("accuracy") is not None]
    front = pareto_front([(t.number, _size(t, measure), float(t.user_attrs["accuracy"])) for t in complete])
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        attrs = t.user_attrs
        accuracy = _float(attrs.get("accuracy"))
        if accuracy is None and attrs.get("rungs"):
            accuracy = float(attrs["rungs"][-1][1])
        feasible = None
        if mode == "min-size" and t.state == TrialState.COMPLETE:
            constraints = list(getattr(t, "constraints", {}).values()) or (
                [attrs["constraint"]] if "constraint" in attrs else [])
            feasible = all(c <= 0 for c in constraints)
        seconds = attrs.get("seconds")
        if seconds is None and t.datetime_start and t.datetime_complete:
            seconds = (t.datetime_complete - t.datetime_start).total_seconds()
        rows.append(TrialRow(number=t.number, state=t.state.name, size=_size(t, measure) if "size" in attrs else None,
                             params=_float(attrs.get("size", {}).get("size/params")), accuracy=accuracy,
                             removed=_float(attrs.get("removed")), on_front=t.number in front, feasible=feasible,
                             origin=str(attrs.get("origin", "sampler")), seconds=_float(seconds),
                             note=str(attrs.get("pruned", ""))))
    return rows


def _size(trial, measure: str) -> float:
    return float(trial.user_attrs.get("size", {}).get(f"size/{measure}", math.nan))


@dataclass(frozen=True)
class StudyInfo:
    """What a study searches and from where: for a screen's title and its dense reference point."""

    name: str
    mode: str  # pareto | min-size
    size_measure: str  # params | bytes
    settings: dict
    source: dict  # model, data, eval split, node, base plan
    dense_accuracy: float | None
    dense_size: dict

    @property
    def eval_split(self) -> str:
        """The split the study's accuracies are measured on, by its current name (``val``)."""
        from rcc.session.metric_keys import modern_split

        return modern_split(self.source.get("data"), self.source.get("eval_split")) or "eval"


def study_info(storage, study: str) -> StudyInfo:
    """The settings and reference (dense) measurements ``rcc-tui search`` stored with a study."""
    attrs = load_study(storage, study).user_attrs
    settings = dict(attrs.get("rcc/settings", {}))
    objective = settings.get("objective", {})
    return StudyInfo(name=study, mode=objective.get("mode", "pareto"), size_measure=objective.get("size", "params"),
                     settings=settings, source=dict(attrs.get("rcc/source", {})),
                     dense_accuracy=_float(attrs.get("rcc/dense_accuracy")),
                     dense_size=dict(attrs.get("rcc/dense_size", {})))


def list_trials(storage, study: str) -> list[TrialRow]:
    """Every trial of ``study`` (number, state, size, accuracy, on the front or not), read-only."""
    loaded = load_study(storage, study)
    settings = loaded.user_attrs.get("rcc/settings", {})
    objective = settings.get("objective", {})
    return rows_of(loaded.get_trials(deepcopy=False), objective.get("mode", "pareto"),
                   objective.get("size", "params"))


def load_trial(storage, study: str, number: int):
    """Trial ``number`` of ``study`` (a FrozenTrial); refuses unknown, unfinished, pruned or failed trials."""
    from optuna.trial import TrialState

    loaded = load_study(storage, study)
    trials = loaded.get_trials(deepcopy=False)
    match = [t for t in trials if t.number == number]
    if not match:
        raise RccError(f"trial {number} is not in study {study!r}; allowed: "
                       f"{'0 to ' + str(len(trials) - 1) if trials else 'none yet'}")
    trial = match[0]
    if trial.state != TrialState.COMPLETE:
        raise RccError(f"trial {number} of study {study!r} is {trial.state.name}; allowed: a COMPLETE trial")
    if "record" not in trial.user_attrs:
        raise RccError(f"trial {number} of study {study!r} stored no record; allowed: trials run by `rcc-tui search`")
    return trial


def load_record(storage, study: str, number: int) -> TrialRecord:
    """The stored record of trial ``number`` of ``study`` (see ``load_trial`` for what is refused)."""
    from rcc.compression.trial_record import record_from_dict

    return record_from_dict(load_trial(storage, study, number).user_attrs["record"])
