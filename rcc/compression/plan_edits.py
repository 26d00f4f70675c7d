"""An ``edit_layers`` op's plan: settings merged into the overrides of some layers.

The op's handler and the app's edit preview (rcc.services.edit_preview) both build the edited plan here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the plan module imports torch (through the inventory); this one does not
    from rcc.compression.plan import CompressionPlan


def edited_plan(plan: CompressionPlan, names: Sequence[str], settings: Mapping[str, Any], reset: bool = False,
                budget: float | None = None) -> CompressionPlan:
    """The plan with ``settings`` merged into the overrides of ``names`` (after dropping them with ``reset``)."""
    from rcc.compression.plan_rules import normalize_settings, settings_to_json

    overrides = {name: dict(s) for name, s in plan.overrides.items()}
    clean = normalize_settings(settings)
    for name in names:
        if reset:
            overrides.pop(name, None)
        if clean:
            overrides[name] = {**overrides.get(name, {}), **clean}
    return replace(plan, overrides={n: settings_to_json(s) for n, s in overrides.items()},
                   budget=plan.budget if budget is None else budget)
