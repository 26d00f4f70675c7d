"""The label dialog: name a node (at most 80 characters) and attach a note.

Enter in either field (or ctrl+o) saves: ``dismiss((label, note))``; escape cancels:
``dismiss(None)``. An empty label removes the node's label. A label that is too long is
refused inline, and nothing is saved until it fits.
"""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

LABEL_LIMIT = 80  # the Label op's limit (rcc.session.ops.Label)
NOTE_LIMIT = 4096


class LabelScreen(ModalScreen[tuple[str, str] | None]):
    """Edit node ``node``'s label and note; returns (label, note), or None when cancelled."""

    DEFAULT_CSS = """
    LabelScreen {
        align: center middle;
    }
    LabelScreen #label-dialog {
        width: 72;
        max-width: 95%;
        height: auto;
        border: thick $primary;
        background: $surface;
        padding: 1 2;
    }
    LabelScreen #label-title {
        text-style: bold;
        margin-bottom: 1;
    }
    LabelScreen #label-error {
        color: $error;
        height: auto;
    }
    LabelScreen #label-error.-empty {
        display: none;
    }
    LabelScreen Input {
        margin-bottom: 1;
    }
    LabelScreen #label-buttons {
        height: auto;
        align-horizontal: right;
    }
    LabelScreen #label-buttons Button {
        margin-left: 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="label.cancel"),
        Binding("ctrl+o", "save", "Save", id="label.save"),  # not ctrl+s: terminals take it for XOFF
    ]

    def __init__(self, node: int, label: str = "", note: str = "", *, name: str | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.node = node
        self._initial = (label, note)

    def compose(self) -> ComposeResult:
        label, note = self._initial
        with Vertical(id="label-dialog"):
            yield Static(f"Label node #{self.node}", id="label-title")
            yield Label(f"Label (at most {LABEL_LIMIT} characters; empty removes it)")
            yield Input(label, placeholder="e.g. dare-50", id="label-input", select_on_focus=False)
            yield Static("", id="label-error", classes="-empty")
            yield Label("Note")
            yield Input(note, placeholder="what this node is, why it matters", id="note-input",
                        select_on_focus=False)
            with Horizontal(id="label-buttons"):
                yield Button("Cancel", id="label-cancel")
                yield Button("Save", variant="primary", id="label-save")

    def on_mount(self) -> None:
        self.query_one("#label-input", Input).focus()

    # -- validation --------------------------------------------------------------------
    def problem(self) -> str | None:
        """What is wrong with the fields as they are, or None."""
        label = self.query_one("#label-input", Input).value
        note = self.query_one("#note-input", Input).value
        if len(label) > LABEL_LIMIT:
            return f"label is {len(label)} characters; allowed: at most {LABEL_LIMIT}"
        if len(note) > NOTE_LIMIT:
            return f"note is {len(note)} characters; allowed: at most {NOTE_LIMIT}"
        return None

    def _show_problem(self, problem: str | None) -> None:
        error = self.query_one("#label-error", Static)
        error.update(problem or "")
        error.set_class(not problem, "-empty")

    def on_input_changed(self, event: Input.Changed) -> None:
        self._show_problem(self.problem())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "label-save":
            self.action_save()
        else:
            self.action_cancel()

    # -- actions -----------------------------------------------------------------------
    def action_save(self) -> None:
        problem = self.problem()
        if problem:
            self._show_problem(problem)
            self.query_one("#label-input", Input).focus()
            return
        self.dismiss((self.query_one("#label-input", Input).value, self.query_one("#note-input", Input).value))

    def action_cancel(self) -> None:
        self.dismiss(None)
