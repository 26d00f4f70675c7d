"""Two nodes side by side: metrics (with b − a) and the layers whose tensors differ.

The session is opened read-only in a thread worker (the app holds the write lock; a read-only
open does not take it, and importing the engine stays off the main thread); the comparison
itself (``rcc.session.compare.compare_nodes``) reads only the history graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.style import Style
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.color import Color, ColorParseError
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from rcc_tui.widgets.history_view import metric_text

if TYPE_CHECKING:
    from rcc.session.compare import MetricDiff, NodeComparison


def human_bytes(value: float) -> str:
    """Bytes in binary units: 512 B, 64.0 KiB, 1.25 MiB."""
    for scale, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}" if value / scale < 100 else f"{value / scale:.0f} {unit}"
    return f"{value:.0f} B"


def _lower_is_better(key: str) -> bool:
    return key.startswith("size/") or "loss" in key or "error" in key


def metric_cells(metric: MetricDiff) -> tuple[str, str, str]:
    """(a, b, b − a) as text: sizes as exact counts, everything else with four decimals."""
    if metric.key.startswith("size/"):
        value = lambda v: "—" if v is None else f"{v:,.0f}"  # noqa: E731
        diff = metric.difference
        return value(metric.a), value(metric.b), "—" if diff is None else f"{diff:+,.0f}"
    diff = metric.difference
    return metric_text(metric.a), metric_text(metric.b), "—" if diff is None else f"{diff:+.4f}"


class CompareScreen(Screen[None]):
    """Nodes ``a`` and ``b`` of the session in ``session_dir``; escape closes."""

    DEFAULT_CSS = """
    CompareScreen #compare-body {
        padding: 0 1;
    }
    CompareScreen #compare-title {
        text-style: bold;
        height: auto;
    }
    CompareScreen #compare-summary {
        height: auto;
        color: $text-muted;
        margin-bottom: 1;
    }
    CompareScreen .compare-heading {
        text-style: bold;
        color: $primary;
        height: 1;
    }
    CompareScreen #compare-metrics {
        height: auto;
        max-height: 40%;
        margin-bottom: 1;
    }
    CompareScreen #compare-layers {
        height: 1fr;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Close", id="compare.close"),
    ]

    def __init__(self, session_dir: str, a: int, b: int, comparison: NodeComparison | None = None, *,
                 name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.session_dir = str(session_dir)
        self.a, self.b = a, b
        self.comparison: NodeComparison | None = comparison
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="compare-body"):
            yield Static(f"Compare node #{self.a} with node #{self.b}", id="compare-title")
            yield Static("reading the session…", id="compare-summary")
            yield Static("Metrics", classes="compare-heading")
            yield DataTable(id="compare-metrics", cursor_type="row")
            yield Static("Layers that differ", classes="compare-heading")
            yield DataTable(id="compare-layers", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        if self.comparison is not None:
            self._show(self.comparison)
        else:
            self.query_one("#compare-layers", DataTable).loading = True
            self._load()

    @work(thread=True, exclusive=True, exit_on_error=False)
    def _load(self) -> None:
        from rcc.errors import RccError
        from rcc.session.compare import compare_nodes
        from rcc.session.session import Session

        try:
            with Session.open(self.session_dir, read_only=True) as session:
                comparison = compare_nodes(session.graph, self.a, self.b)
        except RccError as exc:
            self.app.call_from_thread(self._fail, str(exc))
            return
        except Exception as exc:  # a bug, but the app keeps running
            self.app.call_from_thread(self._fail, f"{type(exc).__name__}: {exc}")
            return
        self.app.call_from_thread(self._show, comparison)

    def _fail(self, message: str) -> None:
        self.error = message
        self.query_one("#compare-layers", DataTable).loading = False
        self.query_one("#compare-summary", Static).update(Text(f"cannot compare: {message}", style="bold"))
        self.notify(message, title="Compare", severity="error")

    def _style(self, variable: str) -> Style:
        value = self.app.theme_variables.get(variable, "")
        try:
            return Style(color=Color.parse(value.split()[0]).rich_color)
        except (ColorParseError, IndexError):
            return Style()

    def _describe(self, node) -> str:
        label = f" “{node.label}”" if node.label else ""
        return f"#{node.id}{label} {node.op_kind}" + (f" ({node.summary})" if node.summary else "")

    def _show(self, comparison: NodeComparison) -> None:
        self.comparison = comparison
        a, b = comparison.node_a, comparison.node_b
        self.query_one("#compare-title", Static).update(
            Text.assemble(("A ", "bold"), self._describe(a), ("   B ", "bold"), self._describe(b)))
        ancestor = comparison.common_ancestor
        relation = ("the same node" if a.id == b.id else
                    "A is an ancestor of B" if ancestor == a.id else
                    "B is an ancestor of A" if ancestor == b.id else
                    f"branches from #{ancestor}" if ancestor is not None else "no common ancestor")
        self.query_one("#compare-summary", Static).update(
            f"{relation}; {comparison.tensors_changed} tensors in {len(comparison.layers)} layers differ: "
            f"{human_bytes(comparison.bytes_a)} in A, {human_bytes(comparison.bytes_b)} in B")

        better, worse = self._style("success"), self._style("error")
        metrics = self.query_one("#compare-metrics", DataTable)
        metrics.clear(columns=True)
        metrics.add_column("metric", key="metric")
        metrics.add_column(Text(f"A #{a.id}", justify="right"), key="a")
        metrics.add_column(Text(f"B #{b.id}", justify="right"), key="b")
        metrics.add_column(Text("B − A", justify="right"), key="diff")
        for metric in comparison.metrics:
            value_a, value_b, diff = metric_cells(metric)
            style = Style()
            if metric.difference:
                improved = (metric.difference < 0) == _lower_is_better(metric.key)
                style = better if improved else worse
            metrics.add_row(Text(metric.key), Text(value_a, justify="right"), Text(value_b, justify="right"),
                            Text(diff, style, justify="right"), key=metric.key)

        layers = self.query_one("#compare-layers", DataTable)
        layers.loading = False
        layers.clear(columns=True)
        layers.add_column("layer", key="layer")
        layers.add_column(f"A #{a.id}", key="a")
        layers.add_column(f"B #{b.id}", key="b")
        layers.add_column(Text("bytes A → B", justify="right"), key="bytes")
        layers.add_column("tensors that differ", key="changed")
        strong = Style(bold=True)
        for layer in comparison.layers:
            form_style = strong if layer.form_changed else Style()
            sizes = (f"{human_bytes(layer.bytes_a) if layer.bytes_a else '—'} → "
                     f"{human_bytes(layer.bytes_b) if layer.bytes_b else '—'}")
            layers.add_row(Text(layer.path), Text(layer.a.describe(), form_style), Text(layer.b.describe(), form_style),
                           Text(sizes, justify="right"), Text(", ".join(layer.changed)), key=layer.path)
        if not comparison.layers:
            layers.add_row(Text("no tensor differs: the two nodes hold the same weights", style="italic"),
                           "", "", "", "")
        metrics.focus()

    def action_close(self) -> None:
        self.dismiss(None)
