"""The session the app works on, behind one small interface, and the factories that make it.

``RccApp`` takes a *session factory*: ``factory(progress, cancel) -> WorkbenchSession``, called
in a worker thread after the first frame. The real factories create or open an
``rcc.session.Session`` and wrap it in ``LiveSession``; tests hand the app a fake with the same
surface (``tests/fake_session.py``), so screens and widgets are tested without a model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rcc.eval.encode import CancelCheck
    from rcc.session.ops import Op
    from rcc.session.progress import ProgressFn
    from rcc.session.session import OpOutcome, Session
    from rcc_tui.session_view import SessionView


class WorkbenchSession(Protocol):
    """What the app asks of a session (``rcc.session.Session`` wrapped by ``LiveSession``, or a fake)."""

    directory: Path

    @property
    def head(self) -> int | None: ...

    @property
    def engine(self) -> Session | None:
        """The engine's session, for use cases that need its live model (scans); None for a fake."""

    def apply(self, op: Op, progress: ProgressFn | None = None, cancel: CancelCheck | None = None) -> OpOutcome: ...

    def view(self, layers: tuple | None = None, with_state: bool = True,
             previous: SessionView | None = None) -> SessionView: ...

    def close(self) -> None: ...


SessionFactory = Callable[["ProgressFn", "CancelCheck"], WorkbenchSession]


class LiveSession:
    """An open ``rcc.session.Session`` as the app sees it."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self.directory = session.directory

    @property
    def engine(self) -> Session:
        return self._session

    @property
    def head(self) -> int | None:
        return self._session.head

    def apply(self, op: Op, progress: ProgressFn | None = None, cancel: CancelCheck | None = None) -> OpOutcome:
        return self._session.apply(op, progress=progress, cancel=cancel)

    def view(self, layers: tuple | None = None, with_state: bool = True,
             previous: SessionView | None = None) -> SessionView:
        from rcc_tui.session_view import read_view

        return read_view(self._session, layers=layers, with_state=with_state, previous=previous)

    def close(self) -> None:
        self._session.close()


def creating(model: str, data: str, device: str, directory: str | None = None) -> SessionFactory:
    """A factory creating a session on ``model`` and ``data`` (in a new directory of the sessions home by default)."""

    def make(progress: ProgressFn, cancel: CancelCheck) -> WorkbenchSession:
        from rcc.services.sessions import new_session_dir
        from rcc.session.session import Session

        return LiveSession(Session.create(directory or new_session_dir(), model=model, data=data, device=device,
                                          progress=progress, cancel=cancel))

    return make


def opening(directory: str, device: str) -> SessionFactory:
    """A factory opening the session in ``directory`` at its head."""

    def make(progress: ProgressFn, cancel: CancelCheck) -> WorkbenchSession:
        from rcc.session.session import Session

        return LiveSession(Session.open(directory, device=device, progress=progress))

    return make
