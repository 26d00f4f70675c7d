"""Live charts: accuracy against step while work runs, and stored size against accuracy for every node.

One quantity per axis. The run chart's left axis is the eval accuracy; its right axis is the
model's stored bytes during a stage or cascade (``size/bytes``, what the compressed export
stores, after each kept attempt), or the training loss during recovery training. The run chart
follows the job runner itself: a job that may change the model starts a run from the head
node's figures; evaluated attempts and training losses arrive as points; the new node ends it.
Tick labels carry as many digits as it takes for no two to read the same.

Both draw with plotext (textual-plotext's ``PlotextPlot``) on the main thread only: the app
calls ``add_point`` / ``show`` from message handlers, and the plot is rebuilt in ``render``.
Series colours come from the current Textual theme (primary, accent, success, warning); on an
ANSI theme they are the terminal's own colour names and the canvas is left to the terminal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from rich.text import Text
from textual.app import RenderResult
from textual.color import Color, ColorParseError
from textual_plotext import PlotextPlot
from textual_plotext.plot import _themes as _plotext_themes

from rcc.session.graph import NodeRecord
from rcc_tui.sizes import distinct_labels
from rcc_tui.workers import SESSION, JobFailed, JobFinished, JobProgressed, JobStarted

MAX_POINTS = 5000  # a long run keeps its most recent points
ANSI_NAMES = ("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the Pareto-optimal points, smallest x first.

    x is a cost (parameters: fewer is better), y a score (accuracy: higher is better). Point i
    is optimal when no point j has x_j ≤ x_i and y_j ≥ y_i with one of them strict; equal
    points are all optimal. Points with a NaN coordinate are never optimal.
    """
    order = sorted((i for i, (x, y) in enumerate(points) if not (math.isnan(x) or math.isnan(y))),
                   key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -math.inf  # the highest y seen at a strictly smaller x
    position = 0
    while position < len(order):
        x = points[order[position]][0]
        group = []
        while position < len(order) and points[order[position]][0] == x:
            group.append(order[position])
            position += 1
        top = points[group[0]][1]  # sorted by -y within equal x
        if top > best:
            front.extend(i for i in group if points[i][1] == top)
            best = top
    return front


def _plot_colour(value: str | None, fallback: str = "default") -> str | tuple[int, int, int]:
    """A theme colour as plotext takes it: an ANSI colour name, or an RGB tuple."""
    if not value:
        return fallback
    try:
        colour = Color.parse(value.split()[0])
    except (ColorParseError, IndexError):
        return fallback
    if colour.ansi is not None:
        if colour.ansi < 0:
            return "default"
        name = ANSI_NAMES[colour.ansi % 8]
        return name + "+" if colour.ansi >= 8 else name
    return colour.rgb


def step_ticks(low: int, high: int, most: int = 6) -> list[int]:
    """Whole steps from ``low`` to ``high``, at most ``most`` of them (a step is never 4.25)."""
    stride = max(1, math.ceil((high - low) / (most - 1)))
    return list(range(low, high + 1, stride))


def size_ticks(low: float, high: float) -> list[float]:
    """Three ticks over a size range (one when it is a single value)."""
    return [low, (low + high) / 2, high] if high > low else [low]


class _ThemedPlot(PlotextPlot):
    """A PlotextPlot redrawn from stored data on every render, in the app theme's colours."""

    def _colour(self, variable: str, fallback: str = "default") -> str | tuple[int, int, int]:
        return _plot_colour(self.app.theme_variables.get(variable), fallback)

    def _plotext_theme(self) -> str:
        """Register (once) and return a plotext theme: canvas = this widget's background."""
        if self.app.current_theme.ansi:
            return "clear"
        background = self.background_colors[1]
        foreground = _plot_colour(self.app.theme_variables.get("foreground"), "default")
        name = f"rcc-{self.app.theme}-{background.hex}"
        if name not in _plotext_themes:
            _plotext_themes[name] = [background.rgb, background.rgb, foreground, "default",
                                     list(_plotext_themes["default"][4])]
        return name

    def draw(self) -> None:  # overridden: plot the stored data with self.plt
        raise NotImplementedError

    def replot(self) -> None:
        """The data changed: draw it again at the next render (until then, the last drawing is reused)."""
        self._version = getattr(self, "_version", 0) + 1
        self.refresh()

    def size_accuracy_axes(self, xs: Sequence[float], ys: Sequence[float]) -> float:
        """Padded limits for sizes (x, short tick labels) against accuracies (y); one text row in y units."""
        plt = self.plt
        xlow, xhigh = min(xs), max(xs)
        xpad = max((xhigh - xlow) * 0.08, xhigh * 0.002, 1.0)
        ylow, yhigh = min(ys), max(ys)
        ypad = max((yhigh - ylow) * 0.1, 0.005)
        plt.xlim(xlow - xpad, xhigh + xpad)
        plt.ylim(ylow - ypad, yhigh + ypad)
        ticks = size_ticks(xlow, xhigh)
        plt.xticks(ticks, distinct_labels(ticks))
        return (yhigh - ylow + 2 * ypad) / max(self.size.height - 5, 1)

    def render(self) -> RenderResult:
        # Building a plot costs tens of milliseconds; a tab switch or a repaint of the screen
        # renders the widget again with the same data, size and theme: reuse the last drawing.
        width, height = self.size.width, self.size.height
        key = (width, height, self.app.theme, self.background_colors[1].hex, getattr(self, "_version", 0))
        if key == getattr(self, "_drawn_key", None):
            return self._drawn
        plot = self.plt
        plot.clear_figure()
        if width < 10 or height < 5:
            return Text("")
        plot.plotsize(width, height)
        plot._set_size(width, height)  # as PlotextPlot.render does (textual-plotext issue 5)
        plot.theme(self._plotext_theme())
        self.draw()
        self._drawn = Text.from_ansi(plot.build(), no_wrap=True, end="")
        self._drawn_key = key
        return self._drawn


class MetricChart(_ThemedPlot):
    """Accuracy against step during a run, with an optional threshold line and a right-axis series."""

    STORED = "stored bytes"  # the right axis of a compression run
    LOSS = "loss"  # the right axis of a training run

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None,
                 disabled: bool = False) -> None:
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self._title = "accuracy"
        self._steps: list[int] = []
        self._values: list[float] = []
        self._second_label: str | None = None
        self._second: list[tuple[int, float]] = []
        self._threshold: float | None = None
        self._job = None  # the job this run follows
        self._split = ""  # the eval split the accuracies are measured on (the head's, as the run starts)
        self._start_size: float | None = None  # the head's stored bytes, plotted once the right axis is sizes

    def on_mount(self) -> None:
        jobs = getattr(self.app, "jobs", None)
        if jobs is not None:
            jobs.subscribe(self)

    @property
    def points(self) -> list[tuple[int, float]]:
        return list(zip(self._steps, self._values))

    @property
    def second_points(self) -> list[tuple[int, float]]:
        """The right-axis series (stored bytes, or the training loss)."""
        return list(self._second)

    @property
    def second_label(self) -> str | None:
        return self._second_label

    @property
    def threshold(self) -> float | None:
        return self._threshold

    def start_run(self, title: str, second_label: str | None = None) -> None:
        """Start a new run: forget the points, keep the threshold."""
        self._title = title
        self._steps, self._values, self._second = [], [], []
        self._second_label = second_label
        self.replot()

    def add_point(self, step: int, metric: float, second: float | None = None) -> None:
        """One measurement: the accuracy after ``step`` (and the right-axis value)."""
        self._steps.append(int(step))
        self._values.append(float(metric))
        if second is not None:
            self._second.append((int(step), float(second)))
        if len(self._steps) > MAX_POINTS:
            del self._steps[0], self._values[0]
        if len(self._second) > MAX_POINTS:
            del self._second[0]
        self.replot()

    def add_second_points(self, points: Iterable[tuple[int, float]]) -> None:
        """Points of the right-axis series only (a batch of training losses): one redraw for all."""
        self._second.extend((int(step), float(value)) for step, value in points)
        if len(self._second) > MAX_POINTS:
            del self._second[: len(self._second) - MAX_POINTS]
        self.replot()

    def clear(self) -> None:
        self._title = "accuracy"
        self._steps, self._values, self._second = [], [], []
        self._second_label = None
        self.replot()

    def set_threshold(self, value: float | None) -> None:
        self._threshold = None if value is None else float(value)
        self.replot()

    # -- following the job runner --
    def _right_axis(self, label: str) -> None:
        """The right axis shows ``label`` from now on (the first value decides; the head's size leads sizes)."""
        if self._second_label is None:
            self._second_label = label
            if label == self.STORED and self._start_size is not None and self._steps:
                self._second.insert(0, (self._steps[0], self._start_size))

    def on_job_started(self, message: JobStarted) -> None:
        job = message.job
        if job.lane != SESSION or job.op is None or not job.op.changes_model:
            return
        self._job = job
        self.start_run(job.title)
        head = job.head
        metric = head.eval_metric if head is not None else None
        self._split = head.eval_split if head is not None else ""
        self._start_size = head.metrics.get("size/bytes") if head is not None else None
        if metric is not None:
            self.add_point(0, metric)
        threshold = getattr(job.op, "threshold", None)
        self.set_threshold(threshold * metric if threshold is not None and metric is not None else None)

    def on_job_progressed(self, message: JobProgressed) -> None:
        if message.job is not self._job:
            return
        losses = [(event.done, event.loss) for event in message.events if getattr(event, "loss", None) is not None]
        if losses:
            self._right_axis(self.LOSS)
            self.add_second_points(losses)
        for event in message.events:
            if getattr(event, "metric", None) is None:
                continue
            step = event.done or (self._steps[-1] + 1 if self._steps else 1)  # an attempt: the next step
            size = event.stored_bytes
            if size is not None:
                self._right_axis(self.STORED)
            self.add_point(step, event.metric, size if self._second_label == self.STORED else None)

    def on_job_finished(self, message: JobFinished) -> None:
        if message.job is not self._job:
            return
        self._job = None
        outcome = getattr(message.result, "outcome", None)
        view = getattr(message.result, "view", None)
        node = view.node(outcome.new_node) if outcome is not None and view is not None else None
        if node is None or node.eval_metric is None:
            return
        if self._second_label == self.LOSS:  # a training run: its last step
            step = self._second[-1][0] if self._second else (self._steps[-1] + 1 if self._steps else 1)
            self.add_point(step, node.eval_metric)
            return
        self._right_axis(self.STORED)
        self.add_point(self._steps[-1] + 1 if self._steps else 1, node.eval_metric, node.metrics.get("size/bytes"))

    def on_job_failed(self, message: JobFailed) -> None:
        if message.job is self._job:
            self._job = None

    def draw(self) -> None:
        plt = self.plt
        title = self._title
        if self._threshold is not None:
            title += f"  (threshold {self._threshold:.4g})"
        if not self._steps and not self._second:
            title += "  (no points yet)"
        plt.title(title)
        plt.xlabel("step")
        ys = list(self._values)
        if self._threshold is not None:
            ys.append(self._threshold)
            plt.hline(self._threshold, self._colour("error", "red"))
        if ys:
            low, high = min(ys), max(ys)
            pad = max((high - low) * 0.1, 0.005)
            plt.ylim(low - pad, high + pad)
        xs = self._steps + [step for step, _ in self._second]  # both series share the step axis
        if xs:
            low, high = min(xs), max(xs)
            plt.xlim(low - 0.5, high + 0.5) if low == high else plt.xlim(low, high)
            plt.xticks(step_ticks(low, high))
        if self._steps:
            plt.plot(self._steps, self._values, marker="braille", color=self._colour("primary", "blue"),
                     label=f"{self._split} accuracy".strip())
            plt.scatter(self._steps[-1:], self._values[-1:], marker="●", color=self._colour("primary", "blue"))
        if self._second:
            steps, values = zip(*self._second)
            plt.plot(list(steps), list(values), marker="braille", color=self._colour("accent", "yellow"),
                     label=self._second_label or "second", yside="right")
            if self._second_label == self.STORED:  # sizes: short tick labels that differ, 91.41M 91.43M
                low, high = min(values), max(values)
                pad = max((high - low) * 0.1, high * 0.001)
                plt.ylim(low - pad, high + pad, yside="right")
                ticks = size_ticks(low, high)
                plt.yticks(ticks, distinct_labels(ticks), yside="right")


