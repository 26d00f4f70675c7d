"""How a panel that starts ops reports back: an inline error line and a progress bar.

The run panel and the train panel both refuse a bad value on a line of their own and follow
the running op on a bar; these two functions are that behaviour, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
