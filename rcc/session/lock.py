"""One writer per session: an exclusive ``flock`` on ``session.lock``, released by the kernel on exit.

A crashed or killed process can never leave a stale lock behind (the kernel drops the lock
with the file descriptor), and a second process gets a clear "in use" error instead of
writing into the same database and store.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from rcc.errors import RccError

LOCK_FILE = "session.lock"


class SessionInUse(RccError):
    """Another process holds the session open for writing."""


class SessionLock:
    def __init__(self, directory: Path):
        self.path = directory / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SessionInUse(f"session {str(self.path.parent)!r} is in use by another process (pid {holder}); "
                               f"close it there, or open it read-only (rcc-tui session show/log/graph)") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
