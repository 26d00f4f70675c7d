"""Searches on a session: create or join a study, run it, and make one of its trials a node.

``rcc-tui search`` and the app's search screen both start a study with ``plan_study`` (the
stored settings of a study being joined, else the caller's; a new study seeded from the
session's sensitivity scan of the searched node) and run it with ``run_study``.
``rcc-tui search apply`` and the screen's Apply both call ``apply_trial``: it checks out the
node the study searched from when the head has moved, then applies the trial's record as the
op ``apply_trial`` (so the op log holds the record, and replay never reads the study).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rcc.eval.encode import CancelCheck
    from rcc.session import ops as O
    from rcc.compression.trial_record import TrialRecord
    from rcc.search.study import Limits, SearchReport, StudySettings
    from rcc.session.progress import ProgressFn
    from rcc.session.session import OpOutcome, Session


@dataclass(frozen=True)
class StudyStart:
    """How a search will run: its settings, whether it joins a stored study, and its sensitivity seed."""

    study: str
    settings: StudySettings
    joining: bool
    eval_split: str  # the split its trials are measured on (the session's eval split)
    sensitivity: dict[str, float] | None = None
    sensitivity_source: str | None = None  # the file the seed came from


def plan_study(session_dir: str | Path, study: str, storage: str | None = None,
               adjust: Callable[[StudySettings], StudySettings] | None = None,
               base: StudySettings | None = None, sensitivity_file: str | None = None) -> StudyStart:
    """The start of a search: the stored study's settings (joining it), else ``base`` or the defaults;
    ``adjust`` then applies the caller's choices (the CLI's options, the screen's form).

    A new study without ``sensitivity_file`` is seeded from the session's scan of the node it
    searches from, when there is one (``rcc-tui analyze sensitivity --session`` or the app's scan).
    A storage server that cannot be reached is refused here, before any study is touched.
    """
    from rcc.search.seeds import read_scores, session_sensitivity
    from rcc.search.storage import open_storage, resolve_url, sqlite_path
    from rcc.search.study import StudySettings, existing_settings, read_source

    url = resolve_url(storage, session_dir)
    if sqlite_path(url) is None:  # a server: unreachable or unusable is one line now, not a new study later
        open_storage(url, create=False)
    source = read_source(session_dir)
    stored = existing_settings(url, study)
    settings = stored or base or StudySettings()
    if adjust is not None:
        settings = adjust(settings)
    sensitivity, origin = None, None
    if sensitivity_file:
        sensitivity, origin = read_scores(sensitivity_file), str(sensitivity_file)
    elif stored is None:
        found = session_sensitivity(session_dir, source.node)
        if found:
            origin, sensitivity = str(found[0]), found[1]
    return StudyStart(study, settings, stored is not None, source.eval_split, sensitivity, origin)


def run_study(session_dir: str | Path, start: StudyStart, limits: Limits, storage: str | None = None,
              workers: int = 1, device: str = "auto", progress=None,
              cancel: CancelCheck | None = None) -> SearchReport:
    """Run ``start``'s study (``rcc.search.run.run_search``); the session itself is only read."""
    from rcc.errors import Cancelled
    from rcc.search.run import run_search

    if cancel is not None and cancel():
        raise Cancelled("the search was stopped before its first trial")
    return run_search(session_dir, start.study, start.settings, limits, storage=storage, workers=workers,
                      sensitivity=start.sensitivity, device=device, progress=progress, cancel=cancel)


@dataclass(frozen=True)
class AppliedTrial:
    """The ops ``apply_trial`` applied (a checkout first when needed), the trial's record and its measured accuracy."""

    outcomes: tuple[OpOutcome, ...]
    record: TrialRecord
    measured: float

    @property
    def outcome(self) -> OpOutcome:
        """The ``apply_trial`` op's outcome (the last one)."""
        return self.outcomes[-1]


def apply_trial(session: Session, study: str, trial: int, storage: str | None = None,
                progress: ProgressFn | None = None, cancel: CancelCheck | None = None) -> AppliedTrial:
    """Make trial ``trial`` of ``study`` a node of ``session``: check out its searched node if needed, then apply it.

    ``storage`` (None: the session's search.db) is recorded in the op without its password,
    as provenance; the op carries the trial's record itself.
    """
    from rcc.compression.trial_record import record_from_dict
    from rcc.search.storage import resolve_url, without_password
    from rcc.search.trials import load_trial
    from rcc.session import ops as O

    url = resolve_url(storage, session.directory)
    loaded = load_trial(url, study, trial)
    record = record_from_dict(loaded.user_attrs["record"])
    measured = float(loaded.user_attrs.get("accuracy", float("nan")))
    outcomes = []
    if session.head != record.node:
        outcomes.append(session.apply(O.Checkout(node=record.node), progress=progress, cancel=cancel))
    outcomes.append(session.apply(O.ApplyTrial(study=study, trial=trial,
                                               storage=None if storage is None else without_password(url),
                                               record=record.as_dict()), progress=progress, cancel=cancel))
    return AppliedTrial(tuple(outcomes), record, measured)


def with_trial_record(op: O.Op, session_dir: str | Path) -> O.Op:
    """``op`` as a session logs it: an ``apply_trial`` without its record gets it from the study's storage
    (``op.storage``, None: the session's search.db); any other op, or one with its record, as it is."""
    from dataclasses import replace

    from rcc.search.storage import resolve_url
    from rcc.search.trials import load_record
    from rcc.session.ops import ApplyTrial

    if not isinstance(op, ApplyTrial) or op.record:
        return op
    return replace(op, record=load_record(resolve_url(op.storage, session_dir), op.study, op.trial).as_dict())
