"""The command palette (ctrl+p): every action of the workbench, each node's checkout / label /
compare, and the themes."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider


class RccCommands(Provider):
    """Commands from the main screen (they change with the session's nodes) and the app."""

    def _commands(self) -> list[tuple[str, str, Callable[[], object]]]:
        from rcc_tui.screens.main_screen import MainScreen

        app = self.app
        items: list[tuple[str, str, Callable[[], object]]] = []
        main = next((screen for screen in app.screen_stack if isinstance(screen, MainScreen)), None)
        if main is not None:
            items.extend(main.commands())
        items.append(("Help", "keys and what the panes show (?)", app.action_help))  # type: ignore[attr-defined]
        for name in sorted(app.available_themes):
            items.append((f"Theme: {name}", "switch the colour theme", partial(_set_theme, app, name)))
        items.append(("Quit", "asks first while an op runs (q)", app.action_quit))
        return items

    async def discover(self) -> Hits:
        for name, help_text, callback in self._commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, text=name, help=help_text)


def _set_theme(app, name: str) -> None:
    app.theme = name
