"""Two nodes side by side: metrics (with b − a), their statistics, and the layers whose tensors differ.

The session is opened read-only in a background job of the app's runner (the app holds the
write lock; a read-only open does not take it, and importing the engine stays off the main
thread); the comparison itself (``rcc.session.compare.compare_nodes``) reads the history graph
and the masks of the layers that differ (to show what each layer stores in the compressed
export). Once it shows, a second job evaluates both nodes per example
(``rcc.analysis.compare.compare_nodes_stats``, as ``rcc-tui analyze compare`` with its defaults:
seconds) for each one's bootstrap interval, the difference B − A with its interval and the
paired test's p-value. Leaving the screen cancels that job between batches and drops its result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from rcc_tui.sizes import bytes_text
from rcc_tui.theme_colours import theme_style
from rcc_tui.widgets.history_view import metric_text
from rcc_tui.workers import BACKGROUND, Job, JobFailed, JobFinished, describe_error

if TYPE_CHECKING:
    from rcc.analysis.compare import ModelsComparison
    from rcc.analysis.statistics import Interval
    from rcc.session.compare import MetricDiff, NodeComparison


HIDDEN_METRICS = ("size/total",)  # every parameter, pruned or not: not a size anything stores


def stored_text(stored: int | None, in_store: int) -> str:
    """What the export stores for a layer (its tensor bytes when the masks could not be read); ``—`` when absent."""
    value = stored if stored is not None else in_store
    return bytes_text(value) if value else "—"


def _lower_is_better(key: str) -> bool:
    return key.startswith("size/") or "loss" in key or "error" in key


def metric_cells(metric: MetricDiff) -> tuple[str, str, str]:
    """(a, b, b − a) as text: sizes as exact counts, everything else with four decimals."""
    if metric.key.startswith("size/"):
        def value(v: float | None) -> str:
            return "—" if v is None else f"{v:,.0f}"

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
        self._jobs: set[Job] = set()
        self._comparing: Job | None = None
        self._statistics_job: Job | None = None

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
        jobs = getattr(self.app, "jobs", None)
        if jobs is not None:
            jobs.subscribe(self)
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

    def _start(self, title: str, compute) -> Job:
        jobs = self.app.jobs  # type: ignore[attr-defined]
        job = jobs.start(Job(title, lambda context: compute(context), lane=BACKGROUND, kind="read"))
        self._jobs.add(job)
        return job

    def _load(self) -> None:
        def compare(context):
            from rcc.session.compare import compare_nodes
            from rcc.session.session import Session

            with Session.open(self.session_dir, read_only=True) as session:
                return compare_nodes(session.graph, self.a, self.b, store=session.store)

        self._comparing = self._start(f"compare nodes {self.a} and {self.b}", compare)

    def _load_statistics(self) -> None:
        from rcc.analysis.compare import compare_nodes_stats

        # The CLI's defaults (test split, 95 %, 2000 resamples, seed 0): the app shows what it prints.
        self._statistics_job = self._start(
            f"statistics of nodes {self.a} and {self.b}",
            lambda context: compare_nodes_stats(self.session_dir, self.a, self.b, device=self.device,
                                                cancel=context.cancelled))

    def on_unmount(self) -> None:
        for job in self._jobs:  # leaving drops what is still being computed
            self.app.jobs.cancel(job)  # type: ignore[attr-defined]

    def on_job_finished(self, message: JobFinished) -> None:
        if message.job is self._comparing:
            self._show(message.result)
        elif message.job is self._statistics_job:
            self._show_statistics(message.result)

    def on_job_failed(self, message: JobFailed) -> None:
        if message.cancelled:
            return  # the screen was left
        if message.job is self._comparing:
            self._fail(describe_error(message.error))
        elif message.job is self._statistics_job:
            self._statistics_failed(describe_error(message.error))

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
        return theme_style(self.app, variable)

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
            f"{relation}; {comparison.tensors_changed} tensors in {len(comparison.layers)} layers differ "
            f"(a checkout between them reads {bytes_text(comparison.bytes_b)})")

        better, worse = self._style("success"), self._style("error")
        metrics = self.query_one("#compare-metrics", DataTable)
        metrics.clear(columns=True)
        metrics.add_column("metric", key="metric")
        metrics.add_column(Text(f"A #{a.id}", justify="right"), key="a")
        metrics.add_column(Text(f"B #{b.id}", justify="right"), key="b")
        metrics.add_column(Text("B − A", justify="right"), key="diff")
        for metric in comparison.metrics:
            if metric.key in HIDDEN_METRICS:
                continue
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
        layers.add_column(Text("stored A → B", justify="right"), key="bytes")
        layers.add_column("tensors that differ", key="changed")
        strong = Style(bold=True)
        for layer in comparison.layers:
            form_style = strong if layer.form_changed else Style()
            sizes = f"{stored_text(layer.stored_a, layer.bytes_a)} → {stored_text(layer.stored_b, layer.bytes_b)}"
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
