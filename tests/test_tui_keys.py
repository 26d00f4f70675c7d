"""The key map: one meaning per key on the main screen, every key listed in the help and the README.

These read the bindings the classes define (no app runs): a collision is found before a person
presses the key. Keys that move or confirm inside the focused widget (enter, escape, arrows, the
vim keys of the history, space in the tree) mean the same thing everywhere in spirit and are the
widgets' own; every other key must do one thing wherever the focus is.
"""

from __future__ import annotations

from pathlib import Path

from textual.binding import Binding

from rcc_tui.app import RccApp, binding_ids
from rcc_tui.screens.main_screen import MainScreen
from rcc_tui.widgets.history_view import HistoryView
from rcc_tui.widgets.layer_tree import LayerTree

README = Path(__file__).resolve().parents[1] / "README.md"
# Keys whose meaning is the focused widget's: confirm, leave, move.
WIDGET_KEYS = {"enter", "escape", "up", "down", "left", "right", "k", "j", "space"}
MAIN_CONTEXT = (RccApp, MainScreen, LayerTree, HistoryView)  # what is on screen together


def bindings_of(cls) -> list[Binding]:
    return [b for klass in cls.__mro__ for b in vars(klass).get("BINDINGS", []) if isinstance(b, Binding) and b.id]


def test_no_key_means_two_things_on_the_main_screen():
    meanings: dict[str, set[str]] = {}
    for cls in MAIN_CONTEXT:
        for binding in bindings_of(cls):
            for key in binding.key.split(","):
                meanings.setdefault(key.strip(), set()).add(binding.action)
    clashes = {key: actions for key, actions in meanings.items() if len(actions) > 1 and key not in WIDGET_KEYS}
    assert clashes == {}
    # The ones the issue found: c was Cascade and Check out; 4 was the log while the 4th tab was Train.
    assert meanings["c"] == {"run_cascade"}
    assert [meanings[str(i)] for i in range(1, 5)] == [{"show_tab('compress')"}, {"show_tab('history')"},
                                                      {"show_tab('charts')"}, {"show_tab('train')"}]
    assert meanings["e"] == {"focus_editor"}  # a key for the editor


def test_the_tabs_are_the_digits_in_the_order_they_are_shown():
    from rcc_tui.screens.main_screen import TABS

    digits = {b.key: b.action for b in MainScreen.BINDINGS if b.key.isdigit()}
    assert [digits[str(i + 1)] for i in range(len(TABS))] == [f"show_tab('{name}')" for name in TABS]


def test_the_readme_lists_every_key_of_the_workbench():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Keys"):]
    section = section[:section.index("\n## ")]
    for cls in MAIN_CONTEXT:
        for binding in bindings_of(cls):
            assert f"`{binding.id}`" in section, binding.id
    assert set(binding_ids()) >= {b.id for cls in MAIN_CONTEXT for b in bindings_of(cls)}
