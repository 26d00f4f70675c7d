"""Where rcc-tui keeps its data: the sessions home and the store that sessions share.

    $RCC_DATA_HOME, else $XDG_DATA_HOME/rcc-tui, else ~/.local/share/rcc-tui
        sessions/   new sessions, unless told otherwise ($RCC_SESSIONS_DIR)
        store/      blobs shared by sessions (rcc.session.store): hard links, so the kernel's
                    link count is each blob's reference count ($RCC_SHARED_STORE=off: none)
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "rcc-tui"


def data_home() -> Path:
    explicit = os.environ.get("RCC_DATA_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share") / APP


def sessions_home() -> Path:
    """Where sessions live unless told otherwise: $RCC_SESSIONS_DIR or the data home's ``sessions``."""
    explicit = os.environ.get("RCC_SESSIONS_DIR")
    return Path(explicit).expanduser() if explicit else data_home() / "sessions"


def shared_store_root() -> Path | None:
    """The shared store's folder, or None when sharing is off ($RCC_SHARED_STORE=off)."""
    if os.environ.get("RCC_SHARED_STORE", "").strip().lower() in ("off", "0", "no", "false"):
        return None
    return data_home() / "store"
