"""The layer tree: towers → blocks → layers, with each layer's shape, size and current state.

Children are built when a node is first expanded (a ViT-L has hundreds of layers). The
selection is a set of layer names, kept apart from the tree's nodes, so a whole tower can be
selected before it was ever expanded. With nothing selected, the layers under the cursor are
the *targets* the editor and the run panel act on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Static, Tree
from textual.widgets.tree import TreeNode

if TYPE_CHECKING:
    from rcc.compression.plan import CompressionPlan
    from rcc.schema.layers import LayerInfo
    from rcc_tui.session_view import LayerState

SELECTED, UNSELECTED, PARTIAL = "■", "□", "◧"
DETAIL_WIDTH = 40  # narrower trees leave shapes and sizes to the editor
HEAT_STEPS = 5  # sensitivity colours, from the theme's success (least) to its error (most sensitive)
PATTERN_HELP = "glob over names, or tower:vision kind:mlp_in block:0-3 (all must match); +… adds"


@dataclass(frozen=True)
class NodeData:
    """What a tree node stands for: a tower, a block of a tower, or one layer."""

    kind: str  # "tower", "block" or "layer"
    tower: str
    block: int | None = None
    name: str = ""  # the layer name, for layers


def short_number(n: float) -> str:
    """12, 4.1K, 23.4M: parameter counts that fit a tree row."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return f"{n:.0f}"


def stored_fraction_saved(layers: Sequence[LayerInfo], state: Mapping[str, LayerState]) -> float:
    """1 − stored bytes / dense bytes of ``layers``, as the compressed export stores them (0 when unknown)."""
    stored = dense = 0
    for layer in layers:
        held = state.get(layer.name)
        if held is None or held.stored_bytes is None or held.dense_bytes is None:
            continue
        stored += held.stored_bytes
        dense += held.dense_bytes
    return 1 - stored / dense if dense else 0.0


def short_name(layer: LayerInfo) -> str:
    """The name below the block (``mlp.c_fc``), or the whole name for layers outside blocks."""
    if layer.block is None:
        return layer.name
    parts = layer.name.split(".")
    for i in range(len(parts) - 1):
        if parts[i + 1] == str(layer.block) and i + 2 < len(parts):
            return ".".join(parts[i + 2:])
    return layer.name


def state_text(state: LayerState | None) -> str:
    """``50%``, ``r32``, ``r32 50%``, ``50% int8``, ``6/12 heads`` (units a structured group kept) or ``dense``."""
    if state is None:
        return ""
    parts = []
    if state.units is not None and state.units[0] < state.units[1]:
        parts.append(f"{state.units[0]}/{state.units[1]} {state.units[2]}")
    if state.rank is not None:
        parts.append(f"r{state.rank}")
    if state.sparsity > 0:
        parts.append(f"{state.sparsity:.0%}")
    if state.bits is not None:
        parts.append(f"int{state.bits}")
    return " ".join(parts) or "dense"


def planned_text(setting) -> str:
    """What the plan will do to a layer (``→50% r8``), empty when the plan leaves it alone."""
    if setting is None or not setting.selected:
        return ""
    parts = []
    if setting.sparsity > 0:
        parts.append(f"{setting.sparsity:.0%}" if setting.pattern == "unstructured"
                     else f"−{setting.sparsity:.0%} {setting.pattern}s" if setting.pattern in ("channel", "head")
                     else setting.pattern)
    if setting.rank is not None:
        parts.append(f"r{setting.rank}" if setting.rank.mode == "fixed" else str(setting.rank))
    if setting.bits is not None:
        parts.append(f"int{setting.bits}")
    return "→" + " ".join(parts)


def applied(state: LayerState | None, setting) -> bool:
    """Whether the layer already is as the plan wants it (same sparsity and fixed rank)."""
    if state is None or setting is None or not setting.selected:
        return False
    if state.bits != setting.bits:
        return False
    if setting.pattern in ("channel", "head") and state.units is not None:
        kept, dense, _ = state.units
        if kept != dense - round(setting.sparsity * dense):
            return False
    elif abs(state.sparsity - setting.sparsity) > 5e-3:
        return False
    if setting.rank is None:
        return state.rank is None
    return state.rank is not None and (setting.rank.mode != "fixed" or state.rank == setting.rank.value)


