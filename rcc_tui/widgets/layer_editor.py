"""The layer editor: the plan's settings for the target layers, applied as one ``EditLayers`` op.

The fields show what the plan resolves to for the targets (blank where they differ). Only
fields the user changed are applied, so editing the sparsity of six layers leaves their
ranks alone. Every change is checked at once against the would-be plan by the engine's own
preview (``rcc.services.edit_preview``), and what the targets and the whole model would store
(bytes of the compressed export) is shown; an invalid value is named inline, with the allowed
range, and Apply refuses it. A field being typed into keeps what was typed when the editor is
reloaded (the targets or the plan changed under it), so no keystroke is lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label, Select, Static

from rcc.schema.names import PRUNE_METHODS
from rcc_tui.sizes import bytes_text, percent_change, short_count
from rcc_tui.widgets.marked_checkbox import MarkedCheckbox
from rcc_tui.workers import JobFailed

if TYPE_CHECKING:
    from rcc.compression.plan import CompressionPlan
    from rcc.schema.layers import LayerInfo
    from rcc.services.edit_preview import EditPreview
    from rcc_tui.session_view import LayerState


BUDGET_HINT = "0<b<1 (auto)"
PATTERN_HINT = "unstructured|row|2:4|channel|head"
FIELDS = ("sparsity", "method", "pattern", "rank", "correction", "locked", "bits")


def parse_sparsity(text: str) -> Any:
    """``0.5`` or ``50%`` as a number; anything else is handed on as typed, for the engine to refuse."""
    clean = text.strip()
    try:
        return float(clean[:-1]) / 100 if clean.endswith("%") else float(clean)
    except ValueError:
        return clean


def count_line(preview: EditPreview, layers: Sequence[LayerInfo], names: Sequence[str],
               state: Mapping[str, LayerState], model_bytes: float | None, bytes_per_value: int = 4) -> str:
    """``targets 262 KB → 139 KB (−47%) · model 91.4 MB → 91.3 MB``: stored bytes now and once the plan ran.

    Now is what the live model stores (the node's ``size/bytes`` for the model); after is the
    engine's count of the would-be plan, ``≈`` where auto ranks are the budget's estimate. A
    channel / head pattern narrows its group's other layers too: they are counted with the
    targets (``targets + 1 narrowed``), since their smaller widths are saved as well.
    """
    targets = preview.with_partners(layers, names)
    partners = len(targets) - len(names)
    chosen = set(targets)
    by_name = {layer.name: layer for layer in layers if layer.name in chosen}
    now = sum((state[name].stored_bytes if name in state and state[name].stored_bytes is not None
               else layer.params * bytes_per_value) for name, layer in by_name.items())
    after = preview.planned_bytes(layers, targets, bytes_per_value)
    approx = "≈" if any(c.estimated for c in preview.summary.layers if c.name in chosen) else ""

    def arrow(before: float, planned: float | None) -> str:
        if planned is None:
            return f"{bytes_text(before)} → ? (rank known after the SVD)"
        change = "" if planned == before else f" ({percent_change(planned, before)})"
        return f"{bytes_text(before)} → {approx}{bytes_text(planned)}{change}"

    line = f"targets{f' + {partners} narrowed' if partners else ''} {arrow(now, after)}"
    if model_bytes is not None:
        line += f" · model {arrow(model_bytes, None if after is None else model_bytes - now + after)}"
    return line


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
        self.model_bytes: float | None = None  # what the current node stores (size/bytes)
        self.state: Mapping[str, LayerState] = {}
        self._loaded: dict[str, Any] = {}
        self._shown: dict[str, str] = {}  # what the last load put in each text field
        self._loading = False
        self.error: str = ""

    def compose(self) -> ComposeResult:
        yield Static("no layer", id="editor-targets", markup=False)
        with Horizontal(classes="field-row"):
            yield Label("sparsity", classes="field-label")
            yield Input(placeholder="0 ≤ s < 1", id="sparsity", compact=True, classes="field")
            yield Label("method", classes="field-label second")
            yield Select([(m, m) for m in PRUNE_METHODS], prompt="mixed", id="method", compact=True,
                         classes="field", allow_blank=True)
        with Horizontal(classes="field-row"):
            yield Label("pattern", classes="field-label")
            yield Input(placeholder=PATTERN_HINT, id="pattern-field", compact=True, classes="field")
            yield Label("rank", classes="field-label second")
            yield Input(placeholder="64|energy:0.9|auto", id="rank", compact=True, classes="field")
        with Horizontal(classes="field-row"):
            yield MarkedCheckbox("correction", id="correction", compact=True)
            yield MarkedCheckbox("locked", id="locked", compact=True)
            yield MarkedCheckbox("int8", id="bits", compact=True,
                                 tooltip="bits 8: the quant stage stores the weights in int8")
        with Horizontal(classes="field-row"):  # its own row, so it stays visible at 80 columns
            yield Label("budget", classes="field-label")
            yield Input(placeholder=BUDGET_HINT, id="budget", compact=True, classes="field",
                        tooltip="plan-wide: the fraction of the auto-ranked layers' parameters kept")
        yield Static("", id="editor-counts", markup=False)
        yield Static("", id="editor-error", markup=False)
        with Horizontal(classes="button-row"):
            yield Button("Apply", id="apply", variant="primary", compact=True)
            yield Button("Reset", id="reset", compact=True, tooltip="remove the per-layer overrides of the targets")

    def on_mount(self) -> None:
        jobs = getattr(self.app, "jobs", None)
        if jobs is not None:
            jobs.subscribe(self)  # an edit the engine refuses is shown here, inline

    def focus_first(self) -> None:
        """Focus the sparsity field (the ``e`` key, enter on a layer in the tree)."""
        self.query_one("#sparsity", Input).focus()

    # -- data in ---------------------------------------------------------------------------
    def load(self, layers: Sequence[LayerInfo], plan: CompressionPlan, targets: Sequence[str], description: str,
             state: Mapping[str, LayerState] | None = None, model_bytes: float | None = None) -> None:
        """Show the plan's settings for ``targets``; the fields forget unapplied changes, except the field
        being typed into (it has the focus and differs from what was loaded): what was typed stays."""
        self.inventory, self.plan, self.targets = tuple(layers), plan, tuple(targets)
        self.state = dict(state or {})
        self.model_bytes = model_bytes
        count = len(self.targets)
        if count == 1:
            layer = next((layer for layer in self.inventory if layer.name == self.targets[0]), None)
            held = self.state.get(self.targets[0])
            size = held.stored_bytes if held is not None and held.stored_bytes is not None else None
            about = "" if layer is None else f" · {layer.shape[0]}×{layer.shape[1]}" + \
                (f" · {bytes_text(size)}" if size is not None else f" · {short_count(layer.params)} values")
        else:
            about = f" · {count} layers" if count else ""
        self.query_one("#editor-targets", Static).update(Text.assemble(("Edit ", "bold"), description, (about, "dim")))
        self._loaded = self._common_settings()
        self._loading = True
        try:
            loaded = self._loaded
            mixed = len(self.targets) > 1
            sparsity = self.query_one("#sparsity", Input)
            self._put(sparsity, "" if loaded["sparsity"] is None else f"{loaded['sparsity']:g}")
            sparsity.placeholder = "mixed" if mixed and loaded["sparsity"] is None else "0 ≤ s < 1"
            pattern = self.query_one("#pattern-field", Input)
            pattern.placeholder = "mixed" if mixed and loaded["pattern"] is None else PATTERN_HINT
            rank = self.query_one("#rank", Input)
            rank.placeholder = "mixed" if mixed and loaded["rank"] is None else "64|energy:0.9|auto"
            method = self.query_one("#method", Select)
            method.value = loaded["method"] if loaded["method"] is not None else Select.NULL
            self._put(pattern, loaded["pattern"] or "")
            self._put(rank, loaded["rank"] or "")
            self.query_one("#correction", MarkedCheckbox).value = bool(loaded["correction"])
            self.query_one("#locked", MarkedCheckbox).value = bool(loaded["locked"])
            self.query_one("#bits", MarkedCheckbox).value = loaded["bits"] is not None
            self._put(self.query_one("#budget", Input), self._loaded_budget())
        finally:
            self._loading = False
        self.disabled = not self.targets
        self.refresh_preview()

    def _put(self, field: Input, value: str) -> None:
        """Load ``value`` into ``field``, unless the user is typing there (focused, changed since the last load)."""
        typing = field.has_focus and field.value != self._shown.get(field.id or "", field.value)
        self._shown[field.id or ""] = value
        if not typing:
            field.value = value

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
            "correction": self.query_one("#correction", MarkedCheckbox).value,
            "locked": self.query_one("#locked", MarkedCheckbox).value,
            "bits": 8 if self.query_one("#bits", MarkedCheckbox).value else None,
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
              budget: Any = None) -> tuple[str, EditPreview | None]:
        """(error message or "", the engine's preview of the would-be plan); nothing is applied."""
        from rcc.errors import RccError
        from rcc.services.edit_preview import preview_edit

        if self.plan is None or not self.targets:
            return "", None
        try:
            return "", preview_edit(self.plan, self.inventory, self.targets, settings, reset, budget)
        except RccError as error:
            return str(error).removeprefix("op 'edit_layers': "), None

    def refresh_preview(self) -> None:
        """Re-check the fields and update the counts and the error line."""
        if self._loading or not self.is_mounted:
            return
        error, preview = self.check(self.changed_settings(), budget=self.changed_budget())
        self.show_error(error)
        counts = self.query_one("#editor-counts", Static)
        counts.update(count_line(preview, self.inventory, self.targets, self.state, self.model_bytes)
                      if preview is not None else "")

    def show_error(self, message: str) -> None:
        self.error = message
        line = self.query_one("#editor-error", Static)
        line.update(Text(f"✗ {message}", style="bold") if message else "")
        line.set_class(bool(message), "error")

    # -- events ----------------------------------------------------------------------------
    @on(Input.Changed)
    @on(Select.Changed)
    @on(MarkedCheckbox.Changed)
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
        self._applied()
        return True

    def _applied(self) -> None:
        """What the fields hold was asked for: the next load shows the plan that results, typed text included."""
        for field in self.query(Input):
            self._shown[field.id or ""] = field.value

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

    def on_job_failed(self, message: JobFailed) -> None:
        """An edit this editor asked for and the engine refused: the reason goes on the error line."""
        if message.job.origin is self and not message.cancelled:
            self.show_error(message.message.removeprefix("op 'edit_layers': "))
