"""How a panel that starts ops reports back: an inline error line and a progress bar.

The run panel and the train panel both refuse a bad value on a line of their own and follow
the running op on a bar; these two functions are that behaviour, once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text

if TYPE_CHECKING:
    from textual.widgets import ProgressBar, Static

    from rcc.session.progress import OpProgress


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