def heat_step(score: float, top: float) -> int:
    """Which of HEAT_STEPS equal bins of [0, top] ``score`` falls in (top itself: the last).

    A stored scan can hold NaN or infinite drifts (a KL that blew up): infinity is the hottest,
    NaN the coolest; neither may reach ``int()``.
    """
    if score == math.inf:
        return HEAT_STEPS - 1
    if not (math.isfinite(score) and math.isfinite(top)) or top <= 0 or score <= 0:
        return 0
    return min(HEAT_STEPS - 1, int(HEAT_STEPS * score / top))


def score_text(score: float) -> str:
    """A sensitivity score in at most 6 characters: ``0.049``, ``1.2``, ``<.001`` (colour tells the rest)."""
    if score == 0:
        return "0"
    return "<.001" if 0 < score < 1e-3 else f"{score:.2g}"


def heat_colour(step: int, cool: str, middle: str, hot: str) -> str:
    """Step ``step`` of HEAT_STEPS on cool → middle → hot (each half blended linearly), as #rrggbb."""
    from textual.color import Color, ColorParseError

    def parse(value: str, fallback: str) -> Color:
        try:
            return Color.parse(value.split()[0])
        except (ColorParseError, IndexError):  # a theme without the variable (or an odd value)
            return Color.parse(fallback)

    stops = [parse(cool, "green"), parse(middle, "yellow"), parse(hot, "red")]
    position = 2 * step / (HEAT_STEPS - 1)  # 0 … 2 over the two halves
    half = min(int(position), 1)
    return stops[half].blend(stops[half + 1], position - half).hex


def match_layers(pattern: str, layers: Sequence[LayerInfo]) -> list[str]:
    """Names of the layers matching every term of ``pattern``.

    A term is ``tower:T``, ``kind:K``, ``block:N`` / ``block:A-B``, ``name:GLOB`` or a bare
    GLOB; a bare word without ``*?[`` matches as a substring. Bad towers, kinds and blocks
    raise ``PlanError`` with the allowed values.
    """
    from rcc.compression.plan_rules import PlanError, Rule, rule_matches

    terms = pattern.split()
    if not terms:
        raise PlanError(f"pattern {pattern!r} is empty; allowed: {PATTERN_HELP}")
    matchers: dict[str, str] = {}
    globs: list[str] = []
    for term in terms:
        key, sep, value = term.partition(":")
        if sep and key in ("tower", "kind", "block"):
            if key in matchers:
                raise PlanError(f"pattern term {term!r} repeats {key}; allowed: one {key}: term")
            matchers[key] = value
        else:
            glob = value if sep and key == "name" else term
            globs.append(glob if any(c in glob for c in "*?[") else f"*{glob}*")
    rule = Rule(**matchers)  # checks tower, kind and block, naming what is allowed
    return [layer.name for layer in layers
            if rule_matches(rule, layer) and all(fnmatchcase(layer.name, glob) for glob in globs)]


