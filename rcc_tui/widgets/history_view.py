"""The history graph: the session DAG as lanes of box-drawing glyphs, newest node on top.

One row per node (lazygit's commit graph is the model): lane glyphs, node number, label, op,
stored size (``size/bytes``, what the compressed export stores) with its change from the
parent node, the eval metric and the test metric. The columns fit the widget's width: at 80×24
the op names are short and the metrics one-decimal percentages; wider, everything is spelled
out. The lanes and node numbers stay put when the table scrolls sideways. The head node is drawn
``◉`` and bold. ``NodeDetails`` (beside it) shows the exact figures of the node under the cursor.

Keys (binding ids in brackets, rebindable through the keymap): enter / o check out
[history.checkout], l label [history.label], m mark for comparison and m on a second node
compare [history.mark], escape clear the mark [history.clear_mark], up / k and down / j move
[history.cursor_up, history.cursor_down]. The view changes nothing itself: it posts messages that
the screen turns into session ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.actions import SkipAction
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

from rcc.session.graph import NodeRecord
from rcc.session.lanes import graph_rows
from rcc.session.metric_keys import metric_key
from rcc_tui.sizes import change_text, short_count
from rcc_tui.theme_colours import theme_style

LANE_COLOURS = ("primary", "success", "accent", "secondary", "warning")  # theme variables, by lane
MARK = "◆"
LABEL_WIDTH = 24
SHORT_OPS = {"load_model": "load", "run_stage": "stage", "run_cascade": "cascade", "apply_trial": "trial",
             "train": "train"}  # op names in a narrow table


def human_count(value: float | None) -> str:
    """A count in three significant figures with a unit: 19.9M, 151M, 2.05K."""
    return short_count(value)


def metric_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def percent_text(value: float | None, decimals: int) -> str:
    """An accuracy as a percentage without the sign (the header says what it is): ``96.1``."""
    return "—" if value is None else f"{value * 100:.{decimals}f}"


def stored_of(node: NodeRecord) -> float | None:
    """``size/bytes`` of a node: what the compressed export stores (None for a node measured before it existed)."""
    return node.metrics.get("size/bytes")


@dataclass(frozen=True)
class Columns:
    """How the table is laid out at a width: op names spelled out or short, label width, metric decimals."""

    full_ops: bool
    label_width: int
    decimals: int


def metric_width(decimals: int) -> int:
    """Cells of a percentage with ``decimals`` (``96.11``: 5), at least the header's 4."""
    return max(4, 3 + decimals)


def fit_columns(width: int, fixed: int, labels: Sequence[str], ops: Sequence[str], metrics: int) -> Columns:
    """The widest layout that fits ``width`` cells.

    ``fixed`` is what the lanes, numbers, sizes and changes take; ``metrics`` the metric columns
    (eval, and test once a node has one). Each column is one cell wider than its content (the gap).
    """
    longest_label = max([5, *(min(len(x), LABEL_WIDTH) for x in labels)])
    full_op = max([2, *(len(op) for op in ops)])
    short_op = max([2, *(len(SHORT_OPS.get(op, op)) for op in ops)])
    for full_ops, decimals in ((True, 2), (False, 2), (False, 1)):
        op_width = full_op if full_ops else short_op
        room = width - fixed - (op_width + 1) - metrics * (metric_width(decimals) + 1) - 2  # the label's space, gap
        if room >= min(longest_label, 12):
            return Columns(full_ops, min(longest_label, room), decimals)
    return Columns(False, max(5, min(longest_label, width - fixed - short_op - 1 - metrics * 5 - 2)), 1)


