"""The history graph: the session DAG as lanes of box-drawing glyphs, newest node on top.

One row per node (lazygit's commit graph is the model): lane glyphs, node id, label, op,
size and eval metric; the head node is drawn ``◉`` and bold. Keys (binding ids in brackets,
rebindable through the keymap): enter / c check out [history.checkout], l label
[history.label], m mark for comparison and m on a second node compare [history.mark],
escape clear the mark [history.clear_mark], up / k and down / j move [history.cursor_up,
history.cursor_down]. The view changes nothing itself: it posts messages that the app turns
into Session ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.actions import SkipAction
from textual.binding import Binding, BindingType
from textual.color import Color, ColorParseError
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

from rcc.session.graph import NodeRecord
from rcc.session.lanes import graph_rows

LANE_COLOURS = ("primary", "success", "accent", "secondary", "warning")  # theme variables, by lane
MARK = "◆"
LABEL_WIDTH = 24


def human_count(value: float | None) -> str:
    """A count in three significant figures with a unit: 19.9M, 151M, 2.05k."""
    if value is None:
        return "—"
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            scaled = value / scale
            digits = 2 if abs(scaled) < 10 else 1 if abs(scaled) < 100 else 0
            return f"{scaled:.{digits}f}{unit}"
    return f"{value:.0f}"


def metric_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


class HistoryView(DataTable):
    """The session's nodes as a lane graph; ``show(nodes, head)`` redraws it."""

    DEFAULT_CSS = """
    HistoryView {
        height: 1fr;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter,c", "checkout", "Check out", id="history.checkout"),
        Binding("l", "label", "Label", id="history.label"),
        Binding("m", "mark", "Mark / compare", id="history.mark"),
        Binding("escape", "clear_mark", "Clear mark", id="history.clear_mark"),
        Binding("up,k", "cursor_up", "Up", show=False, id="history.cursor_up"),
        Binding("down,j", "cursor_down", "Down", show=False, id="history.cursor_down"),
    ]

    class NodeRequest(Message):
        """Something the user asked to do to one ``node``."""

        def __init__(self, history: HistoryView, node: int) -> None:
            super().__init__()
            self.history = history
            self.node = node

        @property
        def control(self) -> HistoryView:
            return self.history

    class CheckoutRequested(NodeRequest):
        """The user asked to make ``node`` the current node."""

    class LabelRequested(NodeRequest):
        """The user asked to label (and annotate) ``node``."""

    class CompareRequested(Message):
        """The user marked node ``a`` and then asked to compare it with node ``b``."""

        def __init__(self, history: HistoryView, a: int, b: int) -> None:
            super().__init__()
            self.history = history
            self.a = a
            self.b = b

        @property
        def control(self) -> HistoryView:
            return self.history

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None,
                 disabled: bool = False) -> None:
        super().__init__(name=name, id=id, classes=classes, disabled=disabled, cursor_type="row",
                         zebra_stripes=False)
        self._records: list[NodeRecord] = []
        self._head_node: int | None = None
        self._marked_node: int | None = None
        self._draw_on_mount = False  # show() before mount: draw on mount

    # -- public ------------------------------------------------------------------------
    @property
    def selected_node(self) -> int | None:
        """The node id under the cursor (None when the graph is empty)."""
        if self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except CellDoesNotExist:  # cursor outside the rows (mid-redraw)
            return None
        return None if key.value is None else int(key.value)

    @property
    def marked_node(self) -> int | None:
        """The node marked for comparison, if any."""
        return self._marked_node

    @property
    def head(self) -> int | None:
        return self._head_node

    def show(self, nodes: Sequence[NodeRecord], head: int | None) -> None:
        """Redraw with these nodes; the cursor stays on the node it was on, else goes to the head."""
        self._records = list(nodes)
        self._head_node = head
        if self._marked_node is not None and all(n.id != self._marked_node for n in self._records):
            self._marked_node = None
        if not self.is_mounted:
            self._draw_on_mount = True
            return
        self._redraw(keep=self.selected_node)

    def select_node(self, node: int) -> bool:
        """Move the cursor to ``node``; False if the graph does not have it."""
        try:
            row = self.get_row_index(str(node))
        except RowDoesNotExist:
            return False
        self.move_cursor(row=row, animate=False)
        return True

    # -- drawing -----------------------------------------------------------------------
    def on_mount(self) -> None:
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._redraw(keep=self.selected_node))
        if self._draw_on_mount:
            self._draw_on_mount = False
            self._redraw(keep=None)

    def _colour(self, variable: str) -> Style:
        value = self.app.theme_variables.get(variable) or self.app.theme_variables.get("foreground", "")
        try:
            return Style(color=Color.parse(value.split()[0]).rich_color)
        except (ColorParseError, IndexError):
            return Style()

    def _lanes_text(self, prefix: str, bold: bool, lane_colours: list[Style]) -> Text:
        lane_styles = [lane_colours[i % len(lane_colours)] for i in range(len(prefix) // 2 + 1)]
        text = Text(no_wrap=True, end="")
        for position, glyph in enumerate(prefix):
            lane = position // 2
            if glyph == "─":  # a connector takes the colour of the branch it joins
                ahead = prefix[position + 1:]
                joins = [i for i, g in enumerate(ahead) if g in "┘┴"]
                lane = (position + 1 + joins[0]) // 2 if joins else lane
            style = lane_styles[lane]
            if glyph == "◉" or (bold and glyph == "●"):
                style += Style(bold=True)
            text.append(glyph, style)
        return text

    def _redraw(self, keep: int | None) -> None:
        rows = graph_rows(self._records, self._head_node)
        with_test = any("test/primary" in n.metrics for n in self._records)
        self.clear(columns=True)
        # Widths computed here, not measured by the table: measuring every cell of a long
        # history costs more than drawing it.
        labels = [n.label for n in self._records]
        self.add_column("graph", key="graph", width=max([5, *(len(r.prefix.rstrip()) for r in rows)]))
        self.add_column("", key="mark", width=1)
        self.add_column(Text("#", justify="right"), key="id", width=max([1, *(len(str(n.id)) for n in self._records)]))
        self.add_column("label", key="label", width=max([5, *(min(len(x), LABEL_WIDTH) for x in labels)]))
        self.add_column("op", key="op", width=max([2, *(len(n.op_kind) for n in self._records)]))
        self.add_column(Text("params", justify="right"), key="params", width=6)
        # Headed by the split each column is measured on: the eval split (val), then test.
        eval_split = next((n.eval_split for n in self._records if n.eval_split), "eval")
        self.add_column(Text(eval_split, justify="right"), key="eval", width=6)
        if with_test:
            self.add_column(Text("test", justify="right"), key="test", width=6)
        lane_colours = [self._colour(variable) for variable in LANE_COLOURS]
        mark_style = self._colour("warning") + Style(bold=True)
        label_style = self._colour("accent")
        muted = Style(dim=True)
        for row in rows:
            node = row.node
            is_head = node.id == self._head_node
            bold = Style(bold=True) if is_head else Style()
            label = node.label if len(node.label) <= LABEL_WIDTH else node.label[:LABEL_WIDTH - 1] + "…"
            cells = [
                self._lanes_text(row.prefix.rstrip(), is_head, lane_colours),
                Text(MARK if node.id == self._marked_node else " ", mark_style),
                Text(str(node.id), bold, justify="right"),
                Text(label, label_style + bold, no_wrap=True),
                Text(node.op_kind, bold, no_wrap=True),
                Text(human_count(node.metrics.get("size/params", node.params)), bold, justify="right"),
                Text(metric_text(node.eval_metric), bold, justify="right"),
            ]
            if with_test:
                test = node.metrics.get("test/primary")
                cells.append(Text(metric_text(test), bold if test is not None else muted, justify="right"))
            self.add_row(*cells, key=str(node.id))
        ids = [row.node.id for row in rows]
        target = keep if keep in ids else self._head_node if self._head_node in ids else (ids[0] if ids else None)
        if target is not None:
            self.move_cursor(row=ids.index(target), animate=False)
        # The hint about the mark, in the border's subtitle (shown when the app gives the view a
        # border); a subtitle the app set itself is left alone.
        hint = (f"{MARK} #{self._marked_node}: m on another node compares, esc clears"
                if self._marked_node is not None else "")
        if hint or str(self.border_subtitle or "").startswith(MARK):
            self.border_subtitle = hint

    # -- actions -----------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "clear_mark":
            return self._marked_node is not None  # otherwise escape goes on to the screen / app
        if action in ("checkout", "label", "mark"):
            return self.row_count > 0
        return True

    def action_checkout(self) -> None:
        node = self.selected_node
        if node is not None:
            self.post_message(self.CheckoutRequested(self, node))

    def action_label(self) -> None:
        node = self.selected_node
        if node is not None:
            self.post_message(self.LabelRequested(self, node))

    def action_mark(self) -> None:
        node = self.selected_node
        if node is None:
            return
        if self._marked_node is None or self._marked_node == node:
            self._marked_node = None if self._marked_node == node else node
        else:
            a, self._marked_node = self._marked_node, None
            self.post_message(self.CompareRequested(self, a, node))
        self._redraw(keep=node)
        self.refresh_bindings()

    def action_clear_mark(self) -> None:
        if self._marked_node is None:
            raise SkipAction()
        self._marked_node = None
        self._redraw(keep=self.selected_node)
        self.refresh_bindings()
