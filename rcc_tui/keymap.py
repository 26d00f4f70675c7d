"""Key bindings from a TOML file: binding id → key(s), handed to ``App.set_keymap``.

The file (default ``$XDG_CONFIG_HOME/rcc-tui/keymap.toml``, else ``~/.config/rcc-tui/keymap.toml``,
read when it exists) has one table::

    [keys]
    "history.checkout" = "enter,o"     # comma-separated keys replace the binding's defaults
    history.label = "L"                # unquoted dotted ids work too

Binding ids defined by the widgets and screens of rcc_tui (the app's own ids are listed in
``rcc_tui/app.py`` and on the help screen, ``?``):

    history.checkout     enter,o   check out the node under the cursor (rollback; branch from it)
    history.label        l         label / annotate the node under the cursor
    history.mark         m         mark a node; m on a second node compares the two
    history.clear_mark   escape    forget the mark
    history.cursor_up    up,k      previous (newer) node
    history.cursor_down  down,j    next (older) node
    label.save           ctrl+o    save the label (label dialog; enter in a field saves too)
    label.cancel         escape    close the label dialog without saving
    compare.close        escape,q  close the comparison
    help.close           escape,q,question_mark,f1   close the help screen
    search.start         s         start (or resume) the study with the form's settings
    search.stop          x         stop the search (running trials are recorded as failed)
    search.apply         a         apply the trial under the cursor as a new node
    search.close         escape    close the search screen (stops a running search)

Key names are Textual's: ``ctrl+p``, ``f1``, ``question_mark`` or ``?``, ``enter``, a letter.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

from rcc.errors import RccError

# The ids in the table above (tests check it against the widgets' BINDINGS).
WIDGET_BINDING_IDS = (
    "history.checkout", "history.label", "history.mark", "history.clear_mark", "history.cursor_up",
    "history.cursor_down", "label.save", "label.cancel", "compare.close", "help.close",
    "search.start", "search.stop", "search.apply", "search.close",
)
KEY = re.compile(r"^[^\s,]+$")
BINDING_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class KeymapError(RccError):
    """A keymap file that cannot be read or holds a bad entry."""


def default_keymap_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "rcc-tui" / "keymap.toml"


def load_keymap(path: str | None, known_ids: Iterable[str] | None = None) -> dict[str, str]:
    """Binding id → keys from ``path`` (None: the default file if it exists, else no overrides).

    With ``known_ids``, an id that no binding has is refused (with the closest known id).
    """
    if path is None:
        file = default_keymap_path()
        if not file.is_file():
            return {}
    else:
        file = Path(path).expanduser()
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeymapError(f"keymap file {str(file)!r} does not exist") from None
    except OSError as exc:
        raise KeymapError(f"keymap file {str(file)!r} cannot be read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise KeymapError(f"keymap file {str(file)!r} is not valid TOML: {exc}") from None
    for key in data:
        if key != "keys":
            raise KeymapError(f"keymap file {str(file)!r}: key {key!r} is unknown; allowed: a [keys] table")
    table = data.get("keys", {})
    if not isinstance(table, dict):
        raise KeymapError(f"keymap file {str(file)!r}: key 'keys' is not a table; allowed: [keys] with "
                          f"\"binding.id\" = \"key,key\" lines")
    known = sorted(set(known_ids)) if known_ids is not None else None
    keymap: dict[str, str] = {}
    for binding_id, value in _flatten(table):
        where = f"keymap file {str(file)!r}: key {binding_id!r}"
        if not BINDING_ID.match(binding_id):
            raise KeymapError(f"{where} is not a binding id; allowed: letters, digits, '_', '.', '-'")
        if known is not None and binding_id not in known:
            close = difflib.get_close_matches(binding_id, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise KeymapError(f"{where} is no binding's id; {hint}allowed: {', '.join(known)}")
        if not isinstance(value, str):
            raise KeymapError(f"{where}: {value!r} is not a string; allowed: keys such as \"enter,o\"")
        keys = [k.strip() for k in value.split(",")]
        if not value.strip() or not all(k and KEY.match(k) for k in keys):
            raise KeymapError(f"{where}: {value!r} is not a key list; allowed: key names joined by commas, "
                              f"such as \"enter,o\" or \"ctrl+p\"")
        keymap[binding_id] = ",".join(keys)
    return keymap


def _flatten(table: dict, prefix: str = "") -> list[tuple[str, object]]:
    """``history.checkout = "c"`` unquoted is a nested table in TOML: read it as the dotted id."""
    out: list[tuple[str, object]] = []
    for key, value in table.items():
        name = f"{prefix}{key}"
        out.extend(_flatten(value, name + ".") if isinstance(value, dict) else [(name, value)])
    return out
