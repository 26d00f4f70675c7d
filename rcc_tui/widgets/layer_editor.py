"""The layer editor: the plan's settings for the target layers, applied as one ``EditLayers`` op.

The fields show what the plan resolves to for the targets (blank where they differ). Only
fields the user changed are applied, so editing the sparsity of six layers leaves their
ranks alone. Every change is checked at once against the would-be plan (the same rules
the engine applies), and the parameter counts before and after are shown for the targets
and the whole model; an invalid value is named inline, with the allowed range, and Apply
refuses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from rcc_tui.widgets.layer_tree import short_number

if TYPE_CHECKING:
    from rcc.compression.plan import CompressionPlan, PlanSummary
    from rcc.models.inventory import LayerInfo

METHODS = ("dare", "magnitude", "wanda")  # rcc.compression.plan_rules.METHODS, without importing torch
BUDGET_HINT = "0<b<1 (auto)"
FIELDS = ("sparsity", "method", "pattern", "rank", "correction", "locked", "bits")


def parse_sparsity(text: str) -> Any:
    """``0.5`` or ``50%`` as a number; anything else is handed on as typed, for the engine to refuse."""
    clean = text.strip()
    try:
        return float(clean[:-1]) / 100 if clean.endswith("%") else float(clean)
    except ValueError:
        return clean


def would_be_plan(plan: CompressionPlan, names: Sequence[str], settings: Mapping[str, Any],
                  reset: bool = False, budget: float | None = None) -> CompressionPlan:
    """The plan after ``EditLayers(names, settings, reset, budget)``, as the engine's handler builds it."""
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


def count_line(summary: PlanSummary, names: Sequence[str], model_total: float | None) -> str:
    """``targets 197K → 98.3K (−50%) · model 23.4M → 23.3M``."""
    chosen = set(names)
    rows = [c for c in summary.layers if c.name in chosen]
    before = sum(c.before for c in rows)
    unknown = any(c.after is None for c in rows)
    after = None if unknown else sum(c.after for c in rows)
    approx = "≈" if any(c.estimated for c in rows) else ""

    def arrow(b: float, a: float | None) -> str:
        if a is None:
            return f"{short_number(b)} → ? (rank known after the SVD)"
        relative = (a - b) / b if b else 0.0
        change = "" if a == b else f" ({relative:+.1%})" if abs(relative) < 0.095 else f" ({relative:+.0%})"
        return f"{short_number(b)} → {approx}{short_number(a)}{change}"

    total_before = model_total if model_total is not None else summary.total_before
    total_after = None if summary.total_after is None else total_before - (summary.total_before - summary.total_after)
    return f"targets {arrow(before, after)} · model {arrow(total_before, total_after)}"


