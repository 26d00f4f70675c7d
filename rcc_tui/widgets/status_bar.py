"""The status bar: one line above the footer, visible at every terminal size.

While a job holds the session it shows the phase's bar and percentage first (so they survive a
narrow terminal), then the job, its phase, the ETA once one can be estimated, and how to
cancel. It follows the job runner itself (it subscribes to ``app.jobs``); when nothing runs
the screen puts the session's state here (``show``). On a cancel or failure the bar is cleared,
never left full.
"""

from __future__ import annotations

import time

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from rcc_tui.theme_colours import theme_style
from rcc_tui.workers import SESSION, JobFailed, JobFinished, JobProgressed, JobStarted, describe_event

BAR_WIDTH = 10
MIN_ETA_SECONDS = 1.0  # an ETA needs a second of measured progress in the phase


def bar_cells(fraction: float | None, width: int = BAR_WIDTH) -> tuple[str, str]:
    """(filled, empty) cells of a bar at ``fraction`` (None: unknown, all empty)."""
    filled = 0 if fraction is None else round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled, "░" * (width - filled)


def eta_text(seconds: float) -> str:
    """``ETA 8 s``, ``ETA 2 min 05 s``, ``ETA 1 h 03 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"ETA {seconds} s"
    if seconds < 3600:
        return f"ETA {seconds // 60} min {seconds % 60:02d} s"
    return f"ETA {seconds // 3600} h {seconds % 3600 // 60:02d} min"


class PhaseClock:
    """The rate of the current phase, for an ETA: restarts when the phase, its total or its count goes back."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.began = 0.0
        self.first_done = 0
        self.last_done = 0

    def eta(self, phase: str, done: int, total: int, now: float | None = None) -> float | None:
        now = time.perf_counter() if now is None else now
        key = (phase, total)
        if key != self.key or done < self.last_done:
            self.key, self.began, self.first_done = key, now, done
        self.last_done = done
        elapsed = now - self.began
        if done <= self.first_done or elapsed < MIN_ETA_SECONDS:
            return None
        rate = (done - self.first_done) / elapsed
        return (total - done) / rate


class StatusBar(Static):
    """What runs (bar, percentage, phase, ETA) or, when idle, what the screen says about the session."""

    DEFAULT_CSS = """
    StatusBar {
        height: 1;
        padding: 0 1;
        background: $panel;
        color: $text;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def __init__(self, text: str = "", *, id: str | None = None) -> None:
        super().__init__(text, id=id, markup=False)
        self.text = text  # what the line says now (plain)
        self.fraction: float | None = None  # the running phase's progress; None when idle or uncounted
        self.job = None
        self._clock = PhaseClock()
        self._showing_job = False  # the line shows a job's bar (the screen has not written over it since)
        self._idle = Text(text)  # what the screen last said about the session

    def on_mount(self) -> None:
        self.app.jobs.subscribe(self)  # type: ignore[attr-defined]

    @property
    def _deterministic(self) -> bool:
        return bool(getattr(self.app, "deterministic", False))

    def show(self, text: str | Text) -> None:
        """The idle line (or any message), without a bar; it comes back when the running job ends."""
        self.fraction = None
        self._showing_job = False
        self._idle = Text(text) if isinstance(text, str) else text
        self._set(self._idle)

    def _set(self, text: Text) -> None:
        self.text = text.plain
        self.update(text)

    def _draw_running(self, job, detail: str, fraction: float | None, eta: float | None) -> None:
        self.fraction = fraction
        self._showing_job = True
        filled, empty = bar_cells(fraction)
        text = Text(no_wrap=True)
        text.append(filled, theme_style(self.app, "primary"))
        text.append(empty, theme_style(self.app, "foreground") + Style(dim=True))
        text.append(f" {'--' if fraction is None else f'{fraction:4.0%}':>4} ", "bold")
        text.append(job.title)
        if detail:
            text.append(f" · {detail}")
        if eta is not None and not self._deterministic:
            text.append(f" · {eta_text(eta)}")
        text.append(" · " + ("cancelling…" if job.cancelling else "x cancels"), "dim")
        self._set(text)

    # -- the runner's messages --
    def on_job_started(self, message: JobStarted) -> None:
        if message.job.lane == SESSION:
            self.job = message.job
            self._clock = PhaseClock()
            self._draw_running(message.job, "starting…", None, None)

    def on_job_progressed(self, message: JobProgressed) -> None:
        event = message.event
        if message.job.lane != SESSION or not hasattr(event, "phase"):
            return
        fraction, eta = None, None
        if event.total and event.metric is None:
            fraction = event.fraction
            eta = self._clock.eta(event.phase, event.done, event.total)
        elif event.metric is not None:
            fraction = self.fraction  # an evaluated attempt: the bar stays where its phase left it
        self._draw_running(message.job, describe_event(event, message.job.eval_split), fraction, eta)

    def on_job_finished(self, message: JobFinished) -> None:
        if message.job is self.job:
            self.job, self.fraction = None, None
            if self._showing_job:  # back to what the screen says (it may have said it before this arrived)
                self._showing_job = False
                self._set(self._idle)

    def on_job_failed(self, message: JobFailed) -> None:
        if message.job is not self.job:
            return
        self.job, self.fraction = None, None  # cleared, never left showing progress that did not happen
        if self._showing_job:  # the screen has not said how it ended yet
            self.show(("cancelled: " if message.cancelled else "failed: ") + message.job.title)
