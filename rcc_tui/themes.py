"""Themes as data: TOML files turned into Textual ``Theme`` objects.

The built-in themes live in ``themes/*.toml`` at the top of the repository (rcc-dark, rcc-light, rcc-ansi); a user
adds or overrides themes with files in ``$XDG_CONFIG_HOME/rcc-tui/themes/`` (or
``~/.config/rcc-tui/themes/``). A file's top-level keys are the fields of ``textual.theme.Theme``
(``name`` and ``primary`` required; colours as Textual parses them: ``#RRGGBB``, ``rgb(...)``,
CSS names, ``ansi_blue`` …; ``ansi = true`` for terminal-palette themes); an optional
``[variables]`` table overrides Textual's derived CSS variables (a colour with an optional
``NN%`` alpha, or text-style words for ``*-text-style``). Anything else is refused with one
line naming the file and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import fields
from pathlib import Path

from textual.color import Color, ColorParseError
from textual.css.constants import VALID_STYLE_FLAGS
from textual.theme import Theme

from rcc.errors import RccError



def _builtin_directory() -> Path:
    """``themes/`` at the top of a checkout (and an editable install), or its copy in a wheel."""
    packaged = Path(__file__).parent / "builtin_themes"  # setup.py installs themes/ there
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "themes"


BUILTIN_DIRECTORY = _builtin_directory()
COLOUR_KEYS = ("primary", "secondary", "warning", "error", "success", "accent", "foreground", "background",
               "surface", "panel", "boost")
BOOL_KEYS = ("dark", "ansi")
FLOAT_KEYS = {"luminosity_spread": (0.0, 1.0), "text_alpha": (0.0, 1.0)}
ALLOWED_KEYS = ("name", *COLOUR_KEYS, *BOOL_KEYS, *FLOAT_KEYS, "variables")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
VARIABLE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
ALPHA = re.compile(r"^\d{1,3}%$")
ANSI_VARIABLES = ("ansi-background", "ansi-foreground")

assert set(ALLOWED_KEYS) <= {f.name for f in fields(Theme)}  # Textual's Theme still has these fields


class ThemeError(RccError):
    """A theme file that cannot be read or holds a bad key or value."""


def user_theme_directory() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "rcc-tui" / "themes"


def _fail(path: Path, key: str, problem: str) -> ThemeError:
    return ThemeError(f"theme file {str(path)!r}: key {key!r}: {problem}")


def _colour(path: Path, key: str, value: object, alpha: bool = False) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, key, f"{value!r} is not a colour; allowed: a string such as \"#61AFEF\" or \"ansi_blue\"")
    parts = value.split()
    if len(parts) > (2 if alpha else 1) or (len(parts) == 2 and not ALPHA.match(parts[1])):
        raise _fail(path, key, f"{value!r} is not a colour; allowed: a colour"
                               f"{' optionally followed by an alpha such as 35%' if alpha else ''}")
    try:
        Color.parse(parts[0])
    except ColorParseError:
        raise _fail(path, key, f"{value!r} is not a colour; allowed: #RRGGBB, rgb(r,g,b), a CSS colour name "
                               f"or an ANSI name such as ansi_blue") from None
    return value


def _variables(path: Path, table: object) -> dict[str, str]:
    if not isinstance(table, dict):
        raise _fail(path, "variables", "is not a table; allowed: [variables] with name = \"value\" lines")
    out = {}
    for name, value in table.items():
        key = f"variables.{name}"
        if not VARIABLE.match(name):
            raise _fail(path, key, "is not a CSS variable name; allowed: lowercase words joined by '-'")
        if name.endswith("text-style"):
            words = value.split() if isinstance(value, str) else None
            if not words or any(w not in VALID_STYLE_FLAGS for w in words):
                raise _fail(path, key, f"{value!r} is not a text style; allowed: words from "
                                       f"{', '.join(sorted(VALID_STYLE_FLAGS))}")
            out[name] = value
        else:
            out[name] = _colour(path, key, value, alpha=True)
    return out


def parse_theme(path: str | Path) -> Theme:
    """The Theme a TOML file describes; ThemeError (one line, naming file and key) if it is bad."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ThemeError(f"theme file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ThemeError(f"theme file {str(path)!r} is not valid TOML: {exc}") from None
    for key in data:
        if key not in ALLOWED_KEYS:
            raise _fail(path, key, f"is unknown; allowed: {', '.join(ALLOWED_KEYS)}")
    for key in ("name", "primary"):
        if key not in data:
            raise _fail(path, key, "is missing; every theme needs a name and a primary colour")
    name = data["name"]
    if not isinstance(name, str) or not NAME.match(name):
        raise _fail(path, "name", f"{name!r} is not a theme name; allowed: letters, digits, '-', '_', '.'")
    kwargs: dict[str, object] = {"name": name}
    for key in COLOUR_KEYS:
        if key in data:
            kwargs[key] = _colour(path, key, data[key])
    for key in BOOL_KEYS:
        if key in data:
            if not isinstance(data[key], bool):
                raise _fail(path, key, f"{data[key]!r} is not a boolean; allowed: true or false")
            kwargs[key] = data[key]
    for key, (low, high) in FLOAT_KEYS.items():
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise _fail(path, key, f"{value!r} is out of range; allowed: a number from {low} to {high}")
            kwargs[key] = float(value)
    variables = _variables(path, data["variables"]) if "variables" in data else {}
    if kwargs.get("ansi"):
        # Textual's own CSS reads these in ANSI mode (its ansi-* themes set them); without them
        # the first screen fails with an undefined variable.
        for name in ANSI_VARIABLES:
            variables.setdefault(name, "ansi_default")
    if variables:
        kwargs["variables"] = variables
    return Theme(**kwargs)


def load_themes(directory: str | Path | None = None) -> list[Theme]:
    """Themes from ``directory``'s ``*.toml`` files, or (None) the built-in ones then the user's.

    A user theme with a built-in's name replaces it; two files of one directory naming the
    same theme are refused.
    """
    directories = [Path(directory)] if directory is not None else [BUILTIN_DIRECTORY, user_theme_directory()]
    themes: dict[str, Theme] = {}
    for folder in directories:
        if not folder.is_dir():
            if directory is not None:
                raise ThemeError(f"theme directory {str(folder)!r} does not exist")
            continue
        seen: dict[str, Path] = {}
        for path in sorted(folder.glob("*.toml")):
            theme = parse_theme(path)
            if theme.name in seen:
                raise _fail(path, "name", f"{theme.name!r} is already the name of {str(seen[theme.name])!r}; "
                                          f"allowed: a name no other theme file uses")
            seen[theme.name] = path
            themes[theme.name] = theme
    return list(themes.values())


def theme_names(directory: str | Path | None = None) -> list[str]:
    """Names of the themes ``load_themes`` gives, in the same order."""
    return [theme.name for theme in load_themes(directory)]
