"""The run panel: one stage or the cascade, on the targets or the whole model, with progress.

The panel builds the op (``RunStage`` / ``RunCascade``) and its title and asks for it to run; it
never runs anything itself. While a job holds the session it shows its phase on the status line
(the bar, percentage and ETA are on the screen's status bar, visible at every size) and a
Cancel button: the engine stops at the next layer or batch and the session stays as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label, Select, Static

from rcc.schema.names import STAGE_NAMES
from rcc_tui.widgets.marked_checkbox import MarkedCheckbox
from rcc_tui.widgets.op_feedback import OpFeedback, submit_op

if TYPE_CHECKING:
    from rcc.session.ops import Op

STAGES = STAGE_NAMES  # rcc.schema.names: torch-free, one list for the engine and the app
SCHEDULES = ("linear", "cosine", "exponential", "adaptive")  # rcc.session.ops.SCHEDULES


def _number(text: str, kind: type) -> Any:
    clean = text.strip()
    try:
        return kind(clean)
    except ValueError:
        return clean  # the op refuses it, naming the value and what is allowed


class RunPanel(OpFeedback, Vertical):
    """Run a stage or the cascade; shows the progress of whatever runs."""

    ERROR_ID = "run-error"
    STATUS_ID = "run-status"
    CANCEL_ID = "cancel"
    START_IDS = ("run-stage", "run-cascade")

    class RunRequested(Message):
        def __init__(self, op: Op, title: str) -> None:
            super().__init__()
            self.op = op
            self.title = title  # "dare ×1 on 2 layers", "cascade ≥0.95 on the whole model"

    class CancelRequested(Message):
        pass

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.targets: tuple[str, ...] = ()
        self.targets_description = "no layer"
        self.error = ""

    def compose(self) -> ComposeResult:
        yield Static("Run", id="run-title", markup=False)
        with Horizontal(classes="field-row"):
            yield Label("stage", classes="field-label")
            yield Select([(s, s) for s in STAGES], value="dare", allow_blank=False, id="stage", compact=True,
                         classes="field")
            yield Label("fraction", classes="field-label second")
            yield Input("1.0", id="fraction", compact=True, classes="field")
        with Horizontal(classes="field-row"):
            yield Label("threshold", classes="field-label")
            yield Input("0.95", id="threshold", compact=True, classes="field")
            yield Label("schedule", classes="field-label second")
            yield Select([(s, s) for s in SCHEDULES], value="linear", allow_blank=False, id="schedule",
                         compact=True, classes="field")
        with Horizontal(classes="field-row"):
            yield Label("steps", classes="field-label")
            yield Input("1", id="steps", compact=True, classes="field")
            yield Label("attempts", classes="field-label second")
            yield Input("3", id="attempts", compact=True, classes="field")
        yield MarkedCheckbox("only the targets (else the whole model)", value=True, id="scope", compact=True)
        with Horizontal(classes="button-row"):
            yield Button("Stage", id="run-stage", compact=True, tooltip="run one stage (r)")
            yield Button("Cascade", id="run-cascade", variant="primary", compact=True, tooltip="run the cascade (c)")
            yield Button("Cancel", id="cancel", variant="error", compact=True, disabled=True,
                         tooltip="stop between layers; the session stays as before (x)")
        yield Static("", id="run-error", markup=False)
        yield Static("idle", id="run-status", markup=False)

    # -- building ops ----------------------------------------------------------------------
    def set_targets(self, names: tuple[str, ...], description: str) -> None:
        self.targets, self.targets_description = tuple(names), description
        self._update_scope()

    def _update_scope(self) -> None:
        scope = self.query_one("#scope", MarkedCheckbox)
        scope.label = (f"only {self.targets_description} (else the whole model)" if self.targets
                       else "whole model (no targets)")

    def _layers(self) -> tuple[str, ...]:
        return self.targets if self.query_one("#scope", MarkedCheckbox).value else ()

    def stage_op(self) -> Op:
        from rcc.session.ops import RunStage

        return RunStage(stage=self.query_one("#stage", Select).value,
                        fraction=_number(self.query_one("#fraction", Input).value, float), layers=self._layers())

    def cascade_op(self) -> Op:
        from rcc.session.ops import RunCascade

        return RunCascade(threshold=_number(self.query_one("#threshold", Input).value, float),
                          schedule=self.query_one("#schedule", Select).value,
                          steps=_number(self.query_one("#steps", Input).value, int),
                          max_attempts=_number(self.query_one("#attempts", Input).value, int),
                          layers=self._layers())

    def title(self, op: Op) -> str:
        layers = getattr(op, "layers", ())
        scope = f"{len(layers)} layer{'s' if len(layers) != 1 else ''}" if layers else "the whole model"
        stage = getattr(op, "stage", None)
        return f"{stage} ×{op.fraction:g} on {scope}" if stage else f"cascade ≥{op.threshold:g} on {scope}"

    def request(self, kind: str) -> bool:
        """Build the stage or cascade op from the fields and ask for it to run; False if refused."""
        return submit_op(self, self.stage_op if kind == "stage" else self.cascade_op,
                         lambda op: self.RunRequested(op, self.title(op)))

    @on(Button.Pressed, "#run-stage")
    def _stage_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.request("stage")

    @on(Button.Pressed, "#run-cascade")
    def _cascade_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.request("cascade")

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.CancelRequested().set_sender(self))

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.request("stage" if event.input.id == "fraction" else "cascade")
