"""What an analysis takes from a session: the model at a node, its data settings and plan (read-only).

The session is opened read-only, so an analysis can run while the app holds it for writing;
the model is an independent copy (``Session.model_at``) and changing it changes nothing stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rcc.analysis.errors import AnalysisError
from rcc.compression.plan import CompressionPlan, plan_from_dict
from rcc.models.adapter import VLModel


@dataclass(frozen=True)
class NodeModel:
    """An independent model at ``node`` and the session's data settings."""

    session: Path
    node: int
    model: VLModel
    model_spec: str
    data: str
    eval_split: str
    test_split: str
    plan: CompressionPlan  # the plan that made the node (the session's working plan for the root)


def session_nodes(session_dir: str | Path) -> tuple[list[int], int | None]:
    """(node ids, head) of a session."""
    from rcc.session.session import Session

    with Session.open(session_dir, read_only=True) as session:
        return [node.id for node in session.nodes()], session.head


def _check_node(node: int, ids: list[int], session_dir) -> None:
    if node not in ids:
        shown = f"{min(ids)}..{max(ids)}" if ids else "none (the session has no node)"
        raise AnalysisError(f"node {node!r} is not in session {str(session_dir)!r}; allowed: {shown}")


def model_at_node(session_dir: str | Path, node: int | None = None, device: str = "cpu") -> NodeModel:
    """The model at ``node`` (default: the head) of the session in ``session_dir``."""
    from rcc.session.session import Session

    with Session.open(session_dir, device=device, read_only=True) as session:
        ids = [n.id for n in session.nodes()]
        node = session.head if node is None else node
        if node is None:
            raise AnalysisError(f"session {str(session_dir)!r} has no node; allowed: a session with a model loaded")
        _check_node(node, ids, session_dir)
        state = session.graph.state(node)
        plan = plan_from_dict(state.plan) if state.plan else session.plan
        return NodeModel(session=Path(session_dir), node=node, model=session.model_at(node),
                         model_spec=session.setting("model"), data=session.setting("data"),
                         eval_split=session.eval_split, test_split=session.test_split,
                         plan=plan)


def root_node(session_dir: str | Path) -> int:
    """The first node of a session (its dense model, as loaded)."""
    ids, _ = session_nodes(session_dir)
    if not ids:
        raise AnalysisError(f"session {str(session_dir)!r} has no node; allowed: a session with a model loaded")
    return min(ids)
