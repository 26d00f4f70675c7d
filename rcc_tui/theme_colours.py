"""Theme colours as Rich styles, for widgets that build ``Text`` themselves (graphs, bars, tables)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.style import Style
from textual.color import Color, ColorParseError

if TYPE_CHECKING:
    from textual.app import App


def theme_style(app: App, variable: str, fallback: str = "foreground") -> Style:
    """The foreground colour of theme variable ``variable`` (``success``, ``accent``, …), read now: themes change."""
    variables = app.theme_variables
    value = variables.get(variable) or variables.get(fallback, "")
    try:
        return Style(color=Color.parse(value.split()[0]).rich_color)
    except (ColorParseError, IndexError):
        return Style()
