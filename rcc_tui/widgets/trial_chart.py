"""Size against accuracy for the trials of a search study: the front joined, pruned trials faint, dense marked.

Like the node chart (``rcc_tui.widgets.charts.ParetoChart``) it draws with plotext on the main
thread only, in the theme's colours. The front is the one the study's rows carry
(``TrialRow.on_front``, from ``rcc.search.trials.pareto_front``), so the chart and the table
can never disagree about which trials are on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rcc_tui.widgets.charts import _ThemedPlot

if TYPE_CHECKING:  # rcc.search.trials is light, but the first frame imports nothing of the engine
    from rcc.search.trials import TrialRow


class TrialChart(_ThemedPlot):
    """Completed trials (front ◆, others •), pruned trials (×, their last rung), and the dense model (◉)."""

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None,
                 disabled: bool = False) -> None:
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self._rows: list[TrialRow] = []
        self._dense: tuple[float, float] | None = None  # (size, accuracy) of the model searched from
        self._measure = "params"

    @property
    def front_trials(self) -> list[int]:
        """Numbers of the trials drawn on the front, smallest first."""
        return [row.number for row in self._front()]

    def show(self, rows: Sequence[TrialRow], dense: tuple[float, float] | None = None,
             measure: str = "params") -> None:
        """Every trial of the study; ``dense`` the reference point; ``measure`` names the size axis."""
        self._rows = list(rows)
        self._dense = dense
        self._measure = measure
        self.replot()

    def _front(self) -> list[TrialRow]:
        front = [r for r in self._rows if r.on_front and r.size is not None and r.accuracy is not None]
        return sorted(front, key=lambda r: (r.size, -r.accuracy))

    def draw(self) -> None:
        plt = self.plt
        measured = [r for r in self._rows if r.state in ("COMPLETE", "PRUNED")
                    and r.size is not None and r.accuracy is not None]
        plt.title("trials: size vs accuracy" + ("" if measured else "  (no finished trial yet)"))
        plt.xlabel("stored values" if self._measure == "params" else "bytes")
        points = [(r.size, r.accuracy) for r in measured] + ([self._dense] if self._dense else [])
        if not points:
            return
        row = self.size_accuracy_axes([p[0] for p in points], [p[1] for p in points])  # one text row, y units
        front = self._front()
        on_front = {r.number for r in front}
        pruned = [r for r in measured if r.state == "PRUNED"]
        others = [r for r in measured if r.state == "COMPLETE" and r.number not in on_front]
        if pruned:
            plt.scatter([r.size for r in pruned], [r.accuracy for r in pruned], marker="×",
                        color=self._colour("warning", "yellow"), label="pruned")
        if others:
            plt.scatter([r.size for r in others], [r.accuracy for r in others], marker="•",
                        color=self._colour("secondary", "cyan"), label="trial")
        if front:
            colour = self._colour("success", "green")
            fx, fy = [r.size for r in front], [r.accuracy for r in front]
            if len(front) > 1:
                plt.plot(fx, fy, marker="braille", color=colour)
            plt.scatter(fx, fy, marker="◆", color=colour, label="front")
        if self._dense is not None:
            plt.scatter([self._dense[0]], [self._dense[1]], marker="◉", color=self._colour("accent", "yellow"),
                        label="dense")
        for trial in front:  # the number one row above its marker
            plt.text(f"#{trial.number}", trial.size, trial.accuracy + row,
                     color=self._colour("foreground", "default"), alignment="center")
