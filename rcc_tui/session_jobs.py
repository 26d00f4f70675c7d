"""The jobs that work on the app's session, and what they return.

Each is a ``Job`` for the runner (``rcc_tui.workers``) on the session lane: opening the session,
applying one op or a sequence of ops (a search trial after the checkout of its node), a
sensitivity scan. Each calls the engine's use case (``rcc.services``) exactly as the CLI does,
then reads the ``SessionView`` the screen redraws from, still in its worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rcc_tui.workers import Job, JobContext

if TYPE_CHECKING:
    from rcc.analysis.sensitivity import ScanSetting
    from rcc.services.sensitivity import StoredScan
    from rcc.session.ops import Op
    from rcc.session.session import OpOutcome
    from rcc_tui.session_view import SessionView
    from rcc_tui.workbench_session import SessionFactory, WorkbenchSession

RunOps = Callable[["WorkbenchSession", Any, Any], Sequence["OpOutcome"]]


@dataclass(frozen=True)
class SessionOpened:
    """The session was created or opened; the screen owns it from now on."""

    session: WorkbenchSession
    view: SessionView


@dataclass(frozen=True)
class OpsApplied:
    """Ops were applied and recorded, in order; ``view`` is the session as it is now."""

    outcomes: tuple[OpOutcome, ...]
    view: SessionView

    @property
    def outcome(self) -> OpOutcome:
        return self.outcomes[-1]

    def where(self) -> str:
        """`` → node 5`` (a new node or a moved head), `` (no change: no node)``, or empty."""
        outcome = self.outcome
        if outcome.new_node is not None:
            return f" → node {outcome.new_node}"
        if outcome.unchanged:
            return " (no tensor changed: no node)"
        first = self.outcomes[0]
        return f" → node {outcome.node_after}" if outcome.node_after != first.node_before else ""


@dataclass(frozen=True)
class ScanStored:
    """A sensitivity scan of the head node finished and was stored."""

    stored: StoredScan


def open_job(factory: SessionFactory, title: str) -> Job:
    """Create or open the session (``factory``), then read its view."""

    def work(context: JobContext) -> SessionOpened:
        session = factory(context.progress, context.cancelled)
        try:
            return SessionOpened(session, session.view())
        except BaseException:
            session.close()
            raise

    return Job(title, work, kind="open", discard=lambda opened: opened.session.close())


def ops_job(session: WorkbenchSession, title: str, run: RunOps, op: Op, previous: SessionView,
            origin: object | None = None) -> Job:
    """Apply the ops ``run(session, progress, cancel)`` applies; the view is re-read where they changed the model."""

    def read(outcomes: Sequence[OpOutcome]) -> SessionView:
        reads_model = any(o.op.changes_model or o.node_after != o.node_before for o in outcomes)
        return session.view(layers=None if reads_model else previous.layers, with_state=reads_model,
                            previous=previous)

    def work(context: JobContext) -> OpsApplied:
        try:
            outcomes = tuple(run(session, context.progress, context.cancelled))
        except BaseException:
            if session.head != previous.head:  # a sequence got part-way (a checkout, then a failed apply)
                context.view = session.view(previous=previous)
            raise
        return OpsApplied(outcomes, read(outcomes))

    return Job(title, work, op=op, origin=origin, head=previous.head_node)


def op_job(session: WorkbenchSession, op: Op, title: str, previous: SessionView, origin: object | None = None) -> Job:
    """Apply one op."""
    return ops_job(session, title, lambda s, progress, cancel: [s.apply(op, progress, cancel)], op, previous, origin)


def apply_trial_job(session: WorkbenchSession, study: str, trial: int, previous: SessionView,
                    origin: object | None = None) -> Job:
    """Make a search trial a node: the checkout of its searched node when needed, then ``apply_trial`` (one job)."""
    from rcc.session.ops import ApplyTrial

    def run(s, progress, cancel):
        from rcc.services.search import apply_trial

        return apply_trial(s, study, trial, progress=progress, cancel=cancel).outcomes

    # The op stands for the job (charts start a run for it); the engine fills in the trial's record.
    return ops_job(session, f"apply trial {trial} of {study}", run, ApplyTrial(study=study, trial=trial),
                   previous, origin)


def scan_job(session: WorkbenchSession, names: Sequence[str], setting: ScanSetting, title: str) -> Job:
    """Scan ``names`` of the live model at the head and store the scan (an analysis: no op is recorded)."""

    def work(context: JobContext) -> ScanStored:
        from rcc.errors import RccError
        from rcc.services.sensitivity import scan_session

        if session.engine is None:
            raise RccError("this session has no live model to scan; allowed: a session opened from a directory")
        return ScanStored(scan_session(session.engine, names, setting, context.progress, context.cancelled))

    return Job(title, work, kind="scan")
