"""The job runner: every piece of background work of the app, with one cancel path and one progress path.

A ``Job`` is a function run in a Textual thread worker: opening the session, one op, a sequence
of ops (check out, then apply a search trial), a sensitivity scan, a search, a read of a study
or of a stored scan. Jobs on the ``session`` lane hold the session: one at a time, and nothing
else writes to it meanwhile. Jobs on the ``background`` lane only read (a search reads the
session read-only, a comparison reads the graph) and run beside it.

The worker never touches a widget. It leaves events in the runner; a timer on the main thread
delivers them every ``PROGRESS_INTERVAL`` seconds as messages to every *subscriber* (a widget
calls ``jobs.subscribe(self)`` on mount), which react to them themselves: the status bar shows
the phase, percentage and ETA, a panel its status and its own inline errors, the chart its
points. Progress is coalesced per job (only the newest event of a tick is delivered), except
chart points (an evaluated attempt, a training loss) and the start and end of a job, which are
never dropped and always arrive in order. Consecutive losses of one tick arrive as one message.

``cancel(job)`` asks a job to stop at its next check (between layers or batches); a cancelled
job ends with ``JobFailed(cancelled=True)``. There are no polling deadlines: a sequence of ops is
one job, and whoever waits for work awaits ``wait(job)``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from textual.app import App
    from textual.dom import DOMNode
    from textual.timer import Timer

    from rcc.session.ops import Op
    from rcc.session.progress import OpProgress

PROGRESS_INTERVAL = 0.1  # seconds between two deliveries of coalesced progress
SESSION = "session"  # the lane of jobs that hold the session: one at a time
BACKGROUND = "background"  # read-only jobs, beside it


@dataclass(eq=False)
class Job:
    """One piece of background work: ``work(context)`` runs in a thread; its return value is the result."""

    title: str
    work: Callable[[JobContext], Any]
    lane: str = SESSION
    kind: str = "ops"  # open, ops, scan, search, read: what quitting asks about
    op: Op | None = None  # the op (the last one of a sequence), when the job applies ops
    origin: object | None = None  # the widget that asked for it (it shows the job's errors inline)
    head: Any = None  # the head node (NodeRecord) when the job started, for charts that start from it
    discard: Callable[[Any], None] | None = None  # releases a result nobody will receive (a session opened)
    started: float = 0.0  # perf_counter at start
    ended: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def running(self) -> bool:
        return self.started > 0 and self.ended is None

    @property
    def eval_split(self) -> str:
        """The split its events' metrics are measured on: the session's eval split ('' when unknown)."""
        return getattr(self.head, "eval_split", "") or ""

    @property
    def cancelling(self) -> bool:
        return self.running and self._cancel.is_set()

    @property
    def cancel_requested(self) -> bool:
        """Someone asked this job to stop (it may have ended anyway, between two checks)."""
        return self._cancel.is_set()

    @property
    def seconds(self) -> float:
        return (self.ended or time.perf_counter()) - self.started if self.started else 0.0


@dataclass
class JobContext:
    """What a job's work function gets: report progress, check for a cancel, leave a partial view."""

    job: Job
    progress: Callable[[Any], None]
    view: Any = None  # a job that changed the session before failing leaves the view it read here

    def cancelled(self) -> bool:
        return self.job._cancel.is_set()


# -- messages (posted on the main thread, in order, to every subscriber) ------------------------

class JobMessage(Message, bubble=False):  # each subscriber gets its own copy: none travels up to another one
    """Something happened to ``job``."""

    def __init__(self, job: Job) -> None:
        super().__init__()
        self.job = job


class JobStarted(JobMessage, bubble=False):
    """``job`` began in its worker thread."""


class JobProgressed(JobMessage, bubble=False):
    """Progress of ``job``: ``event`` is the newest event, ``events`` every event carried (a batch of losses)."""

    def __init__(self, job: Job, event: Any, events: tuple = ()) -> None:
        super().__init__(job)
        self.event = event
        self.events = events or (event,)


class JobFinished(JobMessage, bubble=False):
    """``job`` returned ``result``."""

    def __init__(self, job: Job, result: Any) -> None:
        super().__init__(job)
        self.result = result


class JobFailed(JobMessage, bubble=False):
    """``job`` raised (or was cancelled); an op that failed left the session as before it.

    ``view`` is the session as it is now when a sequence changed it before failing (else None).
    """

    def __init__(self, job: Job, error: BaseException, cancelled: bool, trace: str = "", view: Any = None) -> None:
        super().__init__(job)
        self.error = error
        self.cancelled = cancelled
        self.trace = trace  # the traceback of an unexpected (non-RccError) failure
        self.view = view

    @property
    def message(self) -> str:
        if self.cancelled:
            return f"{self.job.title} cancelled; the session is as it was before"
        return f"{self.job.title} failed: {describe_error(self.error)}" if self.trace else describe_error(self.error)


