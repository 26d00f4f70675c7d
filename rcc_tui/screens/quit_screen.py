"""Asks before quitting while work runs (quitting cancels it: the session stays as before the op)."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class QuitScreen(ModalScreen[bool]):
    """Yes / no; dismisses with True to quit."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Quit", id="rcc.quit.yes"),
        Binding("n,escape", "answer(False)", "Stay", id="rcc.quit.no"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="quit-dialog", classes="dialog"):
            yield Static(self.question, id="quit-question", markup=False)
            with Horizontal(classes="button-row"):
                yield Button("Quit (y)", id="yes", variant="error", compact=True)
                yield Button("Stay (n)", id="no", variant="primary", compact=True)

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, quit_app: bool) -> None:
        self.dismiss(quit_app)