class LayerTree(Tree[NodeData]):
    """Towers → blocks → layers; space selects, enter opens, the targets follow the cursor."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "toggle_select", "Select", id="rcc.tree.select"),
        Binding("enter", "select_cursor", "Open", show=False),
        Binding("right", "expand_node", "Expand", show=False),
        Binding("left", "collapse_node", "Collapse", show=False),
        Binding("u", "clear_selection", "Unselect", id="rcc.tree.unselect"),
    ]

    class TargetsChanged(Message):
        """The layers the editor and run panel act on changed (the selection, or under the cursor)."""

        def __init__(self, names: tuple[str, ...], description: str, selected: bool) -> None:
            super().__init__()
            self.names = names
            self.description = description
            self.selected = selected  # True: an explicit selection; False: what is under the cursor

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("layers", id=id, classes=classes)
        self.show_root = False
        self.guide_depth = 2
        self.inventory: tuple[LayerInfo, ...] = ()
        self.state: Mapping[str, LayerState] = {}
        self.planned: Mapping[str, object] = {}
        self.sensitivity: Mapping[str, float] | None = None
        self._top_score = 0.0  # the highest finite score of ``sensitivity``
        self.selection: set[str] = set()
        self._by_tower: dict[str, list[LayerInfo]] = {}
        self._built: set[int] = set()  # ids of nodes whose children exist
        self._targets: tuple[str, ...] = ()
        self._detailed = True  # shapes and sizes in layer rows (dropped when the tree is narrow)

    # -- data in ---------------------------------------------------------------------------
    def show(self, layers: Sequence[LayerInfo], state: Mapping[str, LayerState] | None = None,
             plan: CompressionPlan | None = None, sensitivity: Mapping[str, float] | None = None) -> None:
        """Show ``layers``; when they are the same layers as before, only the labels change."""
        same = tuple(layer.name for layer in layers) == tuple(layer.name for layer in self.inventory)
        self.inventory = tuple(layers)
        self.state = dict(state or {})
        if sensitivity is not None:
            self._keep_scores(sensitivity)
        self.planned = self._resolve(plan)
        self.selection &= {layer.name for layer in layers}
        if same and self.root.children:
            self._relabel(self.root)
            self._post_targets()
            return
        self._by_tower = {}
        for layer in self.inventory:
            self._by_tower.setdefault(layer.tower, []).append(layer)
        self.clear()
        self._built = {self.root.id}
        for tower in self._by_tower:
            self.root.add(self._label(NodeData("tower", tower)), NodeData("tower", tower))
        self.cursor_line = 0
        self._post_targets()

    def set_sensitivity(self, scores: Mapping[str, float] | None) -> None:
        """Colour the scanned layers by their score (None: no colours)."""
        self._keep_scores(scores)
        self._relabel(self.root)

    def _keep_scores(self, scores: Mapping[str, float] | None) -> None:
        self.sensitivity = dict(scores) if scores else None
        finite = [v for v in (scores or {}).values() if math.isfinite(v)]
        self._top_score = max(finite, default=0.0)  # once, not per label

    def on_mount(self) -> None:
        # The heat colours are the theme's: redraw them when the theme changes.
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._relabel(self.root))

    def _resolve(self, plan: CompressionPlan | None) -> Mapping[str, object]:
        if plan is None or not self.inventory:
            return {}
        from rcc.compression.plan import resolve_plan
        from rcc.errors import RccError

        try:
            return resolve_plan(plan, self.inventory)
        except RccError:
            return {}

    def on_resize(self, event) -> None:
        detailed = event.size.width >= DETAIL_WIDTH
        if detailed != self._detailed:
            self._detailed = detailed
            self._relabel(self.root)

    # -- lazy children ---------------------------------------------------------------------
    def layers_of(self, data: NodeData | None) -> list[LayerInfo]:
        """The layers a node stands for (all of them for the root)."""
        if data is None:
            return list(self.inventory)
        if data.kind == "layer":
            return [layer for layer in self._by_tower.get(data.tower, []) if layer.name == data.name]
        layers = self._by_tower.get(data.tower, [])
        if data.kind == "block":
            return [layer for layer in layers if layer.block == data.block]
        return list(layers)

    def _build_children(self, node: TreeNode[NodeData]) -> None:
        if node.id in self._built or node.data is None:
            return
        self._built.add(node.id)
        data = node.data
        if data.kind == "tower":
            layers = self._by_tower.get(data.tower, [])
            blocks = sorted({layer.block for layer in layers if layer.block is not None})
            for block in blocks:
                child = NodeData("block", data.tower, block)
                node.add(self._label(child), child)
            for layer in layers:
                if layer.block is None:
                    child = NodeData("layer", data.tower, None, layer.name)
                    node.add_leaf(self._label(child), child)
        elif data.kind == "block":
            for layer in self.layers_of(data):
                child = NodeData("layer", data.tower, data.block, layer.name)
                node.add_leaf(self._label(child), child)

    def _on_tree_node_expanded(self, event: Tree.NodeExpanded[NodeData]) -> None:
        self._build_children(event.node)

    def expand_path(self, name: str) -> TreeNode[NodeData] | None:
        """Build and expand down to the layer ``name``; returns its node."""
        layer = next((layer for layer in self.inventory if layer.name == name), None)
        if layer is None:
            return None
        node = self.root
        for want in (NodeData("tower", layer.tower),
                     NodeData("block", layer.tower, layer.block) if layer.block is not None else None,
                     NodeData("layer", layer.tower, layer.block, layer.name)):
            if want is None:
                continue
            self._build_children(node)
            node.expand()
            found = next((child for child in node.children if child.data == want), None)
            if found is None:
                return None
            node = found
        return node

    def move_to(self, node: TreeNode[NodeData]) -> None:
        self.move_cursor(node)

    # -- labels ----------------------------------------------------------------------------
    def _mark(self, names: Iterable[str]) -> str:
        names = list(names)
        chosen = sum(name in self.selection for name in names)
        return SELECTED if names and chosen == len(names) else PARTIAL if chosen else UNSELECTED

    def heat(self, name: str) -> int | None:
        """The sensitivity step of layer ``name`` (0 coolest … HEAT_STEPS − 1 hottest), None if not scanned."""
        scores = self.sensitivity
        if not scores or name not in scores:
            return None
        return heat_step(scores[name], self._top_score)

    def _colour(self, step: int) -> str:
        """The theme's success → warning → error, in HEAT_STEPS steps (read now: themes change)."""
        variables = self.app.theme_variables if self.is_attached else {}
        return heat_colour(step, variables.get("success", ""), variables.get("warning", ""),
                           variables.get("error", ""))

    def _heat_text(self, names: Iterable[str]) -> Text:
        """`` ● 0.012`` for a layer (its score when wide enough), `` ●`` (the hottest inside) for a group."""
        steps = [(step, name) for name in names if (step := self.heat(name)) is not None]
        if not steps:
            return Text()
        step, name = max(steps)
        text = Text(" ●", style=self._colour(step))
        if len(steps) == 1 and self._detailed and self.sensitivity:
            text.append(f" {score_text(self.sensitivity[name])}", style=self._colour(step))
        return text

    def _label(self, data: NodeData) -> Text:
        layers = self.layers_of(data)
        text = Text()
        text.append(self._mark(layer.name for layer in layers) + " ", style="bold")
        if data.kind == "layer" and layers:
            layer = layers[0]
            step = self.heat(layer.name)
            text.append(short_name(layer), style="" if step is None else self._colour(step))
            if self._detailed:
                narrowed = (f" of {layer.dense_shape[0]}×{layer.dense_shape[1]}" if layer.dense_shape else "")
                text.append(f" {layer.shape[0]}×{layer.shape[1]}{narrowed} {short_number(layer.params)}", style="dim")
            state = self.state.get(layer.name)
            now = state_text(state)
            if now:
                text.append(f" {now}", style="dim" if now == "dense" else "bold")
            planned = "" if applied(state, self.planned.get(layer.name)) else planned_text(self.planned.get(layer.name))
            if planned:
                text.append(f" {planned}", style="italic")
            text.append_text(self._heat_text([layer.name]))
            return text
        title = data.tower if data.kind == "tower" else f"block {data.block}"
        # Against the dense widths: a block whose units were removed shows that saving too.
        params = sum(layer.original_shape[0] * layer.original_shape[1] for layer in layers)
        saved = stored_fraction_saved(layers, self.state)
        text.append(title, style="bold" if data.kind == "tower" else "")
        text.append(f" {len(layers)} layers {short_number(params)}" if self._detailed
                    else f" ·{len(layers)} {short_number(params)}", style="dim")
        if saved > 0:  # what the compressed export saves, in bytes (a mask costs a bit per entry)
            text.append(f" −{saved:.0%}", style="bold")
        text.append_text(self._heat_text(layer.name for layer in layers))
        return text

    def _relabel(self, node: TreeNode[NodeData]) -> None:
        for child in node.children:
            child.set_label(self._label(child.data))
            if child.children:
                self._relabel(child)

    def _relabel_path(self, node: TreeNode[NodeData] | None) -> None:
        """A node's subtree and its ancestors (their partial-selection marks)."""
        if node is None:
            return
        if node.data is not None:
            node.set_label(self._label(node.data))
            self._relabel(node)
        parent = node.parent
        while parent is not None and parent.data is not None:
            parent.set_label(self._label(parent.data))
            parent = parent.parent

    # -- selection -------------------------------------------------------------------------
    def targets(self) -> tuple[str, ...]:
        """The selected layers, or with no selection the layers under the cursor."""
        return self._targets

    def describe(self, names: Sequence[str]) -> str:
        if not names:
            return "no layer"
        if len(names) == 1:
            return names[0]
        node = self.cursor_node
        if not self.selection and node is not None and node.data is not None:
            data = node.data
            return f"{data.tower} tower" if data.kind == "tower" else f"block {data.block} of {data.tower}"
        towers = sorted({layer.tower for layer in self.inventory if layer.name in set(names)})
        return f"{len(names)} selected layers ({', '.join(towers)})"

    def _compute_targets(self) -> tuple[str, ...]:
        if self.selection:
            return tuple(layer.name for layer in self.inventory if layer.name in self.selection)
        node = self.cursor_node
        if node is None or node.data is None:
            return ()
        return tuple(layer.name for layer in self.layers_of(node.data))

    def _post_targets(self) -> None:
        targets = self._compute_targets()
        self._targets = targets
        # Sent as the tree's own, so it bubbles to the screen even when a parent's handler asked.
        self.post_message(self.TargetsChanged(targets, self.describe(targets), bool(self.selection)).set_sender(self))

    def set_selection(self, names: Iterable[str]) -> None:
        known = {layer.name for layer in self.inventory}
        self.selection = {name for name in names if name in known}
        self._relabel(self.root)
        self._post_targets()

    def select_pattern(self, pattern: str) -> int:
        """Select the layers matching ``pattern`` (``+pattern`` adds to the selection); returns how many."""
        add = pattern.startswith("+")
        names = match_layers(pattern.removeprefix("+"), self.inventory)
        self.set_selection((self.selection | set(names)) if add else names)
        return len(names)

    def action_toggle_select(self) -> None:
        node = self.cursor_node
        if node is None or node.data is None:
            return
        names = {layer.name for layer in self.layers_of(node.data)}
        if names <= self.selection:
            self.selection -= names
        else:
            self.selection |= names
        self._relabel_path(node)
        self._post_targets()

    def action_clear_selection(self) -> None:
        self.set_selection(())

    def action_expand_node(self) -> None:
        node = self.cursor_node
        if node is not None and node.allow_expand and not node.is_expanded:
            node.expand()

    def action_collapse_node(self) -> None:
        node = self.cursor_node
        if node is None:
            return
        if node.is_expanded:
            node.collapse()
        elif node.parent is not None and node.parent is not self.root:
            self.move_cursor(node.parent)

    def _on_tree_node_highlighted(self, event: Tree.NodeHighlighted[NodeData]) -> None:
        if not self.selection:
            self._post_targets()


