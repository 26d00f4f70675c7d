"""``RccApp``: the Textual workbench over one session.

The app takes a *session factory* (``rcc_tui.workbench_session``): by default one that creates
or opens an ``rcc.session.Session``; tests hand it a fake. The first frame is drawn before
anything heavy is imported: the factory runs in a job of the app's one job runner
(``app.jobs``, ``rcc_tui.workers``) after the first paint, while the layer tree shows a loading
state. Every piece of background work is a job of that runner. Keys are ``Binding``s with ids,
so a TOML keymap (``rcc_tui.keymap``) can rebind any of them; every action is also in the
command palette.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from textual.app import App
from textual.binding import Binding

from rcc_tui.commands import RccCommands
from rcc_tui.screens.main_screen import MainScreen
from rcc_tui.screens.quit_screen import QuitScreen
from rcc_tui.workbench_session import SessionFactory, creating, opening
from rcc_tui.workers import BACKGROUND, JobRunner

DEFAULT_THEME = "rcc-dark"


@dataclass(frozen=True)
class AppConfig:
    session_dir: str | None  # None: a new session under the sessions home
    new: bool  # create the session (else open an existing one)
    model: str
    data: str
    device: str


class RccApp(App):
    """The rcc-tui workbench."""

    TITLE = "rcc-tui"
    CSS_PATH = "app.tcss"
    COMMANDS = App.COMMANDS | {RccCommands}
    BINDINGS: ClassVar = [
        Binding("q", "quit", "Quit", id="rcc.quit"),
        Binding("question_mark,f1", "help", "Help", id="rcc.help"),
        Binding("ctrl+c", "confirm_quit", "Quit", show=False, id="rcc.interrupt"),
    ]
    deterministic: bool = False  # snapshot tests: no wall-clock times, durations or full paths on screen

    def __init__(self, session_dir: str | None = None, new: bool = True, model: str = "rcc-mini",
                 data: str = "digits", device: str = "auto", theme: str | None = None,
                 keymap_path: str | None = None, session_factory: SessionFactory | None = None) -> None:
        super().__init__()
        self.config = AppConfig(session_dir=session_dir, new=new, model=model, data=data, device=device)
        self.requested_theme = theme
        self.keymap_path = keymap_path
        self.jobs = JobRunner(self)  # all background work of the app
        if session_factory is not None:
            self.session_factory = session_factory
            self.opening_title, self.opening_text = "opening the session", "opening the session"
        elif session_dir is None or new:
            self.session_factory = creating(model, data, device, session_dir)
            self.opening_title = f"loading {model} on {data}"
            self.opening_text = f"creating a session: {model} on {data}"
        else:
            self.session_factory = opening(session_dir, device)
            self.opening_title = "opening the session"
            self.opening_text = f"opening session {session_dir}"
        self.opened_directory: str | None = None  # the session's directory once open (printed on exit)
        self._quitting = False

    def get_default_screen(self) -> MainScreen:
        return MainScreen()

    @property
    def main(self) -> MainScreen:
        return next(screen for screen in self.screen_stack if isinstance(screen, MainScreen))

    @property
    def session(self):
        """The open session: the engine's ``rcc.session.Session`` (or the fake a test gave); None until it is
        loaded, and after quitting."""
        opened = self.main.session
        return getattr(opened, "engine", None) or opened

    def on_mount(self) -> None:
        self._load_themes()
        self._load_keymap()

    def _load_themes(self) -> None:
        from rcc.errors import RccError
        from rcc_tui.themes import load_themes

        try:
            themes = load_themes()
        except RccError as error:
            self.notify(str(error), title="themes", severity="error")
            themes = []
        for theme in themes:
            self.register_theme(theme)
        wanted = self.requested_theme or os.environ.get("TEXTUAL_THEME") or DEFAULT_THEME
        if wanted not in self.available_themes:
            self.notify(f"theme {wanted!r} is unknown; allowed: {', '.join(sorted(self.available_themes))}",
                        title="theme", severity="error")
            wanted = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"
        self.theme = wanted

    def _load_keymap(self) -> None:
        from rcc.errors import RccError
        from rcc_tui.keymap import load_keymap

        try:
            keymap = load_keymap(self.keymap_path, known_ids=binding_ids())
        except RccError as error:
            self.notify(str(error), title="keymap", severity="error")
            return
        if keymap:
            self.set_keymap(keymap)

    # -- actions ---------------------------------------------------------------------------
    def action_help(self) -> None:
        from rcc_tui.screens.help_screen import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def _running_question(self) -> str | None:
        """What quitting would stop, as a question; None when nothing worth asking about runs."""
        job = self.jobs.session_job
        if job is not None and job.kind != "open":
            return f"{job.title} is running.\nCancel it and quit? The session stays as it was before it."
        if any(job.kind == "search" for job in self.jobs.running(BACKGROUND)):
            return "A search is running.\nStop it and quit? Finished trials stay in its study."
        return None

    async def action_quit(self) -> None:
        """Quit; while an op or a search runs, ask first (quitting cancels it, the session stays as before)."""
        question = self._running_question()
        if question:
            await self._ask_to_quit(question)
        else:
            await self.shut_down()

    async def action_confirm_quit(self) -> None:
        """ctrl+c: always ask (it is pressed by reflex), unless a dialog is open already."""
        if isinstance(self.screen, QuitScreen):
            return
        await self._ask_to_quit(self._running_question() or "Quit rcc-tui?")

    async def _ask_to_quit(self, question: str) -> None:
        if isinstance(self.screen, QuitScreen):
            return

        def answered(yes: bool | None) -> None:
            if yes:  # on the app's own message pump, not the screen's that ran this callback
                self.call_later(self.shut_down)

        await self.push_screen(QuitScreen(question), answered)

    async def shut_down(self) -> None:
        """Cancel every job (an op, a search), wait for them to stop, close the session, exit."""
        if self._quitting:
            return
        self._quitting = True
        # Ask everything to stop at once, then wait: a search and an op stop side by side.
        if any(job.kind == "search" for job in self.jobs.cancel_all()):
            self.main.set_status("quitting: stopping the search (at its next trial or batch)…")
        await self.main.shut_down()
        await self.jobs.wait()  # a search thread must not outlive the app
        self.exit()

    def notify(self, message: str, *args, **kwargs) -> None:
        # Messages carry user input, paths and error text: "[x]" must show as typed, not as markup.
        kwargs.setdefault("markup", False)
        if not self._quitting:  # no toasts for what the cancelled op reports while the app exits
            super().notify(message, *args, **kwargs)


def binding_ids() -> set[str]:
    """Every binding id of the app's screens and widgets: what a keymap file may rebind."""
    from rcc_tui.screens.compare_screen import CompareScreen
    from rcc_tui.screens.help_screen import HelpScreen
    from rcc_tui.screens.label_screen import LabelScreen
    from rcc_tui.screens.search_screen import SearchScreen
    from rcc_tui.widgets.history_view import HistoryView
    from rcc_tui.widgets.layer_tree import LayerTree

    ids = set()
    for cls in (RccApp, MainScreen, QuitScreen, LayerTree, HistoryView, LabelScreen, CompareScreen, HelpScreen,
                SearchScreen):
        for klass in cls.__mro__:
            for binding in vars(klass).get("BINDINGS", []):
                if isinstance(binding, Binding) and binding.id:
                    ids.add(binding.id)
    return ids
