"""Live charts: accuracy against step while work runs, and size against accuracy for every node.

The run chart has a second series on the right axis: parameters during a stage or cascade,
the training loss during recovery training.

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
from rcc_tui.widgets.history_view import human_count

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

    def size_accuracy_axes(self, xs: Sequence[float], ys: Sequence[float]) -> float:
        """Padded limits for sizes (x, short tick labels) against accuracies (y); one text row in y units."""
        plt = self.plt
        xlow, xhigh = min(xs), max(xs)
        xpad = max((xhigh - xlow) * 0.08, xhigh * 0.002, 1.0)
        ylow, yhigh = min(ys), max(ys)
        ypad = max((yhigh - ylow) * 0.1, 0.005)
        plt.xlim(xlow - xpad, xhigh + xpad)
        plt.ylim(ylow - ypad, yhigh + ypad)
        ticks = [xlow, (xlow + xhigh) / 2, xhigh] if xhigh > xlow else [xlow]
        plt.xticks(ticks, [human_count(t) for t in ticks])
        return (yhigh - ylow + 2 * ypad) / max(self.size.height - 5, 1)

    def render(self) -> RenderResult:
        plot = self.plt
        plot.clear_figure()
        width, height = self.size.width, self.size.height
        if width < 10 or height < 5:
            return Text("")
        plot.plotsize(width, height)
        plot._set_size(width, height)  # as PlotextPlot.render does (textual-plotext issue 5)
        plot.theme(self._plotext_theme())
        self.draw()
        return Text.from_ansi(plot.build(), no_wrap=True, end="")


class MetricChart(_ThemedPlot):
    """Accuracy against step during a run, with an optional threshold line and second metric."""

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None,
                 disabled: bool = False) -> None:
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self._title = "accuracy"
        self._steps: list[int] = []
        self._values: list[float] = []
        self._second_label: str | None = None
        self._second: list[tuple[int, float]] = []
        self._threshold: float | None = None

    @property
    def points(self) -> list[tuple[int, float]]:
        return list(zip(self._steps, self._values))

    @property
    def second_points(self) -> list[tuple[int, float]]:
        """The right-axis series (parameters, or the training loss)."""
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
        self.refresh()

    def add_point(self, step: int, metric: float, second: float | None = None) -> None:
        """One measurement: the accuracy after ``step`` (and the second metric, right axis)."""
        self._steps.append(int(step))
        self._values.append(float(metric))
        if second is not None:
            self._second.append((int(step), float(second)))
        if len(self._steps) > MAX_POINTS:
            del self._steps[0], self._values[0]
        if len(self._second) > MAX_POINTS:
            del self._second[0]
        self.refresh()

    def add_second_points(self, points: Iterable[tuple[int, float]]) -> None:
        """Points of the right-axis series only (a batch of training losses): one redraw for all."""
        self._second.extend((int(step), float(value)) for step, value in points)
        if len(self._second) > MAX_POINTS:
            del self._second[: len(self._second) - MAX_POINTS]
        self.refresh()

    def clear(self) -> None:
        self._title = "accuracy"
        self._steps, self._values, self._second = [], [], []
        self._second_label = None
        self.refresh()

    def set_threshold(self, value: float | None) -> None:
        self._threshold = None if value is None else float(value)
        self.refresh()

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
        if self._steps:
            plt.plot(self._steps, self._values, marker="braille", color=self._colour("primary", "blue"),
                     label="accuracy")
            plt.scatter(self._steps[-1:], self._values[-1:], marker="●", color=self._colour("primary", "blue"))
        if self._second:
            steps, values = zip(*self._second)
            plt.plot(list(steps), list(values), marker="braille", color=self._colour("accent", "yellow"),
                     label=self._second_label or "second", yside="right")
            low, high = min(values), max(values)
            if high > 1000:  # a count (parameters): short tick labels, 19.9M rather than 19900000.0
                pad = max((high - low) * 0.1, high * 0.001)
                plt.ylim(low - pad, high + pad, yside="right")
                ticks = [low, (low + high) / 2, high] if high > low else [low]
                plt.yticks(ticks, [human_count(t) for t in ticks], yside="right")


class ParetoChart(_ThemedPlot):
    """Size (parameters) against accuracy for every node; the Pareto front joined, the head marked."""

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None,
                 disabled: bool = False) -> None:
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self._points: list[tuple[int, float, float]] = []  # (node id, params, accuracy)
        self._front: list[int] = []  # indices into _points
        self._head_node: int | None = None
        self._split = ""  # the eval split the accuracies are measured on

    @property
    def front_nodes(self) -> list[int]:
        """Ids of the Pareto-optimal nodes, fewest parameters first."""
        return [self._points[i][0] for i in self._front]

    def show(self, nodes: Sequence[NodeRecord], head: int | None) -> None:
        """Every node with an eval metric, the Pareto front, the head."""
        self._points = [(n.id, float(n.metrics.get("size/params", n.params)), float(n.eval_metric))
                        for n in nodes if n.eval_metric is not None]
        self._split = next((n.eval_split for n in nodes if n.eval_split), "")
        self._front = pareto_front([(x, y) for _, x, y in self._points])
        self._head_node = head
        self.refresh()

    def draw(self) -> None:
        plt = self.plt
        plt.title(f"size vs {self._split} accuracy".replace("  ", " ")
                  + ("" if self._points else "  (no evaluated node yet)"))
        plt.xlabel("parameters")
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
