"""Widgets and screens of the app, each in a minimal App (``App.run_test``), plus themes and keymaps."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Input, Static

from rcc.session.compare import LayerDiff, LayerForm, MetricDiff, NodeComparison
from rcc.session.graph import NodeRecord
from rcc.session.lanes import graph_rows
from rcc_tui.keymap import KeymapError, load_keymap
from rcc_tui.screens.compare_screen import CompareScreen
from rcc_tui.screens.help_screen import HelpScreen
from rcc_tui.screens.label_screen import LabelScreen
from rcc_tui.themes import (
    BUILTIN_DIRECTORY,
    ThemeError,
    load_themes,
    parse_theme,
    theme_names,
)
from rcc_tui.widgets.charts import MetricChart, ParetoChart, pareto_front
from rcc_tui.widgets.history_view import HistoryView, human_count
from rcc_tui.workers import JobRunner


def node(i: int, parent: int | None, acc: float, params: int, kind: str = "run_stage", label: str = "",
         **metrics: float) -> NodeRecord:
    return NodeRecord(id=i, parent=parent, op_seq=i, op_kind=kind, created=1000.0 + i, params=params, label=label,
                      metrics={"val/primary": acc, "size/params": params, "size/bytes": 4 * params, **metrics},
                      eval_split="val")


# 1 ← 2 ← 3, 2 ← 6; 1 ← 4 ← 5: two branches off the root and one off node 2.
NODES = [node(1, None, 0.978, 23_439_105, "load_model"), node(2, 1, 0.970, 21_000_000),
         node(3, 2, 0.960, 19_900_000, label="nullu-k"), node(4, 1, 0.975, 22_000_000),
         node(5, 4, 0.950, 21_500_000), node(6, 2, 0.900, 15_000_000, "run_cascade")]


class HistoryApp(App):
    BINDINGS = [Binding("escape", "app_escape", "Escape", id="test.escape")]

    def __init__(self, nodes=NODES, head=5):
        super().__init__()
        self.nodes, self.head, self.events, self.escapes = nodes, head, [], 0

    def compose(self) -> ComposeResult:
        yield HistoryView(id="history")

    def on_mount(self) -> None:
        self.query_one(HistoryView).show(self.nodes, self.head)
        self.query_one(HistoryView).focus()

    def on_history_view_checkout_requested(self, message: HistoryView.CheckoutRequested) -> None:
        self.events.append(("checkout", message.node))

    def on_history_view_label_requested(self, message: HistoryView.LabelRequested) -> None:
        self.events.append(("label", message.node))

    def on_history_view_compare_requested(self, message: HistoryView.CompareRequested) -> None:
        self.events.append(("compare", message.a, message.b))

    def action_app_escape(self) -> None:
        self.escapes += 1


def cell_text(table: DataTable, row: int, column: str) -> str:
    value = table.get_cell_at((row, table.get_column_index(column)))
    return getattr(value, "plain", str(value))


# -- history view ----------------------------------------------------------------------

@pytest.mark.asyncio
async def test_history_draws_one_row_per_node_newest_first_with_the_lane_glyphs():
    app = HistoryApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        view = app.query_one(HistoryView)
        expected = graph_rows(NODES, 5)
        assert [cell_text(view, r, "id") for r in range(view.row_count)] == ["6", "5", "4", "3", "2", "1"]
        # The lanes, then the mark column's cell (blank: nothing marked).
        assert [cell_text(view, r, "graph") for r in range(view.row_count)] == \
            [e.prefix.rstrip() + " " for e in expected]
        assert cell_text(view, 1, "graph") == "│ ◉ "  # the head, on its own lane
        assert cell_text(view, 4, "graph") == "●─┼─┘ "  # node 2: its two children's lanes join it
        assert cell_text(view, 3, "label") == " nullu-k"
        # Stored bytes (4 per value here), and the change from the parent: 21M values → 19.9M values.
        assert cell_text(view, 3, "stored") == "79.6M"
        assert cell_text(view, 3, "change") == "−4.4M −5.2%"
        assert cell_text(view, 5, "change") == ""  # the root has no parent
        assert cell_text(view, 3, "eval") == "96.00"  # a percentage; 80 columns leave room for two decimals
        assert str(view.columns["eval"].label) == "val"  # the column is headed by the split it measures
        assert cell_text(view, 5, "op") == "load_model"
        assert "test" not in [c.value for c in view.columns]
        assert view.selected_node == 5  # the cursor starts on the head


@pytest.mark.asyncio
async def test_history_keys_post_checkout_label_and_compare_messages():
    app = HistoryApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        view = app.query_one(HistoryView)
        await pilot.press("enter")
        await pilot.press("down", "o")  # node 4
        await pilot.press("l")
        await pilot.press("m")
        await pilot.pause()
        assert view.marked_node == 4
        assert cell_text(view, 2, "graph").endswith("◆")
        await pilot.press("down", "down", "m")  # node 2: compare 4 with 2
        await pilot.pause()
        assert app.events == [("checkout", 5), ("checkout", 4), ("label", 4), ("compare", 4, 2)]
        assert view.marked_node is None
        assert cell_text(view, 2, "graph").endswith(" ")


@pytest.mark.asyncio
async def test_m_twice_on_one_node_unmarks_and_escape_clears_the_mark_or_passes_on():
    app = HistoryApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        view = app.query_one(HistoryView)
        await pilot.press("m", "m")
        assert view.marked_node is None
        await pilot.press("m", "escape")
        await pilot.pause()
        assert view.marked_node is None and app.escapes == 0  # the view used escape to clear its mark
        await pilot.press("escape")
        await pilot.pause()
        assert app.escapes == 1  # nothing marked: escape reaches the app
        await pilot.press("k", "k")  # vim keys move too
        assert view.selected_node == 6
        assert app.events == []


@pytest.mark.asyncio
async def test_show_keeps_the_cursor_on_the_same_node_when_nodes_arrive():
    app = HistoryApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        view = app.query_one(HistoryView)
        await pilot.press("down", "down")
        assert view.selected_node == 3
        view.show([*NODES, node(7, 5, 0.94, 14_000_000, label="small"),
                   node(8, 7, 0.93, 13_000_000, test__primary=0.9)], 8)
        await pilot.pause()
        assert view.selected_node == 3
        assert cell_text(view, 0, "id") == "8" and cell_text(view, 0, "graph") == "◉ "
        view.show(NODES[:2], 2)  # the node under the cursor is gone: go to the head
        await pilot.pause()
        assert view.selected_node == 2


class EarlyShowApp(App):
    def compose(self) -> ComposeResult:
        view = HistoryView()
        view.show(NODES, 3)  # before the view is mounted: drawn on mount
        yield view


@pytest.mark.asyncio
async def test_show_before_mount_draws_on_mount_and_a_theme_change_redraws():
    app = EarlyShowApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        view = app.query_one(HistoryView)
        assert view.row_count == 6 and view.selected_node == 3 and view.head == 3
        app.theme = "textual-light"
        await pilot.pause()
        assert view.row_count == 6 and view.selected_node == 3


@pytest.mark.asyncio
async def test_a_test_metric_column_appears_when_a_node_has_one():
    nodes = [*NODES[:2], NodeRecord(id=3, parent=2, op_seq=3, op_kind="run_stage", created=0.0, params=1,
                                    metrics={"val/primary": 0.5, "test/primary": 0.875}, eval_split="val")]
    app = HistoryApp(nodes, head=3)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        view = app.query_one(HistoryView)
        assert cell_text(view, 0, "test") == "87.50"
        assert cell_text(view, 1, "test") == "—"


@pytest.mark.asyncio
async def test_history_bindings_follow_the_keymap():
    app = HistoryApp()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.set_keymap({"history.checkout": "x", "history.mark": "space"})
        await pilot.press("x", "enter", "space", "down", "space")
        await pilot.pause()
        assert app.events == [("checkout", 5), ("compare", 5, 4)]


@pytest.mark.asyncio
async def test_an_empty_history_posts_nothing():
    app = HistoryApp([], head=None)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("enter", "l", "m")
        assert app.query_one(HistoryView).selected_node is None
        assert app.events == []


def test_human_counts():
    assert [human_count(v) for v in (19_900_000, 151_277_313, 2048, 999, 23_439_105, None)] == \
        ["19.9M", "151M", "2.05K", "999", "23.4M", "—"]


# -- charts ----------------------------------------------------------------------------

def test_pareto_front_keeps_points_no_other_point_beats_on_both_axes():
    points = [(10, 0.9), (8, 0.9), (8, 0.95), (12, 0.99), (5, 0.5), (9, 0.94), (12, 0.97)]
    # (10, .9) and (8, .9) lose to (8, .95); (9, .94) loses to (8, .95); (12, .97) to (12, .99).
    assert pareto_front(points) == [4, 2, 3]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.5)]) == [0]
    assert pareto_front([(3, 0.7), (3, 0.7)]) == [0, 1]  # equal points are both optimal
    assert pareto_front([(1, math.nan), (2, 0.5)]) == [1]
    assert pareto_front([(5, 0.8), (4, 0.8)]) == [1]  # same accuracy: fewer parameters wins


class ChartApp(App):
    def compose(self) -> ComposeResult:
        with Vertical():
            yield MetricChart()
            yield ParetoChart()


@pytest.mark.asyncio
async def test_metric_chart_takes_points_and_a_threshold_and_renders():
    app = ChartApp()
    async with app.run_test(size=(80, 30)) as pilot:
        chart = app.query_one(MetricChart)
        await pilot.pause()
        chart.start_run("cascade dare→nullu")
        chart.set_threshold(0.95)
        for step, value in enumerate([0.978, 0.97, 0.96, 0.955]):
            chart.add_point(step, value)
        await pilot.pause()
        assert chart.points == [(0, 0.978), (1, 0.97), (2, 0.96), (3, 0.955)]
        assert chart.threshold == 0.95
        assert "cascade dare→nullu" in chart.render().plain
        chart.start_run("cascade dare→nullu", second_label=MetricChart.STORED)  # stored bytes on the right axis
        chart.add_point(4, 0.96, second=93_756_420)
        chart.add_point(5, 0.95, second=93_633_540)
        plain = chart.render().plain
        assert "stored bytes" in plain
        right = re.findall(r"├(\d\S*)\s*$", plain, re.MULTILINE)  # the right axis's tick labels
        assert len(right) == 3 and len(set(right)) == 3 and right[-1] == "93.6M"
        steps = re.findall(r"\d+(?:\.\d+)?", plain.splitlines()[-2])
        assert steps and all(step.isdigit() for step in steps)  # steps are whole numbers
        for theme in ("textual-light", "ansi-dark"):
            app.theme = theme
            await pilot.pause()
            assert "threshold 0.95" in chart.render().plain
        chart.clear()
        chart.set_threshold(None)
        assert chart.points == [] and "no points yet" in chart.render().plain


@pytest.mark.asyncio
async def test_pareto_chart_marks_the_front_and_the_head():
    app = ChartApp()
    async with app.run_test(size=(80, 30)) as pilot:
        chart = app.query_one(ParetoChart)
        await pilot.pause()
        assert "no evaluated node yet" in chart.render().plain
        unevaluated = NodeRecord(id=9, parent=1, op_seq=9, op_kind="set_plan", created=0.0, params=5)
        chart.show([*NODES, unevaluated], 5)
        await pilot.pause()
        # 6 (15M, .90) → 3 (19.9M, .96) → 2 (21M, .97) → 4 (22M, .975) → 1 (23.4M, .978); 5 loses to 2.
        assert chart.front_nodes == [6, 3, 2, 4, 1]
        plain = chart.render().plain
        assert "◆" in plain and "◉" in plain and "#5" in plain and "93.8M" in plain and "stored bytes" in plain


# -- label dialog ----------------------------------------------------------------------

class ScreenApp(App):
    def __init__(self):
        super().__init__()
        self.results = []
        self.jobs = JobRunner(self)  # screens run their work as jobs of the app's runner

    def compose(self) -> ComposeResult:
        yield Static("main")


@pytest.mark.asyncio
async def test_label_screen_returns_label_and_note_on_enter():
    app = ScreenApp()
    async with app.run_test() as pilot:
        app.push_screen(LabelScreen(3, "old", "a note"), app.results.append)
        await pilot.pause()
        label = app.screen.query_one("#label-input", Input)
        label.value = ""
        await pilot.press(*"dare-50", "tab")
        await pilot.press(*" kept", "enter")
        await pilot.pause()
        assert app.results == [("dare-50", "a note kept")]
        assert not isinstance(app.screen, LabelScreen)


@pytest.mark.asyncio
async def test_label_screen_escape_returns_none():
    app = ScreenApp()
    async with app.run_test() as pilot:
        app.push_screen(LabelScreen(3, "", ""), app.results.append)
        await pilot.pause()
        await pilot.press("a", "escape")
        await pilot.pause()
        assert app.results == [None]


@pytest.mark.asyncio
async def test_label_screen_refuses_an_81_character_label_inline():
    app = ScreenApp()
    async with app.run_test() as pilot:
        screen = LabelScreen(3, "x" * 80, "")
        app.push_screen(screen, app.results.append)
        await pilot.pause()
        await pilot.press("end", "y", "enter")
        await pilot.pause()
        assert app.results == [] and app.screen is screen
        error = screen.query_one("#label-error", Static)
        assert "81 characters; allowed: at most 80" in str(error.render()) and error.display
        await pilot.press("backspace", "enter")
        await pilot.pause()
        assert app.results == [("x" * 80, "")]


# -- help screen -----------------------------------------------------------------------

class HelpApp(HistoryApp):
    BINDINGS = [Binding("question_mark", "help", "Help", id="app.help"),
                Binding("r", "run", "Run stage", id="app.run")]

    def action_help(self) -> None:
        self.push_screen(HelpScreen())


@pytest.mark.asyncio
async def test_help_screen_lists_the_active_bindings_and_follows_the_keymap():
    app = HelpApp()
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        rows = {row[3]: row for row in app.screen.rows}
        assert rows["app.run"][1:3] == ("r", "Run stage")
        assert rows["history.checkout"][0] == "history view"
        assert rows["history.checkout"][1] == "⏎ / o"  # Textual shows enter as ⏎, as the footer does
        assert {"history.label", "history.mark", "history.clear_mark", "app.help"} <= set(rows)
        assert "Workflow" in str(app.screen.query_one("#help-guide", Static).render())
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)
        app.set_keymap({"history.checkout": "c", "app.run": "ctrl+r"})
        await pilot.press("question_mark")
        await pilot.pause()
        rows = {row[3]: row for row in app.screen.rows}
        assert rows["history.checkout"][1] == "c"
        assert rows["app.run"][1] == "^r"
        await pilot.press("q")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


# -- compare screen (prepared comparison; the session-backed path is in test_session_compare) ----

def prepared_comparison() -> NodeComparison:
    a, b = NODES[1], NODES[5]
    return NodeComparison(
        a=2, b=6, node_a=a, node_b=b, common_ancestor=2,
        metrics=(MetricDiff("val/primary", 0.97, 0.9), MetricDiff("size/params", 21_000_000, 15_000_000),
                 MetricDiff("test/primary", None, 0.88)),
        layers=(LayerDiff("visual.proj", LayerForm("dense"), LayerForm("masked", mask_shape=(128, 128)),
                          ("proj", "proj_mask"), 65536, 81920, stored_a=65536, stored_b=34816),
                LayerDiff("visual.transformer.resblocks.0.mlp.c_fc", LayerForm("dense"),
                          LayerForm("factorised", rank=16), ("down", "up", "weight"), 262144, 40960)),
        tensors_changed=5, bytes_a=327680, bytes_b=122880)


@pytest.mark.asyncio
async def test_compare_screen_shows_metrics_and_layers_side_by_side():
    app = ScreenApp()
    async with app.run_test(size=(120, 30)) as pilot:
        app.push_screen(CompareScreen("/nonexistent", 2, 6, prepared_comparison()))
        await pilot.pause()
        metrics = app.screen.query_one("#compare-metrics", DataTable)
        layers = app.screen.query_one("#compare-layers", DataTable)
        assert [cell_text(metrics, 0, c) for c in ("metric", "a", "b", "diff")] == \
            ["val/primary", "0.9700", "0.9000", "-0.0700"]
        assert cell_text(metrics, 1, "diff") == "-6,000,000"
        assert [cell_text(metrics, 2, c) for c in ("a", "diff")] == ["—", "—"]
        assert [cell_text(layers, 1, c) for c in ("layer", "a", "b")] == \
            ["visual.transformer.resblocks.0.mlp.c_fc", "dense", "rank 16"]
        assert cell_text(layers, 0, "b") == "masked 128×128"
        # What the export stores (half of proj kept, its mask in bits), not the tensors in the store.
        assert cell_text(layers, 0, "bytes") == "65.5 KB → 34.8 KB"
        assert cell_text(layers, 1, "bytes") == "262 KB → 41.0 KB"  # no store read: the tensors' bytes
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, CompareScreen)


@pytest.mark.asyncio
async def test_compare_screen_reports_a_bad_session_without_crashing(tmp_path):
    app = ScreenApp()
    async with app.run_test() as pilot:
        screen = CompareScreen(str(tmp_path), 1, 2)
        app.push_screen(screen)
        for _ in range(300):  # the worker imports the engine (torch) first
            await pilot.pause(0.1)
            if screen.error is not None:
                break
        assert screen.error is not None and "is not a session" in screen.error
        assert app.screen is screen


# -- themes ----------------------------------------------------------------------------

def test_builtin_themes_load_and_each_registers_and_applies(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no user themes
    themes = load_themes()
    assert [t.name for t in themes] == ["rcc-ansi", "rcc-dark", "rcc-light"] == theme_names()
    by_name = {t.name: t for t in themes}
    assert by_name["rcc-ansi"].ansi and by_name["rcc-ansi"].primary == "ansi_blue"
    assert by_name["rcc-dark"].dark and not by_name["rcc-light"].dark

    async def run() -> None:
        app = ChartApp()
        async with app.run_test() as pilot:
            for theme in themes:
                app.register_theme(theme)
            for theme in themes:
                app.theme = theme.name
                await pilot.pause()
                assert app.current_theme is theme
                assert app.theme_variables["primary"]

    import asyncio

    asyncio.run(run())


def test_user_themes_are_added_and_may_replace_a_builtin(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    folder = tmp_path / "rcc-tui" / "themes"
    folder.mkdir(parents=True)
    (folder / "mine.toml").write_text('name = "mine"\nprimary = "#ff0000"\n')
    (folder / "dark.toml").write_text('name = "rcc-dark"\nprimary = "#00ff00"\n')
    (folder / "term.toml").write_text('name = "term"\nansi = true\nprimary = "ansi_red"\n')
    themes = {t.name: t for t in load_themes()}
    assert themes["mine"].primary == "#ff0000" and themes["rcc-dark"].primary == "#00ff00"
    assert len(themes) == 5
    # An ANSI theme gets the variables Textual's own CSS needs in ANSI mode.
    assert themes["term"].variables == {"ansi-background": "ansi_default", "ansi-foreground": "ansi_default"}

    async def run() -> None:
        app = HistoryApp()
        async with app.run_test() as pilot:
            app.register_theme(themes["term"])
            app.theme = "term"
            await pilot.pause()
            assert app.query_one(HistoryView).row_count == 6

    import asyncio

    asyncio.run(run())


@pytest.mark.parametrize("body, key", [
    ('name = "x"\nprimary = "#fff"\nprimery = "#000"\n', "primery"),
    ('name = "x"\nprimary = "#ggg"\n', "primary"),
    ('name = "x"\nprimary = "#fff"\nsurface = 3\n', "surface"),
    ('primary = "#fff"\n', "name"),
    ('name = "a b"\nprimary = "#fff"\n', "name"),
    ('name = "x"\nprimary = "#fff"\ndark = "yes"\n', "dark"),
    ('name = "x"\nprimary = "#fff"\ntext_alpha = 2\n', "text_alpha"),
    ('name = "x"\nprimary = "#fff"\n[variables]\nborder = "nope"\n', "variables.border"),
    ('name = "x"\nprimary = "#fff"\n[variables]\n"block-cursor-text-style" = "loud"\n',
     "variables.block-cursor-text-style"),
    ('name = "x"\nprimary = "#fff"\n[variables]\n"input-selection-background" = "#fff much"\n',
     "variables.input-selection-background"),
])
def test_a_bad_theme_file_gives_one_line_naming_file_and_key(tmp_path, body, key):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ThemeError) as error:
        parse_theme(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and repr(key) in message


def test_a_theme_file_that_is_not_toml_or_a_duplicate_name_is_refused(tmp_path):
    (tmp_path / "a.toml").write_text('name = "x"\nprimary = \n')
    with pytest.raises(ThemeError, match=r"a\.toml' is not valid TOML"):
        load_themes(tmp_path)
    (tmp_path / "a.toml").write_text('name = "x"\nprimary = "red"\n')
    (tmp_path / "b.toml").write_text('name = "x"\nprimary = "blue"\n')
    with pytest.raises(ThemeError, match=r"b\.toml': key 'name': 'x' is already the name"):
        load_themes(tmp_path)
    with pytest.raises(ThemeError, match="does not exist"):
        load_themes(tmp_path / "missing")


def test_theme_files_are_package_data():
    import tomllib
    from pathlib import Path

    assert sorted(p.name for p in BUILTIN_DIRECTORY.glob("*.toml")) == ["rcc-ansi.toml", "rcc-dark.toml",
                                                                       "rcc-light.toml"]
    root = Path(__file__).parents[1]
    assert BUILTIN_DIRECTORY == root / "themes"  # a checkout reads the top-level folder
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    assert "*.toml" in pyproject["tool"]["setuptools"]["package-data"]["rcc_tui.builtin_themes"]
    assert '"rcc_tui.builtin_themes": "themes"' in (root / "setup.py").read_text()


# -- keymap ----------------------------------------------------------------------------

def test_keymap_reads_binding_ids_and_keys(tmp_path):
    path = tmp_path / "keymap.toml"
    path.write_text('[keys]\n"history.checkout" = "enter, c"\nhistory.label = "L"\n"app.quit" = "ctrl+q"\n')
    assert load_keymap(str(path)) == {"history.checkout": "enter,c", "history.label": "L", "app.quit": "ctrl+q"}


def test_keymap_default_path_is_used_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert load_keymap(None) == {}
    (tmp_path / "rcc-tui").mkdir()
    (tmp_path / "rcc-tui" / "keymap.toml").write_text('[keys]\n"history.mark" = "space"\n')
    assert load_keymap(None) == {"history.mark": "space"}


@pytest.mark.parametrize("body, key", [
    ('[keys]\n"history.checkout" = 3\n', "history.checkout"),
    ('[keys]\n"history.checkout" = ""\n', "history.checkout"),
    ('[keys]\n"history.checkout" = "a b"\n', "history.checkout"),
    ('[keys]\n"history.checkout" = ["c"]\n', "history.checkout"),
    ('[bindings]\n"history.checkout" = "c"\n', "bindings"),
    ('keys = "c"\n', "keys"),
])
def test_a_bad_keymap_gives_one_line_naming_file_and_key(tmp_path, body, key):
    path = tmp_path / "keymap.toml"
    path.write_text(body)
    with pytest.raises(KeymapError) as error:
        load_keymap(str(path))
    message = str(error.value)
    assert "\n" not in message and str(path) in message and repr(key) in message


def test_a_keymap_that_is_not_toml_missing_or_naming_an_unknown_id_is_refused(tmp_path):
    path = tmp_path / "keymap.toml"
    path.write_text("[keys\n")
    with pytest.raises(KeymapError, match="is not valid TOML") as error:
        load_keymap(str(path))
    assert "\n" not in str(error.value)
    with pytest.raises(KeymapError, match="does not exist"):
        load_keymap(str(tmp_path / "missing.toml"))
    path.write_text('[keys]\n"history.chekout" = "c"\n')
    with pytest.raises(KeymapError, match="did you mean 'history.checkout'"):
        load_keymap(str(path), known_ids=["history.checkout", "history.label"])


def test_the_documented_widget_binding_ids_are_the_ones_the_widgets_define():
    from rcc_tui import keymap
    from rcc_tui.screens.search_screen import SearchScreen

    classes = (HistoryView, LabelScreen, CompareScreen, HelpScreen, SearchScreen)
    defined = {b.id for cls in classes for b in cls.BINDINGS}
    assert defined == set(keymap.WIDGET_BINDING_IDS)
    assert all(f"    {binding_id} " in keymap.__doc__ for binding_id in defined)


# -- import cost -------------------------------------------------------------------------

def test_widget_and_screen_modules_import_no_heavy_library():
    script = ("import sys\n"
              "import rcc_tui.widgets.history_view, rcc_tui.widgets.charts, rcc_tui.screens.compare_screen\n"
              "import rcc_tui.screens.label_screen, rcc_tui.screens.help_screen, rcc_tui.themes, rcc_tui.keymap\n"
              "heavy = [m for m in ('torch', 'transformers', 'open_clip', 'numpy', 'rcc.session.session')"
              " if m in sys.modules]\n"
              "print(heavy)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_editor_counts_a_channel_pattern_s_narrowed_partner_with_the_targets():
    from rcc.compression.plan import CompressionPlan
    from rcc.schema.layers import LayerInfo
    from rcc.services.edit_preview import preview_edit
    from rcc_tui.widgets.layer_editor import count_line

    layers = [LayerInfo("b.0.fc", "text", 0, "mlp_in", (16, 4), "b.0.fc.weight"),
              LayerInfo("b.0.proj", "text", 0, "mlp_out", (4, 16), "b.0.proj.weight")]
    preview = preview_edit(CompressionPlan(), layers, ["b.0.fc"],
                           {"sparsity": 0.5, "method": "magnitude", "pattern": "channel"})
    # Both layers lose half their hidden units: 2 · 64 values of 4 bytes → 2 · 32, no mask bits.
    assert count_line(preview, layers, ["b.0.fc"], {}, 1000) == (
        "targets + 1 narrowed 512 B → 256 B (−50%) · model 1.00 KB → 744 B (−26%)")
