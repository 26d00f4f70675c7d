"""The train panel: recovery training (distil a teacher node into the current node), with progress.

The panel builds a validated ``Train`` op from its fields and asks for it to run; it never runs
anything itself. A value the op refuses (steps 0, lr "abc", an unknown teacher node) is shown
inline as the op's own one-line message, and nothing is asked for. While work runs it shows a
status line (its phase and step; the bar is on the screen's status bar) and a Cancel button.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label, Select, Static

from rcc_tui.widgets.op_feedback import OpFeedback, submit_op

if TYPE_CHECKING:
    from rcc.session.ops import Train

# Subsets of rcc.session.ops.PRECISION_NAMES / TRAIN_SCHEDULES (not imported: the first frame
# imports nothing of the engine). fp16 and constant stay available to recipes and the CLI.
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("cosine", "linear")


def parse_field(text: str, kind: type) -> Any:
    """``text`` as ``kind``; None when blank; the text itself when it does not parse.

    An unparsable value is passed on as text so that the op refuses it with its own message,
    naming the value and what is allowed.
    """
    clean = text.strip()
    if not clean:
        return None
    try:
        return kind(clean)
    except ValueError:
        return clean


class TrainPanel(OpFeedback, Vertical):
    """Recovery training of the current node; shows the progress of whatever runs."""

    ERROR_ID = "train-error"
    STATUS_ID = "train-status"
    CANCEL_ID = "train-cancel"
    START_IDS = ("train",)

    DEFAULT_CSS: ClassVar[str] = """
    TrainPanel {
        height: auto;
        padding: 0 1;
        border: round $primary 50%;
    }
    TrainPanel:focus-within {
        border: round $primary;
    }
    #train-title {
        text-style: bold;
        height: 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    .train-label {
        width: 11;
        height: 1;
        color: $text-muted;
    }
    .train-label.second {
        width: 10;
    }
    #train-error {
        height: auto;
        display: none;
    }
    #train-error.error {
        display: block;
        color: $text-error;
    }
    #train-status {
        height: 1;
        color: $text-muted;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    class TrainRequested(Message):
        def __init__(self, op: Train, title: str) -> None:
            super().__init__()
            self.op = op
            self.title = title  # "train node 2 from the root, 100 steps"

    class CancelRequested(Message):
        pass

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.error = ""
        self.nodes: tuple[int, ...] = ()  # the session's node ids: a teacher must be one of them
        self.head: int | None = None

    def compose(self) -> ComposeResult:
        yield Static("Train: distil the teacher into the current node", id="train-title", markup=False)
        with Horizontal(classes="field-row"):
            yield Label("steps", classes="train-label")
            yield Input("100", id="train-steps", compact=True, classes="field")
            yield Label("lr", classes="train-label second")
            yield Input("5e-05", id="train-lr", compact=True, classes="field")
        with Horizontal(classes="field-row"):
            yield Label("batch", classes="train-label")
            yield Input("32", id="train-batch", compact=True, classes="field")
            yield Label("teacher", classes="train-label second")
            yield Input("", placeholder="root", id="train-teacher", compact=True, classes="field",
                        tooltip="the node to learn from; blank: the root (the dense model)")
        with Horizontal(classes="field-row"):
            yield Label("eval every", classes="train-label")
            yield Input("25", placeholder="never", id="train-eval-every", compact=True, classes="field",
                        tooltip="evaluate every N steps (accuracy on the chart); blank: only at the end")
            yield Label("precision", classes="train-label second")
            yield Select([(p, p) for p in PRECISIONS], value="fp32", allow_blank=False, id="train-precision",
                         compact=True, classes="field")
        with Horizontal(classes="field-row"):
            yield Label("schedule", classes="train-label")
            yield Select([(s, s) for s in SCHEDULES], value="cosine", allow_blank=False, id="train-schedule",
                         compact=True, classes="field")
            yield Label("attention", classes="train-label second")
            yield Input("0", placeholder="0", id="train-attention", compact=True, classes="field",
                        tooltip="weight of attention transfer (vision blocks' maps); 0 or blank: off")
        with Horizontal(classes="button-row"):
            yield Button("Train", id="train", variant="primary", compact=True, tooltip="start training (T)")
            yield Button("Cancel", id="train-cancel", variant="error", compact=True, disabled=True,
                         tooltip="stop between steps; the session stays as before (x)")
        yield Static("", id="train-error", markup=False)
        yield Static("idle", id="train-status", markup=False)

    # -- building the op -------------------------------------------------------------------
    def set_nodes(self, nodes: tuple[int, ...], head: int | None) -> None:
        self.nodes, self.head = tuple(nodes), head
        if head is not None:
            self.query_one("#train-title", Static).update(f"Train node {head}: distil the teacher into it")

    def _value(self, selector: str, kind: type) -> Any:
        return parse_field(self.query_one(selector, Input).value, kind)

    def train_op(self) -> Train:
        """The op the fields describe; raises ``RccError`` naming a bad value and what is allowed."""
        from rcc.session.ops import OpError, Train

        op = Train(steps=self._value("#train-steps", int), lr=self._value("#train-lr", float),
                   batch_size=self._value("#train-batch", int), teacher=self._value("#train-teacher", int),
                   eval_every=self._value("#train-eval-every", int),
                   attention_weight=self._value("#train-attention", float) or 0.0,  # blank: off
                   precision=self.query_one("#train-precision", Select).value,
                   schedule=self.query_one("#train-schedule", Select).value)
        if op.teacher is not None and self.nodes and op.teacher not in self.nodes:
            raise OpError(f"op 'train': teacher node {op.teacher} does not exist; allowed: blank (the root) or "
                          f"one of nodes {', '.join(map(str, self.nodes))}")
        return op

    def title(self, op: Train) -> str:
        teacher = f"node {op.teacher}" if op.teacher is not None else "the root"
        return f"train node {self.head} from {teacher}, {op.steps} steps"

    def request(self) -> bool:
        """Build the op and ask for it to run; False (with the reason shown inline) if refused."""
        return submit_op(self, self.train_op, lambda op: self.TrainRequested(op, self.title(op)))

    @on(Button.Pressed, "#train")
    def _train_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.request()

    @on(Button.Pressed, "#train-cancel")
    def _cancel_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.CancelRequested().set_sender(self))

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.request()
