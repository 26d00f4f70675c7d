"""Export a session node: the op ``export``, with the default folder the app and the CLI share."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rcc.eval.encode import CancelCheck
    from rcc.session.progress import ProgressFn
    from rcc.session.session import OpOutcome, Session


def default_export_name(node: int, format: str) -> str:
    """``node-5-compressed``: a folder under the session's ``exports/``."""
    return f"node-{node}-{format}"


def export_op(head: int | None, format: str = "compressed", out: str | None = None, node: int | None = None):
    """The ``export`` op writing ``node`` (default: the head) to ``out`` (default: ``default_export_name``)."""
    from rcc.session.ops import Export

    target = node if node is not None else head
    return Export(format=format, out=out or default_export_name(target, format), node=node)


def export_node(session: Session, format: str = "compressed", out: str | None = None, node: int | None = None,
                progress: ProgressFn | None = None, cancel: CancelCheck | None = None) -> OpOutcome:
    """Write ``node`` (default: the head) to ``out`` as ``compressed``, ``dense``, ``onnx`` or ``hf-compressed``
    (the op's handler calls ``rcc.exports.export_model``, as ``rcc.export`` does).

    ``out`` defaults to ``default_export_name`` under the session's ``exports/``; the export is
    recorded as an op, so replay writes it again.
    """
    return session.apply(export_op(session.head, format, out, node), progress=progress, cancel=cancel)
