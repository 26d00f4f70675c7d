"""What an op's handler may read and do to its session: the public surface handlers are written against.

``Session`` provides it; handlers (rcc.session.handlers) see only this, so they never reach into
the session's private state and never import the session module (which imports them).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rcc.compression.plan import CompressionPlan
    from rcc.models.adapter import VLModel
    from rcc.session.graph import HistoryGraph, NodeRecord, NodeState
    from rcc.session.progress import ProgressFn
    from rcc.session.workspace import Workspace


class OpContext(Protocol):
    """The session an op runs in: its graph, working plan and live model, and the two model moves handlers make."""

    directory: Path
    graph: HistoryGraph
    plan: CompressionPlan
    workspace: Workspace | None  # None until load_workspace (the first op, or a session opened without its model)

    @property
    def head(self) -> int | None: ...

    @property
    def model(self) -> VLModel: ...

    def nodes(self) -> list[NodeRecord]: ...

    def model_at(self, node: int) -> VLModel:
        """A second, independent copy of the model at ``node``."""
        ...

    def resolve_export_path(self, out: str) -> Path: ...

    def load_workspace(self, model: str, data: str, eval_split: str, test_split: str,
                       progress: ProgressFn | None = None) -> None:
        """Load the model spec and the data roles as the live workspace (the ``load_model`` op)."""
        ...

    def restore_to(self, target: NodeState, progress: ProgressFn | None = None, op: str = "checkout") -> int:
        """Make the live model equal ``target``; returns the bytes loaded from the store."""
        ...