class LayerPanel(Vertical):
    """The layer tree with its select-by-pattern input and a line saying what is targeted."""

    def compose(self) -> ComposeResult:
        yield LayerTree(id="layer-tree")
        yield Input(placeholder="/ select: glob tower:… kind:… block:…", id="pattern", compact=True)
        yield Static("", id="selection-info", markup=False)
        legend = Static("", id="sensitivity-legend", markup=False)
        legend.display = False  # until a scan is shown: the panel keeps its lines for the tree
        yield legend

    @property
    def tree(self) -> LayerTree:
        return self.query_one(LayerTree)

    def show_sensitivity(self, scores: Mapping[str, float] | None, legend: str = "") -> None:
        """Colour the tree by ``scores`` and say where they come from, with the colour scale (None: clear)."""
        self.tree.set_sensitivity(scores)
        widget = self.query_one("#sensitivity-legend", Static)
        widget.display = bool(scores)
        if not scores:
            widget.update("")
            return
        text = Text()
        for step in range(HEAT_STEPS):
            text.append("●", style=self.tree._colour(step))
        text.append(" low→high  ", style="dim")
        text.append(legend)
        widget.update(text)

    @on(Input.Submitted, "#pattern")
    def _select_pattern(self, event: Input.Submitted) -> None:
        from rcc.errors import RccError

        event.stop()
        info = self.query_one("#selection-info", Static)
        if not self.tree.inventory:
            return
        try:
            count = self.tree.select_pattern(event.value)
        except RccError as error:
            info.update(Text(str(error), style="bold red"))
            info.add_class("error")
            return
        info.remove_class("error")
        if count:
            self.tree.focus()
        else:
            info.update(Text(f"no layer matches {event.value!r}", style="bold red"))

    @on(LayerTree.TargetsChanged)
    def _show_targets(self, event: LayerTree.TargetsChanged) -> None:
        info = self.query_one("#selection-info", Static)
        info.remove_class("error")
        if event.selected:
            info.update(f"{len(event.names)} selected · u unselects")
        else:
            info.update(f"cursor: {len(event.names)} layers · space selects" if len(event.names) != 1
                        else "cursor: 1 layer · space selects")