class ParetoChart(_ThemedPlot):
    """Stored size (bytes) against accuracy for every node; the Pareto front joined, the head marked."""

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None,
                 disabled: bool = False) -> None:
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self._points: list[tuple[int, float, float]] = []  # (node id, stored bytes, accuracy)
        self._front: list[int] = []  # indices into _points
        self._head_node: int | None = None
        self._split = ""  # the eval split the accuracies are measured on

    @property
    def front_nodes(self) -> list[int]:
        """Ids of the Pareto-optimal nodes, smallest first."""
        return [self._points[i][0] for i in self._front]

    def show(self, nodes: Sequence[NodeRecord], head: int | None) -> None:
        """Every node with an eval metric and a stored size, the Pareto front, the head."""
        self._points = [(n.id, float(n.metrics["size/bytes"]), float(n.eval_metric))
                        for n in nodes if n.eval_metric is not None and "size/bytes" in n.metrics]
        self._split = next((n.eval_split for n in nodes if n.eval_split), "")
        self._front = pareto_front([(x, y) for _, x, y in self._points])
        self._head_node = head
        self.replot()

    def draw(self) -> None:
        plt = self.plt
        plt.title(f"size vs {self._split} accuracy".replace("  ", " ")
                  + ("" if self._points else "  (no evaluated node yet)"))
        plt.xlabel("stored bytes")
        if not self._points:
            return
        xs = [x for _, x, _ in self._points]
        ys = [y for _, _, y in self._points]
        row = self.size_accuracy_axes(xs, ys)  # one text row in data units
        front = set(self._front)
        others = [i for i in range(len(self._points)) if i not in front]
        if others:
            plt.scatter([xs[i] for i in others], [ys[i] for i in others], marker="•",
                        color=self._colour("secondary", "cyan"), label="node")
        if self._front:
            fx = [xs[i] for i in self._front]
            fy = [ys[i] for i in self._front]
            colour = self._colour("success", "green")
            if len(self._front) > 1:
                plt.plot(fx, fy, marker="braille", color=colour)
            plt.scatter(fx, fy, marker="◆", color=colour, label="Pareto front")
        for index, (node, x, y) in enumerate(self._points):
            if node == self._head_node:
                plt.scatter([x], [y], marker="◉", color=self._colour("accent", "yellow"), label=f"head #{node}")
            if index in front or node == self._head_node:  # the id one row above its marker
                plt.text(f"#{node}", x, y + row, color=self._colour("foreground", "default"), alignment="center")
