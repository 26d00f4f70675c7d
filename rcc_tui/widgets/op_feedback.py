"""How a panel that starts ops reports back: an inline error line, a progress bar, a status text.

The run panel and the train panel both refuse a bad value on a line of their own and follow
the running op on a bar and a line of text; these functions, and the ``OpFeedback`` mixin that
wires them to a panel's widgets, are that behaviour, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text

if TYPE_CHECKING:
    from textual.message import Message
    from textual.widget import Widget
    from textual.widgets import ProgressBar, Static

    from rcc.session.progress import OpProgress


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


def advance(bar: ProgressBar, event: OpProgress) -> None:
    """Move ``bar`` to ``event``: counted work restarts the bar when a new phase starts its own count."""
    if event.total:
        if bar.total != event.total or event.done < bar.progress:
            bar.update(total=event.total, progress=0)  # a new stage: its own count (and ETA)
        bar.update(progress=event.done)
    elif event.metric is None:
        bar.update(total=None)  # uncounted work (an evaluation): the indeterminate bar


def reset_bar(bar: ProgressBar, running: bool) -> None:
    """An op started (an indeterminate bar until its first count) or ended (a full bar)."""
    if running:
        bar.update(total=None, progress=0)
    else:
        bar.update(total=1, progress=1)


def describe_progress(event: OpProgress) -> str:
    """``dare · layer 3/12 · visual.transformer.resblocks.0.mlp.c_fc`` and the like."""
    if event.metric is not None:
        verdict = "" if event.accepted is None else (" kept" if event.accepted else " backed off")
        params = f" · {event.params:,} params" if event.params is not None else ""
        return f"{event.phase} {event.detail}: {event.metric:.2%}{verdict}{params}"
    if event.loss is not None:
        return f"{event.phase} · step {event.done}/{event.total} · loss {event.loss:.4f}"
    if event.total:
        return f"{event.phase} · layer {event.done}/{event.total} · {event.detail}"
    if event.phase == "evaluate":
        return f"evaluating on {event.detail}…" if event.detail else "evaluating…"
    if event.phase == "saving":
        return "saving the new node…"
    if event.phase == "loading":
        return f"loading {event.detail}…"
    return f"{event.phase} {event.detail}".strip()


class OpFeedback:
    """``show_error`` / ``set_running`` / ``set_status`` / ``show_progress`` for a panel widget.

    The panel names its widgets: an error line, a progress bar, a status line, the cancel
    button and the buttons that start work (disabled while something runs).
    """

    ERROR_ID: ClassVar[str]
    BAR_ID: ClassVar[str]
    STATUS_ID: ClassVar[str]
    CANCEL_ID: ClassVar[str]
    START_IDS: ClassVar[tuple[str, ...]]
    error: str

    def show_error(self, message: str) -> None:
        from textual.widgets import Static

        self.error = message
        show_inline_error(self.query_one(f"#{self.ERROR_ID}", Static), message)  # type: ignore[attr-defined]

    def set_running(self, title: str | None) -> None:
        """``title`` of the work that started, or None when it ended."""
        from textual.widgets import Button, ProgressBar

        running = title is not None
        self.query_one(f"#{self.CANCEL_ID}", Button).disabled = not running  # type: ignore[attr-defined]
        for start in self.START_IDS:
            self.query_one(f"#{start}", Button).disabled = running  # type: ignore[attr-defined]
        reset_bar(self.query_one(f"#{self.BAR_ID}", ProgressBar), running)  # type: ignore[attr-defined]
        if running:
            self.set_status(f"{title}…")

    def set_status(self, text: str) -> None:
        from textual.widgets import Static

        self.query_one(f"#{self.STATUS_ID}", Static).update(text)  # type: ignore[attr-defined]

    def show_progress(self, event: OpProgress) -> None:
        from textual.widgets import ProgressBar

        advance(self.query_one(f"#{self.BAR_ID}", ProgressBar), event)  # type: ignore[attr-defined]
        self.set_status(describe_progress(event))
