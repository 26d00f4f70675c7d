"""What the screen shows of a session, read off the main thread: ``SessionView`` and its reader.

A job reads the view right after its op (in its worker thread), so the main thread never reads
the live model while another op may be changing it. Widgets draw from the view alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rcc.compression.plan import CompressionPlan
    from rcc.schema.layers import LayerInfo
    from rcc.session.graph import NodeRecord
    from rcc.session.session import Session


@dataclass(frozen=True)
class LayerState:
    """A layer as the live model holds it now."""

    form: str  # dense, masked or factorised
    sparsity: float  # fraction of pruned entries (of the ``down`` factor when factorised)
    rank: int | None  # the factorisation's rank, None when not factorised
    stored: int  # numbers the layer stores now
    stored_bytes: int | None = None  # bytes the compressed export writes for it (values, scales, packed masks)
    dense_bytes: int | None = None  # bytes of its dense weight in the model's dtype (at its dense shape if narrowed)
    units: tuple[int, int, str] | None = None  # a structured group's leader: (kept, dense, "ch" or "heads")
    bits: int | None = None  # 8 when the layer holds int8 values, None for float weights


@dataclass(frozen=True)
class SessionView:
    """Everything the screen shows about a session, read in the worker after an op."""

    directory: str
    model: str
    data: str
    eval_split: str
    head: int | None
    nodes: tuple[NodeRecord, ...]
    plan: CompressionPlan
    layers: tuple[LayerInfo, ...]
    state: dict[str, LayerState] = field(default_factory=dict)
    ops: int = 0
    test_split: str = "test"

    @property
    def head_node(self) -> NodeRecord | None:
        return self.node(self.head)

    def node(self, node: int | None) -> NodeRecord | None:
        return next((record for record in self.nodes if record.id == node), None)

    def parent_of(self, node: NodeRecord | None) -> NodeRecord | None:
        return None if node is None or node.parent is None else self.node(node.parent)


def read_layer_state(session: Session, layers) -> dict[str, LayerState]:
    """Form, sparsity, rank, stored numbers and bytes of every layer, and the units kept by each structured
    group's leader, from the live model."""
    from rcc.compression.groups import structured_groups
    from rcc.compression.layers import (
        layer_bits,
        layer_form,
        layer_module,
        layer_sparsity,
        stored_bytes,
        stored_parameters,
    )

    module = session.model.module
    value_bytes = next(module.parameters()).element_size()  # the model's dtype: float32 is 4
    leaders = {group.leader: (group.units, group.dense_units, "ch" if group.kind == "channel" else "heads")
               for group in structured_groups(list(layers))}
    state = {}
    for layer in layers:
        try:
            child = layer_module(module, layer)
            form = layer_form(module, layer)
            state[layer.name] = LayerState(
                form=form, sparsity=layer_sparsity(module, layer),
                rank=child.rank if form == "factorised" else None,
                stored=stored_parameters(module, layer), stored_bytes=stored_bytes(module, layer),
                # A narrowed layer's saving is real: measured against the width it had.
                dense_bytes=layer.original_shape[0] * layer.original_shape[1] * value_bytes,
                units=leaders.get(layer.name), bits=layer_bits(module, layer))
        except Exception:  # noqa: BLE001  (a layer in a form the readers do not know: show it as dense)
            state[layer.name] = LayerState("dense", 0.0, None, layer.params)
    return state


def read_view(session: Session, layers: tuple | None = None, with_state: bool = True,
              previous: SessionView | None = None) -> SessionView:
    """A ``SessionView`` of ``session``; call it only where no op can run at the same time."""
    if layers is None:
        layers = tuple(session.model.layers()) if session.workspace is not None else ()
    if with_state or previous is None:
        state = read_layer_state(session, layers) if session.workspace is not None else {}
    else:
        state = previous.state
    return SessionView(
        directory=str(session.directory), model=session.setting("model") or "", data=session.setting("data") or "",
        eval_split=session.eval_split, head=session.head, nodes=tuple(session.nodes()),
        plan=session.plan, layers=tuple(layers), state=state, ops=len(session.ops()),
        test_split=session.test_split)
