"""Two nodes side by side: metrics (with b − a), their statistics, and the layers whose tensors differ.

The session is opened read-only in a thread worker (the app holds the write lock; a read-only
open does not take it, and importing the engine stays off the main thread); the comparison
itself (``rcc.session.compare.compare_nodes``) reads only the history graph. Once it shows, a
second worker evaluates both nodes per example (``rcc.analysis.compare.compare_nodes_stats``,
as ``rcc-tui analyze compare`` with its defaults: seconds) for each one's bootstrap interval,
the difference B − A with its interval and the paired test's p-value. Leaving the screen
cancels that worker between batches and drops its result.
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
from textual.worker import get_current_worker

from rcc_tui.widgets.history_view import metric_text

if TYPE_CHECKING:
    from rcc.analysis.compare import ModelsComparison
    from rcc.analysis.statistics import Interval
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
        value = lambda v: "—" if v is None else f"{v:,.0f}"
        diff = metric.difference
        return value(metric.a), value(metric.b), "—" if diff is None else f"{diff:+,.0f}"
    diff = metric.difference
    return metric_text(metric.a), metric_text(metric.b), "—" if diff is None else f"{diff:+.4f}"


def interval_text(interval: Interval, signed: bool = False) -> str:
    """``0.9611 [0.9417, 0.9778]`` (with signs for a difference)."""
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(interval.estimate)} [{f.format(interval.low)}, {f.format(interval.high)}]"


def statistics_text(result: ModelsComparison, a: int, b: int, better: Style, worse: Style) -> Text:
    """The Statistics section: A and B with their intervals, B − A with its interval and p-value."""
    paired = result.paired
    diff = paired.difference
    about = (f"{paired.measure} on {result.data}/{result.split}, n = {paired.n}; "
             f"{diff.confidence:.0%} bootstrap intervals ({diff.resamples} resamples, seed {result.seed})\n")
    text = Text.assemble(
        (about, "dim"),
        ("A", "bold"), f" #{a}   {interval_text(result.interval_a)}\n",
        ("B", "bold"), f" #{b}   {interval_text(result.interval_b)}\n")
    significant = diff.low > 0 or diff.high < 0  # the interval excludes 0
    style = (better if diff.estimate > 0 else worse) if significant else Style()
    text.append("B − A", style="bold")
    text.append("  ")
    text.append(interval_text(diff, signed=True), style=style)
    detail = ""
    if paired.discordant is not None:
        detail = f"; {paired.discordant[0]} only A right, {paired.discordant[1]} only B right"
    text.append(f"   p = {paired.p_value:.3g} ({paired.test}{detail})")
    return text


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
    CompareScreen #compare-stats {
        height: auto;
        min-height: 3;
        margin-bottom: 1;
    }
    CompareScreen #compare-layers {
        height: 1fr;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Close", id="compare.close"),
    ]

    def __init__(self, session_dir: str, a: int, b: int, comparison: NodeComparison | None = None,
                 statistics: ModelsComparison | None = None, *, device: str = "cpu",
                 name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.session_dir = str(session_dir)
        self.device = device  # where the two nodes are evaluated for the statistics (the app's --device)
        self.a, self.b = a, b
        self.comparison: NodeComparison | None = comparison
        self.error: str | None = None
        self.statistics: ModelsComparison | None = statistics  # given: shown as is, nothing is evaluated
        self.statistics_error: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="compare-body"):
            yield Static(f"Compare node #{self.a} with node #{self.b}", id="compare-title")
            yield Static("reading the session…", id="compare-summary")
            yield Static("Metrics", classes="compare-heading")
            yield DataTable(id="compare-metrics", cursor_type="row")
            yield Static("Statistics", classes="compare-heading")
            yield Static("", id="compare-stats")
            yield Static("Layers that differ", classes="compare-heading")
            yield DataTable(id="compare-layers", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        stats = self.query("#compare-stats")
        if not stats:  # closed (escape) before its widgets were mounted: nothing to load
            return
        if self.statistics is not None:
            self._show_statistics(self.statistics)
        else:
            stats.first(Static).loading = True
        if self.comparison is not None:
            self._show(self.comparison)
        else:
            self.query_one("#compare-layers", DataTable).loading = True
            self._load()

    @work(thread=True, exclusive=True, exit_on_error=False)
    def _load(self) -> None:
        def compare():
            from rcc.session.compare import compare_nodes
            from rcc.session.session import Session

            with Session.open(self.session_dir, read_only=True) as session:
                return compare_nodes(session.graph, self.a, self.b)

        self._compute(compare, self._show, self._fail)

    @work(thread=True, exclusive=True, exit_on_error=False, group="statistics")
    def _load_statistics(self) -> None:
        from rcc.analysis.compare import compare_nodes_stats

        worker = get_current_worker()
        # The CLI's defaults (test split, 95 %, 2000 resamples, seed 0): the app shows what it prints.
        self._compute(lambda: compare_nodes_stats(self.session_dir, self.a, self.b, device=self.device,
                                                  cancel=lambda: worker.is_cancelled),
                      self._show_statistics, self._statistics_failed)

    def _compute(self, compute, show, fail) -> None:
        """Worker thread: ``show(compute())`` on the main thread, or ``fail(one line)``; never raises."""
        from rcc.errors import Cancelled
        from rcc_tui.workers import describe_error

        try:
            result = compute()
        except Cancelled:
            return  # the screen was left
        except Exception as exc:  # noqa: BLE001  (a bug is reported too: the app keeps running)
            self._deliver(fail, describe_error(exc))
            return
        self._deliver(show, result)

    def _deliver(self, callback, value) -> None:
        """Hand a worker's result to the main thread, unless the screen was left (then it is dropped)."""
        if get_current_worker().is_cancelled:
            return
        try:
            self.app.call_from_thread(callback, value)
        except RuntimeError:  # the app is shutting down
            pass

    def _statistics_failed(self, message: str) -> None:
        if not self.is_attached:
            return
        self.statistics_error = message
        stats = self.query_one("#compare-stats", Static)
        stats.loading = False
        stats.update(Text(f"no statistics: {message}", style="bold"))

    def _show_statistics(self, result: ModelsComparison) -> None:
        if not self.is_attached:
            return
        self.statistics = result
        stats = self.query_one("#compare-stats", Static)
        stats.loading = False
        stats.update(statistics_text(result, self.a, self.b, self._style("success"), self._style("error")))

    def _fail(self, message: str) -> None:
        if not self.is_attached:
            return
        self.error = message
        self.query_one("#compare-layers", DataTable).loading = False
        stats = self.query_one("#compare-stats", Static)
        stats.loading = False
        stats.update("")
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
        if not self.is_attached:
            return
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
        if self.statistics is None and self.statistics_error is None:
            self._load_statistics()

    def action_close(self) -> None:
        self.dismiss(None)
