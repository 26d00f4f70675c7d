"""How a panel that starts ops reports back: an inline error line and a status line, from the job runner.

The run panel and the train panel both refuse a bad value on a line of their own, and follow
the session's jobs themselves: they subscribe to the runner (``app.jobs``) and react to its
messages (buttons disabled while a job holds the session, the job's phase on their status line,
its error inline when they asked for it). ``OpFeedback`` is that behaviour, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text

from rcc_tui.workers import SESSION, JobFailed, JobFinished, JobProgressed, JobStarted, describe_event

if TYPE_CHECKING:
    from textual.message import Message
    from textual.widget import Widget
    from textual.widgets import Static


def submit_op(panel: Widget, build: Callable[[], Any], request: Callable[[Any], Message]) -> bool:
    """Build the op from ``panel``'s fields and post ``request(op)``; False (reason shown inline) if refused.

    ``panel`` has ``show_error(message)``; ``build`` raises ``RccError`` naming a bad value.
    """
    from rcc.errors import RccError

    try:
        op = build()
    except RccError as error:
        panel.show_error(str(error))  # type: ignore[attr-defined]
        panel.app.bell()
        return False
    panel.show_error("")  # type: ignore[attr-defined]
    panel.post_message(request(op).set_sender(panel))
    return True


def show_inline_error(line: Static, message: str) -> None:
    """``✗ message`` on ``line`` in bold with the ``error`` class; an empty message clears it."""
    line.update(Text(f"✗ {message}", style="bold") if message else "")
    line.set_class(bool(message), "error")


def finished_text(message: JobFinished) -> str:
    """``done: <title> → node 5`` for a finished job."""
    where = getattr(message.result, "where", None)
    return f"done: {message.job.title}{where() if callable(where) else ''}"


class OpFeedback:
    """``show_error`` / ``set_running`` / ``set_status``, driven by the runner's messages, for a panel widget.

    The panel names its widgets: an error line, a status line, the cancel button and the
    buttons that start work (disabled while a job holds the session).
    """

    ERROR_ID: ClassVar[str]
    STATUS_ID: ClassVar[str]
    CANCEL_ID: ClassVar[str]
    START_IDS: ClassVar[tuple[str, ...]]
    error: str

    def on_mount(self) -> None:
        jobs = getattr(self.app, "jobs", None)  # type: ignore[attr-defined]
        if jobs is not None:
            jobs.subscribe(self)

    def show_error(self, message: str) -> None:
        from textual.widgets import Static

        self.error = message
        show_inline_error(self.query_one(f"#{self.ERROR_ID}", Static), message)  # type: ignore[attr-defined]

    def set_running(self, title: str | None) -> None:
        """``title`` of the work that started, or None when it ended."""
        from textual.widgets import Button

        running = title is not None
        self.query_one(f"#{self.CANCEL_ID}", Button).disabled = not running  # type: ignore[attr-defined]
        for start in self.START_IDS:
            self.query_one(f"#{start}", Button).disabled = running  # type: ignore[attr-defined]
        if running:
            self.set_status(f"{title}…")

    def set_status(self, text: str) -> None:
        from textual.widgets import Static

        self.query_one(f"#{self.STATUS_ID}", Static).update(text)  # type: ignore[attr-defined]

    # -- the runner's messages --
    def on_job_started(self, message: JobStarted) -> None:
        if message.job.lane == SESSION:
            self.set_running(message.job.title)

    def on_job_progressed(self, message: JobProgressed) -> None:
        if message.job.lane == SESSION and hasattr(message.event, "phase"):
            self.set_status(describe_event(message.event, message.job.eval_split))

    def on_job_finished(self, message: JobFinished) -> None:
        if message.job.lane != SESSION:
            return
        from rcc_tui.session_jobs import SessionOpened

        self.set_running(None)
        self.set_status("ready" if isinstance(message.result, SessionOpened) else finished_text(message))

    def on_job_failed(self, message: JobFailed) -> None:
        if message.job.lane != SESSION:
            return
        self.set_running(None)
        self.set_status(("cancelled: " if message.cancelled else "failed: ") + message.job.title)
        if message.job.origin is self and not message.cancelled:
            self.show_error(message.message.removeprefix(f"op {message.job.op.kind!r}: ")
                            if message.job.op is not None else message.message)