class LayerEditor(Vertical):
    """Sparsity, method, pattern, rank, correction, locked and int8 bits for the target layers."""

    class ApplyRequested(Message):
        """Apply ``settings`` (only the changed fields) to ``layers`` as one EditLayers op."""

        def __init__(self, layers: tuple[str, ...], settings: dict[str, Any], reset: bool = False,
                     budget: float | None = None) -> None:
            super().__init__()
            self.layers = layers
            self.settings = settings
            self.reset = reset
            self.budget = budget  # the plan's budget for auto ranks, when changed

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.inventory: tuple[LayerInfo, ...] = ()
        self.plan: CompressionPlan | None = None
        self.targets: tuple[str, ...] = ()
        self.model_total: float | None = None
        self._loaded: dict[str, Any] = {}
        self._loading = False
        self.error: str = ""

    def compose(self) -> ComposeResult:
        yield Static("no layer", id="editor-targets", markup=False)
        with Horizontal(classes="field-row"):
            yield Label("sparsity", classes="field-label")
            yield Input(placeholder="0 ≤ s < 1", id="sparsity", compact=True, classes="field")
            yield Label("method", classes="field-label second")
            yield Select([(m, m) for m in METHODS], prompt="mixed", id="method", compact=True,
                         classes="field", allow_blank=True)
        with Horizontal(classes="field-row"):
            yield Label("pattern", classes="field-label")
            yield Input(placeholder="unstructured|row|2:4", id="pattern-field", compact=True, classes="field")
            yield Label("rank", classes="field-label second")
            yield Input(placeholder="64|energy:0.9|auto", id="rank", compact=True, classes="field")
        with Horizontal(classes="field-row"):
            yield Checkbox("correction", id="correction", compact=True)
            yield Checkbox("locked", id="locked", compact=True)
            yield Checkbox("int8", id="bits", compact=True, tooltip="bits 8: the quant stage stores the weights in int8")
        with Horizontal(classes="field-row"):
            yield Label("budget", classes="field-label")
            yield Input(placeholder=BUDGET_HINT, id="budget", compact=True, classes="field",
                        tooltip="plan-wide: the fraction of the auto-ranked layers' parameters kept")
        yield Static("", id="editor-counts", markup=False)
        yield Static("", id="editor-error", markup=False)
        with Horizontal(classes="button-row"):
            yield Button("Apply", id="apply", variant="primary", compact=True)
            yield Button("Reset", id="reset", compact=True, tooltip="remove the per-layer overrides of the targets")

    # -- data in ---------------------------------------------------------------------------
    def load(self, layers: Sequence[LayerInfo], plan: CompressionPlan, targets: Sequence[str], description: str,
             model_total: float | None = None) -> None:
        """Show the plan's settings for ``targets`` (the fields forget unapplied changes)."""
        self.inventory, self.plan, self.targets = tuple(layers), plan, tuple(targets)
        self.model_total = model_total
        count = len(self.targets)
        if count == 1:
            layer = next((layer for layer in self.inventory if layer.name == self.targets[0]), None)
            about = "" if layer is None else f" · {layer.shape[0]}×{layer.shape[1]} · {short_number(layer.params)}"
        else:
            about = f" · {count} layers" if count else ""
        self.query_one("#editor-targets", Static).update(Text.assemble(("Edit ", "bold"), description, (about, "dim")))
        self._loaded = self._common_settings()
        self._loading = True
        try:
            loaded = self._loaded
            mixed = len(self.targets) > 1
            sparsity = self.query_one("#sparsity", Input)
            sparsity.value = "" if loaded["sparsity"] is None else f"{loaded['sparsity']:g}"
            sparsity.placeholder = "mixed" if mixed and loaded["sparsity"] is None else "0 ≤ s < 1"
            pattern = self.query_one("#pattern-field", Input)
            pattern.placeholder = "mixed" if mixed and loaded["pattern"] is None else "unstructured|row|2:4"
            rank = self.query_one("#rank", Input)
            rank.placeholder = "mixed" if mixed and loaded["rank"] is None else "64|energy:0.9|auto"
            method = self.query_one("#method", Select)
            method.value = loaded["method"] if loaded["method"] is not None else Select.NULL
            self.query_one("#pattern-field", Input).value = loaded["pattern"] or ""
            self.query_one("#rank", Input).value = loaded["rank"] or ""
            self.query_one("#correction", Checkbox).value = bool(loaded["correction"])
            self.query_one("#locked", Checkbox).value = bool(loaded["locked"])
            self.query_one("#bits", Checkbox).value = loaded["bits"] is not None
            self.query_one("#budget", Input).value = self._loaded_budget()
        finally:
            self._loading = False
        self.disabled = not self.targets
        self.refresh_preview()

    def _common_settings(self) -> dict[str, Any]:
        """Each field's value if all targets share it under the current plan, else None."""
        out: dict[str, Any] = dict.fromkeys(FIELDS)
        if self.plan is None or not self.targets:
            return out
        from rcc.compression.plan import resolve_plan
        from rcc.errors import RccError

        try:
            resolved = resolve_plan(self.plan, self.inventory)
        except RccError:
            return out
        settings = [resolved[name] for name in self.targets if name in resolved]
        for key in FIELDS:
            values = {str(v) if key == "rank" and v is not None else v for v in (getattr(s, key) for s in settings)}
            if len(values) == 1:
                out[key] = values.pop()
        return out

    def _loaded_budget(self) -> str:
        return "" if self.plan is None or self.plan.budget is None else f"{self.plan.budget:g}"

    # -- reading the fields ----------------------------------------------------------------
    def changed_budget(self) -> Any:
        """The budget as typed when the user changed it (a number, or the text for the op to refuse), else None.

        Clearing the field changes nothing: layers ranked ``auto`` always need a budget.
        """
        text = self.query_one("#budget", Input).value.strip()
        if not text or text == self._loaded_budget():
            return None
        return parse_sparsity(text)  # the same forms: 0.4 or 40%

    def _field_values(self) -> dict[str, Any]:
        method = self.query_one("#method", Select).value
        return {
            "sparsity": self.query_one("#sparsity", Input).value.strip(),
            "method": None if method is Select.NULL else method,
            "pattern": self.query_one("#pattern-field", Input).value.strip(),
            "rank": self.query_one("#rank", Input).value.strip(),
            "correction": self.query_one("#correction", Checkbox).value,
            "locked": self.query_one("#locked", Checkbox).value,
            "bits": 8 if self.query_one("#bits", Checkbox).value else None,
        }

    def changed_settings(self) -> dict[str, Any]:
        """The fields the user changed, as raw settings (not yet checked)."""
        loaded = self._loaded
        shown = {
            "sparsity": "" if loaded.get("sparsity") is None else f"{loaded['sparsity']:g}",
            "method": loaded.get("method"), "pattern": loaded.get("pattern") or "",
            "rank": loaded.get("rank") or "", "correction": bool(loaded.get("correction")),
            "locked": bool(loaded.get("locked")), "bits": loaded.get("bits"),
        }
        settings: dict[str, Any] = {}
        for key, value in self._field_values().items():
            if value == shown[key]:
                continue
            if key == "sparsity":
                settings[key] = parse_sparsity(value) if value else 0.0
            elif key == "pattern":
                settings[key] = value or "unstructured"
            elif key == "rank":
                settings[key] = value or None
            elif key == "method" and value is None:
                continue
            else:
                settings[key] = value
        return settings

    def check(self, settings: Mapping[str, Any], reset: bool = False,
              budget: Any = None) -> tuple[str, PlanSummary | None]:
        """(error message or "", summary of the would-be plan); nothing is applied."""
        from rcc.compression.plan import summarize_plan
        from rcc.errors import RccError
        from rcc.session.ops import EditLayers

        if self.plan is None or not self.targets:
            return "", None
        try:
            if settings or reset or budget is not None:
                budget = EditLayers(layers=self.targets, settings=dict(settings), reset=reset, budget=budget).budget
            plan = would_be_plan(self.plan, self.targets, settings, reset, budget)
            return "", summarize_plan(plan, self.inventory)
        except RccError as error:
            return str(error).removeprefix("op 'edit_layers': "), None

    def refresh_preview(self) -> None:
        """Re-check the fields and update the counts and the error line."""
        if self._loading or not self.is_mounted:
            return
        error, summary = self.check(self.changed_settings(), budget=self.changed_budget())
        self.show_error(error)
        counts = self.query_one("#editor-counts", Static)
        counts.update(count_line(summary, self.targets, self.model_total) if summary is not None else "")

    def show_error(self, message: str) -> None:
        self.error = message
        line = self.query_one("#editor-error", Static)
        line.update(Text(f"✗ {message}", style="bold") if message else "")
        line.set_class(bool(message), "error")

    # -- events ----------------------------------------------------------------------------
    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _changed(self, event: Message) -> None:
        event.stop()
        self.refresh_preview()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_apply()

    @on(Button.Pressed, "#apply")
    def _apply_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_apply()

    @on(Button.Pressed, "#reset")
    def _reset_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_reset()

    def action_apply(self) -> bool:
        """Ask for the changed fields to be applied; False (and the reason shown) when refused."""
        if not self.targets:
            self.show_error("no layer to edit; allowed: select layers in the tree (space) or move the cursor")
            return False
        settings, budget = self.changed_settings(), self.changed_budget()
        if not settings and budget is None:
            self.show_error("nothing changed; allowed: change a field, then apply")
            return False
        error, _ = self.check(settings, budget=budget)
        if error:
            self.show_error(error)
            self.app.bell()
            return False
        self.post_message(self.ApplyRequested(self.targets, settings, budget=budget).set_sender(self))
        return True

    def action_reset(self) -> bool:
        if not self.targets or self.plan is None:
            return False
        if not any(name in self.plan.overrides for name in self.targets):
            self.show_error("the targets have no per-layer overrides to reset")
            return False
        error, _ = self.check({}, reset=True)
        if error:
            self.show_error(error)
            return False
        self.post_message(self.ApplyRequested(self.targets, {}, reset=True).set_sender(self))
        return True