class HistoryView(DataTable):
    """The session's nodes as a lane graph; ``show(nodes, head)`` redraws it."""

    DEFAULT_CSS = """
    HistoryView {
        height: 1fr;
        scrollbar-size-vertical: 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter,o", "checkout", "Check out", id="history.checkout"),
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

    class NodeHighlighted(NodeRequest):
        """The cursor is on ``node`` now (its exact figures can be shown)."""

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
                         zebra_stripes=False, cell_padding=0)
        self.fixed_columns = 2  # lanes and node numbers stay when the table scrolls sideways
        self._records: list[NodeRecord] = []
        self._head_node: int | None = None
        self._test_split = "test"
        self._marked_node: int | None = None
        self._draw_on_mount = False  # show() before mount: draw on mount
        self._layout: Columns | None = None

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

    @property
    def columns_layout(self) -> Columns | None:
        """The layout of the last redraw (for tests and the details pane)."""
        return self._layout

    def show(self, nodes: Sequence[NodeRecord], head: int | None, test_split: str = "test") -> None:
        """Redraw with these nodes; the cursor stays on the node it was on, else goes to the head.

        ``test_split``: the session's split reported as test (``Session.test_split``), whose
        primary metric fills the last column once a node has it.
        """
        self._records = list(nodes)
        self._head_node = head
        self._test_split = test_split
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

    def on_resize(self) -> None:
        if self._records and self._fit() != self._layout:
            self._redraw(keep=self.selected_node)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        node = self.selected_node
        if node is not None:
            self.post_message(self.NodeHighlighted(self, node))

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

    @property
    def _test_key(self) -> str:
        return metric_key(self._test_split)

    def _columns(self) -> tuple[list, dict[int, str], dict[int, str], dict[str, int], Columns]:
        """(graph rows, stored text and change text by node, fixed column widths, the layout for this width)."""
        rows = graph_rows(self._records, self._head_node)
        by_id = {n.id: n for n in self._records}
        stored = {n.id: short_count(stored_of(n)) for n in self._records}
        change = {n.id: change_text(stored_of(n), stored_of(by_id[n.parent]) if n.parent in by_id else None)
                  for n in self._records}
        widths = {  # content widths; every column is one cell wider (its gap)
            "graph": max([4, *(len(r.prefix.rstrip()) + 1 for r in rows)]),  # lanes, then the mark
            "id": max([1, *(len(str(n.id)) for n in self._records)]),
            "stored": max([6, *map(len, stored.values())]),
            "change": max([2, *map(len, change.values())]),
        }
        fixed = sum(width + 1 for width in widths.values())
        metrics = 2 if any(self._test_key in n.metrics for n in self._records) else 1
        available = self.scrollable_content_region.width or self.size.width or 80
        layout = fit_columns(available, fixed, [n.label for n in self._records], [n.op_kind for n in self._records],
                             metrics)
        return rows, stored, change, widths, layout

    def _fit(self) -> Columns:
        return self._columns()[4]

    def _redraw(self, keep: int | None) -> None:
        rows, stored, change, widths, layout = self._columns()
        self._layout = layout
        with_test = any(self._test_key in n.metrics for n in self._records)
        self.clear(columns=True)
        # Widths computed here, not measured by the table: measuring every cell of a long
        # history costs more than drawing it. The table's own cell padding is 0 (a narrow
        # terminal loses no column to it): each column is one cell wider than its content.
        op_name = (lambda kind: kind) if layout.full_ops else (lambda kind: SHORT_OPS.get(kind, kind))
        metric = metric_width(layout.decimals)
        self.add_column(Text("graph"), key="graph", width=widths["graph"] + 1)
        self.add_column(Text("#", justify="right"), key="id", width=widths["id"] + 1)
        self.add_column(Text(" label"), key="label", width=layout.label_width + 2)
        self.add_column(Text("op"), key="op", width=max([2, *(len(op_name(n.op_kind)) for n in self._records)]) + 1)
        self.add_column(Text("stored", justify="right"), key="stored", width=widths["stored"] + 1)
        self.add_column(Text("Δ", justify="right"), key="change", width=widths["change"] + 1)
        # Headed by the split each column is measured on: the eval split (val), then the test split.
        eval_split = next((n.eval_split for n in self._records if n.eval_split), "eval")
        self.add_column(Text(eval_split, justify="right"), key="eval", width=metric + 1)
        if with_test:
            self.add_column(Text(self._test_split, justify="right"), key="test", width=metric + 1)
        lane_colours = [theme_style(self.app, variable) for variable in LANE_COLOURS]
        mark_style = theme_style(self.app, "warning") + Style(bold=True)
        label_style = theme_style(self.app, "accent")
        muted = Style(dim=True)
        for row in rows:
            node = row.node
            is_head = node.id == self._head_node
            bold = Style(bold=True) if is_head else Style()
            width = layout.label_width
            label = node.label if len(node.label) <= width else node.label[:width - 1] + "…"
            graph = self._lanes_text(row.prefix.rstrip(), is_head, lane_colours)
            graph.append(MARK if node.id == self._marked_node else " ", mark_style)
            cells = [
                graph,
                Text(str(node.id), bold, justify="right"),
                Text(" " + label, label_style + bold, no_wrap=True),
                Text(op_name(node.op_kind), bold, no_wrap=True),
                Text(stored[node.id], bold, justify="right"),
                Text(change[node.id], bold, justify="right"),
                Text(percent_text(node.eval_metric, layout.decimals), bold, justify="right"),
            ]
            if with_test:
                test = node.metrics.get(self._test_key)
                cells.append(Text(percent_text(test, layout.decimals), bold if test is not None else muted,
                                  justify="right"))
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
