"""The help screen: every key binding of the screen beneath (as the keymap has them now) and a
short guide to the workflow (layer tree → editor → run → history)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

if TYPE_CHECKING:
    from textual.app import App
    from textual.dom import DOMNode
    from textual.screen import Screen

GUIDE = "\n".join((
    "[b]Workflow[/b]",
    " 1. [b]Layer tree[/b] (left, [b]t[/b]): expand towers and blocks; select layers one by one ([b]space[/b]), "
    "or by pattern ([b]/[/b]). Each layer shows its shape, what it stores, sparsity and rank. [b]enter[/b] on a "
    "layer (or [b]e[/b] anywhere) goes to the editor.",
    " 2. [b]Layer editor[/b] (tab [b]1[/b]): set sparsity, pruning method and pattern, rank, correction and "
    "lock for the targets; what they would store is shown as you type; a bad value is refused inline.",
    " 3. [b]Run panel[/b]: one stage ([b]r[/b]) or the whole cascade ([b]c[/b]); the status bar at the bottom "
    "shows the phase, its percentage and an ETA. [b]x[/b] cancels between layers; the session stays as it was.",
    " 4. [b]History[/b] (tab [b]2[/b]): every run makes a node (one that changed no tensor makes none). "
    "[b]enter[/b] checks out a node (the next run branches), [b]l[/b] labels, [b]m[/b] on two nodes compares; "
    "the line under the table has the exact figures of the node under the cursor.",
    " 5. [b]Sensitivity[/b] ([b]v[/b]): compress each target layer alone and colour the tree by how far the "
    "predictions drift (green → red). [b]Charts[/b] (tab [b]3[/b]): accuracy and stored bytes of the run.",
    " 6. [b]Train[/b] ([b]T[/b], tab [b]4[/b]): distil the dense root into the current node, keeping its "
    "masks and ranks. [b]Search[/b] ([b]s[/b]): an Optuna study of per-layer settings; apply a trial as a node.",
    "",
    "Digits switch tabs only outside text fields. Sizes are what the compressed export stores (bytes). "
    "Everything you do is a session op: [b]rcc-tui replay SESSION[/b] redoes it headlessly. Keys can be "
    "changed in ~/.config/rcc-tui/keymap.toml, by the binding ids listed above.",
))


def _section(node: DOMNode, app: App) -> str:
    if node is app:
        return "everywhere"
    title = getattr(node, "BORDER_TITLE", None) or getattr(node, "border_title", None)
    if title:
        return str(title).lower()
    words = re.findall(r"[A-Z][a-z0-9]*|[a-z0-9]+", type(node).__name__)
    return " ".join(words).lower() or type(node).__name__


def binding_rows(app: App, screen: Screen) -> list[tuple[str, str, str, str]]:
    """(where, keys, what, binding id) for every binding of ``screen`` and its widgets and the app,
    with the app's keymap applied; hidden bindings without an id (Textual's widgets' cursor
    keys) are left out."""
    keymap = getattr(app, "_keymap", {}) or {}
    nodes: list[DOMNode] = [app, screen, *screen.walk_children()]
    seen_classes: set[type] = set()
    rows: list[tuple[str, str, str, str]] = []
    for node in nodes:
        if type(node) in seen_classes:
            continue
        seen_classes.add(type(node))
        bindings = node._bindings.copy()
        if keymap:
            bindings.apply_keymap(keymap)
        everything = node is app or node is screen
        grouped: dict[tuple[str, str], list[str]] = {}
        described: dict[tuple[str, str], tuple[str, str]] = {}
        for key_bindings in bindings.key_to_bindings.values():
            for binding in key_bindings:
                # Textual's widgets carry many hidden, id-less bindings (cursor keys and the
                # like); ours all have ids. The app's and the screen's are all listed.
                if not binding.description or binding.system or not (binding.show or binding.id or everything):
                    continue
                ident = (binding.id or "", binding.action)
                grouped.setdefault(ident, []).append(app.get_key_display(binding))
                described[ident] = (binding.description, binding.id or "")
        for ident, keys in grouped.items():
            description, binding_id = described[ident]
            rows.append((_section(node, app), " / ".join(dict.fromkeys(keys)), description, binding_id))
    return rows


class HelpScreen(ModalScreen[None]):
    """Key bindings (read from the app, so a keymap change shows) and the workflow guide."""

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    HelpScreen #help-dialog {
        width: 100;
        max-width: 95%;
        height: 90%;
        border: thick $primary;
        border-title-style: bold;
        background: $surface;
        padding: 0 1;
    }
    HelpScreen #help-guide {
        height: auto;
    }
    HelpScreen #help-keys {
        height: auto;
        margin-bottom: 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark,f1", "close", "Close", id="help.close"),
    ]

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.rows: list[tuple[str, str, str, str]] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="help-dialog") as dialog:
            dialog.border_title = "Help"
            dialog.border_subtitle = "escape closes"
            with VerticalScroll():
                yield DataTable(id="help-keys", cursor_type="row", zebra_stripes=True)
                yield Static(GUIDE, id="help-guide")

    def on_mount(self) -> None:
        stack = self.app.screen_stack
        beneath = stack[-2] if len(stack) > 1 and stack[-1] is self else stack[-1]
        self.rows = binding_rows(self.app, beneath)
        table = self.query_one("#help-keys", DataTable)
        table.add_columns("where", "keys", "action", "id")
        previous = None
        for where, keys, description, binding_id in self.rows:
            table.add_row(Text(where if where != previous else "", style="bold"), Text(keys, style="bold"),
                          Text(description), Text(binding_id, style="dim"))
            previous = where
        self.query_one(VerticalScroll).focus()

    def action_close(self) -> None:
        self.dismiss(None)
