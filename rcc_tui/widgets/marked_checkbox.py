"""A checkbox whose state reads without colour: ``X`` inside when checked, blank when not.

Textual's ``Checkbox`` draws an ``X`` in both states and tells them apart by colour only, which
the ANSI theme and colour-blind people cannot see.
"""

from __future__ import annotations

from textual.widgets import Checkbox

CHECKED_MARK = "X"
UNCHECKED_MARK = " "


class MarkedCheckbox(Checkbox):
    """``▐X▌ label`` when checked, ``▐ ▌ label`` when not."""

    @property  # type: ignore[override]  # Textual reads the class constant through the instance
    def BUTTON_INNER(self) -> str:  # noqa: N802
        return CHECKED_MARK if self.value else UNCHECKED_MARK
