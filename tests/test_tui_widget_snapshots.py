"""Snapshots (pytest-textual-snapshot) of the history graph with a branch and of the compare screen.

Regenerate after an intended change with ``pytest tests/test_tui_widget_snapshots.py --snapshot-update``
and look at the SVGs in tests/__snapshots__/ before committing them.
"""

from __future__ import annotations

from test_tui_widgets import NODES, prepared_comparison
from textual.app import App, ComposeResult
from textual.widgets import Footer, Static

from rcc_tui.screens.compare_screen import CompareScreen
from rcc_tui.themes import BUILTIN_DIRECTORY, load_themes
from rcc_tui.widgets.history_view import HistoryView


class ThemedApp(App):
    def __init__(self) -> None:
        super().__init__()
        for theme in load_themes(BUILTIN_DIRECTORY):  # never the user's themes
            self.register_theme(theme)
        self.theme = "rcc-dark"


class HistorySnapshotApp(ThemedApp):
    CSS = """
    HistoryView { border: round $primary; }
    """

    def compose(self) -> ComposeResult:
        view = HistoryView()
        view.border_title = "History"
        yield view
        yield Footer()

    def on_mount(self) -> None:
        view = self.query_one(HistoryView)
        view.show(NODES, 5)
        view.focus()


class CompareSnapshotApp(ThemedApp):
    def compose(self) -> ComposeResult:
        yield Static("main")

    def on_mount(self) -> None:
        self.push_screen(CompareScreen("/nonexistent", 2, 6, prepared_comparison(), prepared_statistics()))


def prepared_statistics():
    """Fixed statistics for the compare screen (the screen evaluates nothing when given them)."""
    from rcc.analysis.compare import ModelsComparison
    from rcc.analysis.statistics import Interval, PairedComparison

    return ModelsComparison(
        a="node 2", b="node 6", data="digits", split="test",
        interval_a=Interval(0.97, 0.9528, 0.9861, 0.95, 2000), interval_b=Interval(0.9, 0.8694, 0.9306, 0.95, 2000),
        paired=PairedComparison("top1", 0.97, 0.9, Interval(-0.07, -0.0972, -0.0444, 0.95, 2000), 1.4e-07,
                                "exact McNemar", 360, (27, 2)),
        seed=0)


def test_history_graph_with_a_branch_and_a_marked_node(snap_compare):
    # The cursor starts on the head (5); down moves to 4, m marks it.
    assert snap_compare(HistorySnapshotApp(), press=["down", "m"], terminal_size=(80, 24))


def test_compare_screen(snap_compare):
    assert snap_compare(CompareSnapshotApp(), terminal_size=(80, 24))
