"""How a person names a session: listing the sessions home, lookup by name or path, the latest.

``rcc-tui session ls`` lists the sessions home; ``rcc-tui open NAME`` takes a name from that list
(or a path); the app creates new sessions here. Where the sessions home is, is decided once, by
``rcc.session.home.sessions_home`` (re-exported here).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from rcc.errors import RccError
from rcc.session.home import sessions_home  # the one rule for where sessions live ($RCC_SESSIONS_DIR, data home)

DEMO_MODEL = "rcc-mini"
DEMO_DATA = "digits"


@dataclass(frozen=True)
class SessionEntry:
    """One session as ``session ls`` lists it."""

    name: str  # the directory's name: what `rcc-tui open NAME` takes
    path: Path
    model: str
    data: str
    nodes: int
    head: int | None
    head_eval: float | None  # the head's primary metric on the eval split
    head_params: int | None
    last_change: float | None  # when its newest node was made (seconds since the epoch)
    eval_split: str = ""  # the split ``head_eval`` was measured on ('' before the first op)

    def head_eval_text(self) -> str:
        """``val 0.9722``: the head's eval metric named by its split (``–`` when unmeasured)."""
        return "–" if self.head_eval is None else f"{self.eval_split} {self.head_eval:.4f}".strip()

    @property
    def is_demo(self) -> bool:
        return self.model == DEMO_MODEL and self.data == DEMO_DATA

    def describe(self) -> str:
        """``20250101-101010 (rcc-mini on digits, 3 nodes, last change 2025-01-01 10:12)``."""
        when = "" if self.last_change is None else \
            f", last change {dt.datetime.fromtimestamp(self.last_change):%Y-%m-%d %H:%M}"
        return f"{self.name} ({self.model} on {self.data}, {self.nodes} node{'s' if self.nodes != 1 else ''}{when})"


def read_entry(directory: Path) -> SessionEntry:
    """A session's listing entry, read without its write lock."""
    from rcc.session.session import Session

    with Session.open(directory, read_only=True) as session:
        nodes = session.nodes()
        head = next((n for n in nodes if n.id == session.head), None)
        return SessionEntry(
            name=directory.name, path=directory, model=session.setting("model") or "",
            data=session.setting("data") or "", nodes=len(nodes), head=session.head,
            head_eval=None if head is None else head.eval_metric,
            head_params=None if head is None else head.params,
            last_change=max((n.created for n in nodes), default=None), eval_split=session.eval_split)


def list_sessions(root: Path | None = None) -> list[SessionEntry]:
    """Every session directly under ``root`` (default: the sessions home), by name."""
    from rcc.session.session import is_session

    root = root or sessions_home()
    if not root.is_dir():
        return []
    entries = []
    for directory in sorted(p for p in root.iterdir() if is_session(p)):
        try:
            entries.append(read_entry(directory))
        except RccError:  # a damaged session is left out of the list, not a reason to fail it
            continue
    return entries


def latest_session(root: Path | None = None, demo_only: bool = False) -> SessionEntry | None:
    """The session changed most recently (of the demo's model and data when ``demo_only``), or None."""
    entries = [e for e in list_sessions(root) if not demo_only or e.is_demo]
    return max(entries, key=lambda e: (e.last_change or 0.0, e.name), default=None)


def find_session(name_or_path: str, root: Path | None = None) -> Path:
    """A session directory from a path, or from a name as ``session ls`` prints it."""
    from rcc.session.session import is_session

    path = Path(name_or_path).expanduser()
    if is_session(path):
        return path
    root = root or sessions_home()
    named = root / name_or_path
    if os.sep not in name_or_path and is_session(named):
        return named
    names = sorted(p.name for p in root.iterdir() if is_session(p)) if root.is_dir() else []
    shown = ", ".join(names[-5:]) if names else "none yet"
    raise RccError(f"{name_or_path!r} is not a session; allowed: a session directory (it holds session.db) or a "
                   f"name from `rcc-tui session ls` (in {root}: {shown})")


def new_session_dir(root: Path | None = None) -> Path:
    """A new directory under ``root`` (default: the sessions home), named by the time."""
    home = root or sessions_home()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        candidate = home / (stamp if i == 0 else f"{stamp}-{i}")
        if not candidate.exists():
            return candidate
    raise RccError(f"no free session directory name under {str(home)!r}; allowed: fewer than 1000 a second")


def reopen_command(directory: Path, root: Path | None = None) -> str:
    """The shortest command that opens ``directory`` again: its name when it lives in the sessions home."""
    import shlex

    home = (root or sessions_home()).expanduser().resolve()
    path = directory.expanduser().resolve()
    word = path.name if path.parent == home else str(path)
    return f"rcc-tui open {shlex.quote(word)}"