def describe_error(error: Any) -> str:
    """One line for a log or notification."""
    from rcc.errors import RccError

    return str(error) if isinstance(error, RccError) else f"{type(error).__name__}: {error}"


def _is_point(event: Any) -> bool:
    return bool(getattr(event, "is_point", False))


# -- the runner -----------------------------------------------------------------------------------

class JobRunner:
    """Starts jobs in thread workers of ``app`` and delivers their messages to the subscribers."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._queue: list[tuple[Job, Any]] = []  # (job, message or event) that must all arrive, in order
        self._latest: dict[Job, Any] = {}  # the newest coalescable event of each job, not yet delivered
        self._jobs: list[Job] = []  # started, not yet delivered to the end
        self._subscribers: weakref.WeakSet[DOMNode] = weakref.WeakSet()
        self._timer: Timer | None = None
        self._closed = False
        self._after_close: Callable[[], None] | None = None

    # -- subscribers --
    def subscribe(self, node: DOMNode) -> None:
        """``node`` receives every job message from now on (until it is removed)."""
        self._subscribers.add(node)

    # -- state seen from the main thread --
    @property
    def session_job(self) -> Job | None:
        """The running job that holds the session, if any."""
        return next((job for job in self._jobs if job.lane == SESSION and job.running), None)

    def running(self, lane: str | None = None) -> list[Job]:
        return [job for job in self._jobs if job.running and (lane is None or job.lane == lane)]

    @property
    def busy(self) -> bool:
        """A job runs, or messages of one are not delivered yet."""
        return bool(self._jobs)

    def pending(self, job: Job) -> bool:
        """``job`` runs, or its last messages are not delivered yet."""
        return job in self._jobs

    # -- starting and stopping (main thread) --
    def start(self, job: Job) -> Job:
        """Run ``job``; a second job on the session lane while one runs is a programming error (check first)."""
        if self._closed:
            raise RuntimeError("the job runner is closed")
        if job.lane == SESSION and self.session_job is not None:
            raise RuntimeError(f"{self.session_job.title} is still running")
        if self._timer is None:
            self._timer = self.app.set_interval(PROGRESS_INTERVAL, self._flush, name="job-progress", pause=True)
        job.started = time.perf_counter()
        with self._lock:
            self._jobs.append(job)
            self._queue.append((job, JobStarted(job)))
        self._timer.resume()
        context = JobContext(job, self._reporter(job))

        def work() -> None:
            try:
                message: Message = JobFinished(job, job.work(context))
            except BaseException as error:  # noqa: BLE001  (the job says why; the app never crashes)
                from rcc.errors import Cancelled, RccError

                trace = "" if isinstance(error, (RccError, Cancelled)) else traceback.format_exc()
                message = JobFailed(job, error, isinstance(error, Cancelled), trace, context.view)
            with self._lock:
                self._latest.pop(job, None)  # progress of finished work is stale
                job.ended = time.perf_counter()  # ended before its last message can arrive
                closed = self._closed
                if not closed:
                    self._queue.append((job, message))
            if closed:
                self._discard(job, message)
                self._forget(job)

        self.app.run_worker(work, name=job.title, group=f"jobs-{job.lane}", thread=True, exit_on_error=False)
        return job

    def cancel(self, job: Job | None = None) -> bool:
        """Ask ``job`` (default: the session's job) to stop at its next check; False when nothing runs."""
        job = job or self.session_job
        if job is None or not job.running:
            return False
        job._cancel.set()
        return True

    def cancel_all(self) -> list[Job]:
        """Ask every running job to stop; the jobs asked."""
        jobs = self.running()
        for job in jobs:
            job._cancel.set()
        return jobs

    async def wait(self, jobs: Job | Iterable[Job] | None = None, poll: float = 0.02) -> None:
        """Until ``jobs`` (default: all) have ended and their messages were delivered."""
        wanted = [jobs] if isinstance(jobs, Job) else None if jobs is None else list(jobs)
        while any(job in self._jobs for job in (self._jobs if wanted is None else wanted)):
            if not any(job.running for job in self._jobs):
                self._flush()
            await asyncio.sleep(poll)

    def close(self, then: Callable[[], None] | None = None) -> None:
        """The app is going: cancel everything, deliver nothing more, release what finishing jobs return;
        ``then()`` runs once no job runs any more (at once when none does)."""
        with self._lock:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            self._latest.clear()
        self.cancel_all()
        for job, message in dropped:
            self._discard(job, message)
        for job in [job for job in self._jobs if not job.running]:
            self._jobs.remove(job)
        self._after_close = then
        if self._timer is not None:
            self._timer.pause()
        self._maybe_after_close()

    # -- worker thread side --
    def _reporter(self, job: Job) -> Callable[[Any], None]:
        def report(event: Any) -> None:
            with self._lock:
                if self._closed:
                    return
                if _is_point(event):  # a chart point: keep it, after the progress that came before it
                    latest = self._latest.pop(job, None)
                    if latest is not None:
                        self._queue.append((job, latest))
                    self._queue.append((job, event))
                else:
                    self._latest[job] = event

        return report

    def _discard(self, job: Job, message: Any) -> None:
        if isinstance(message, JobFinished) and job.discard is not None:
            job.discard(message.result)

    def _forget(self, job: Job) -> None:
        with self._lock:
            if job in self._jobs:
                self._jobs.remove(job)
        self._maybe_after_close()

    def _maybe_after_close(self) -> None:
        if self._closed and self._after_close is not None and not any(job.running for job in self._jobs):
            then, self._after_close = self._after_close, None
            then()

    # -- main thread side --
    def _flush(self) -> None:
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
            for job, event in self._latest.items():
                items.append((job, event))
            self._latest.clear()
        messages = _as_messages(items)
        for message in messages:
            for node in list(self._subscribers):
                if node.is_attached:
                    node.post_message(_copy(message))
        ended = {message.job for message in messages if isinstance(message, (JobFinished, JobFailed))}
        with self._lock:
            for job in ended:
                if job in self._jobs:
                    self._jobs.remove(job)
            idle = not self._jobs and not self._queue and not self._latest
        if idle and self._timer is not None:
            self._timer.pause()


def _as_messages(items: list[tuple[Job, Any]]) -> list[JobMessage]:
    """Events become ``JobProgressed``; each run of consecutive loss-only events of a job becomes one."""
    out: list[JobMessage] = []
    run: list[Any] = []
    run_job: Job | None = None

    def close_run() -> None:
        if run:
            out.append(JobProgressed(run_job, run[-1], tuple(run)))
            run.clear()

    for job, item in items:
        if isinstance(item, JobMessage):
            close_run()
            out.append(item)
            continue
        losses = getattr(item, "loss", None) is not None and getattr(item, "metric", None) is None
        if losses and (run_job is job or not run):
            run_job = job
            run.append(item)
            continue
        close_run()
        if losses:
            run_job = job
            run.append(item)
        else:
            out.append(JobProgressed(job, item))
    close_run()
    return out


def _copy(message: JobMessage) -> JobMessage:
    """A fresh message with the same content (a Message instance is delivered once)."""
    if isinstance(message, JobProgressed):
        return JobProgressed(message.job, message.event, message.events)
    if isinstance(message, JobFinished):
        return JobFinished(message.job, message.result)
    if isinstance(message, JobFailed):
        return JobFailed(message.job, message.error, message.cancelled, message.trace, message.view)
    return type(message)(message.job)


LAYER_PHASES = ("dare", "nullu", "alphaedit", "sensitivity")  # phases counted in layers (detail: the layer)


def describe_event(event: OpProgress, split: str = "") -> str:
    """``dare · layer 3/12 · visual.transformer.resblocks.0.mlp.c_fc``, ``evaluate · 128/360 images``,
    ``dare step 1 attempt 2: val 96.11% kept`` (a metric on ``split``), …"""
    if event.metric is not None:
        verdict = "" if event.accepted is None else (" kept" if event.accepted else " backed off")
        measured = f"{split} {event.metric:.2%}".strip()
        return f"{event.phase} {event.detail}: {measured}{verdict}".replace(" : ", ": ")
    if event.loss is not None:
        return f"{event.phase} · step {event.done}/{event.total} · loss {event.loss:.4f}"
    if event.total:
        if event.phase in LAYER_PHASES:
            layer = f" · {event.detail}" if event.detail else ""
            return f"{event.phase} · layer {event.done}/{event.total}{layer}"
        return f"{event.phase} · {event.done}/{event.total} {event.detail}".rstrip()
    if event.phase == "loading":
        return f"loading {event.detail}…"
    return f"{event.phase} {event.detail}".strip() + "…"
