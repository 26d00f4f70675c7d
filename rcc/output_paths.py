"""Outputs are checked before any work starts: a long run must never find out at its end
that it cannot write its result.

``check_output_dir`` refuses a directory that exists and is not empty (unless ``force``), a
path that is a file, and a path under a regular file or an unwritable folder;
``check_output_file`` refuses a file path that is a directory or cannot be created.
"""

from __future__ import annotations

import os
from pathlib import Path

from rcc.errors import RccError


class OutputError(RccError):
    """An output path that cannot receive what a command would write."""


def _first_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _check_creatable(path: Path, what: str, shown: str) -> None:
    """Every missing part of ``path`` can be made: its nearest existing ancestor is a writable folder."""
    # An existing directory is checked itself; a file (existing or not) by the folders above it, so
    # a file that exists may be overwritten where its folder is writable.
    ancestor = _first_existing(path if path.is_dir() else path.parent)
    if not ancestor.is_dir():
        raise OutputError(f"{what} {shown!r} lies under {str(ancestor)!r}, which is a file; "
                          f"allowed: a path whose parent folders are folders")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {shown!r} cannot be created: {str(ancestor)!r} is not writable; "
                          f"allowed: a path in a folder you can write to")


def check_output_dir(path: str | Path, what: str = "output directory", force: bool = False) -> Path:
    """``path`` as a directory a command may fill: new, empty, or (with ``force``) any directory."""
    shown = str(path)
    if not shown.strip():
        raise OutputError(f"{what} {shown!r} is empty; allowed: a directory path")
    target = Path(path).expanduser()
    if target.exists():
        if not target.is_dir():
            raise OutputError(f"{what} {shown!r} is a file; allowed: a new or empty directory")
        if not force and any(target.iterdir()):
            raise OutputError(f"{what} {shown!r} exists and is not empty; allowed: a new or empty directory "
                              f"(or --force to write into it)")
    _check_creatable(target, what, shown)
    return target


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """``path`` as a file a command may (over)write: not a directory, its folders creatable."""
    shown = str(path)
    if not shown.strip():
        raise OutputError(f"{what} {shown!r} is empty; allowed: a file path")
    target = Path(path).expanduser()
    if target.is_dir():
        raise OutputError(f"{what} {shown!r} is a directory; allowed: a file path")
    _check_creatable(target, what, shown)
    return target
