"""What an applied op did, in words: the lines the app's log and ``rcc-tui session apply`` print.

A headline (``#7 run_cascade → node 5: val 0.9611, 91,412,345 bytes stored``: every metric
named by its split), detail lines that depend on the op (a training run's loss, an evaluation's
split, an export's folder, an op that changed no tensor) and warnings (a corrupt blob that was
rewritten from the model). Sizes are ``size/bytes``: what the compressed export stores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rcc.session.graph import NodeRecord
    from rcc.session.session import OpOutcome


@dataclass(frozen=True)
class OutcomeText:
    headline: str
    details: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def size_change(new: float | None, old: float | None) -> str:
    """``−2,123,456 bytes (−2.3 %)`` from ``old`` to ``new``; empty when either is unknown."""
    if new is None or old is None:
        return ""
    change = new - old
    percent = f" ({change / old:+.1%})".replace("-", "−") if old else ""
    return f"{change:+,.0f}".replace("-", "−") + " bytes" + percent


def describe_outcome(outcome: OpOutcome, nodes: Sequence[NodeRecord]) -> OutcomeText:
    """The headline and details of ``outcome``; ``nodes`` are the session's nodes after it."""
    by_id = {node.id: node for node in nodes}
    kind = outcome.op.kind
    node = by_id.get(outcome.new_node) if outcome.new_node is not None else None
    if node is not None:
        parent = by_id.get(node.parent) if node.parent is not None else None
        metric = node.eval_metric
        stored = node.metrics.get("size/bytes")
        parts = [f"{node.eval_split} {metric:.4f}" if metric is not None else "",
                 f"{stored:,.0f} bytes stored" if stored is not None else ""]
        change = size_change(stored, None if parent is None else parent.metrics.get("size/bytes"))
        headline = f"#{outcome.seq} {kind} → node {node.id}: " + ", ".join(p for p in parts if p) + \
            (f" ({change} from node {parent.id})" if change and parent is not None else "")
    elif outcome.unchanged:
        headline = (f"#{outcome.seq} {kind} changed no tensor: no node recorded "
                    f"(node {outcome.node_after} stays current)")
    elif outcome.node_after != outcome.node_before:
        headline = f"#{outcome.seq} {kind} → node {outcome.node_after}"
    else:
        headline = f"#{outcome.seq} {kind}"
    details = list(_DETAILS.get(kind, _none)(outcome, by_id))
    if node is not None and node.summary:
        details.insert(0, node.summary)
    return OutcomeText(headline, tuple(details), tuple(_healed(outcome)))


def _healed(outcome: OpOutcome) -> list[str]:
    """One warning per corrupt blob the op's new node needed (rewritten from the live model)."""
    lines = []
    for healed in outcome.result.get("healed_blobs", []):
        users = [*healed["nodes"], *([outcome.new_node] if outcome.new_node is not None else [])]
        lines.append(f"blob {healed['blob'][:12]} ({healed['tensor']}) was corrupt and was rewritten from the "
                     f"model; nodes using it: {', '.join(map(str, users))}")
    return lines


def _none(outcome: OpOutcome, nodes: dict) -> list[str]:
    return []


def _evaluate(outcome: OpOutcome, nodes: dict) -> list[str]:
    return [f"{key.removesuffix('/primary')}: {value:.4f}" for key, value in outcome.metrics.items()
            if key.endswith("/primary")]


def _train(outcome: OpOutcome, nodes: dict) -> list[str]:
    result = outcome.result
    lines = []
    losses = result.get("losses") or []
    if losses:
        lines.append(f"loss {losses[0]:.4f} → {losses[-1]:.4f} over {len(losses)} steps "
                     f"(teacher node {result.get('teacher')})")
    node = nodes.get(outcome.new_node)
    parent = nodes.get(node.parent) if node is not None and node.parent is not None else None
    before = parent.eval_metric if parent is not None else None
    after = node.eval_metric if node is not None else None
    if before is not None and after is not None:
        lines.append(f"{node.eval_split} {before:.4f} → {after:.4f}")
    best = result.get("best_step")
    if best is not None and losses and best != len(losses):
        lines.append(f"kept the best evaluated state, step {best}")
    return lines


def _export(outcome: OpOutcome, nodes: dict) -> list[str]:
    result = outcome.result
    return [f"wrote node {result.get('node')} to {result.get('out')} ({result.get('total_bytes', 0):,} bytes)",
            *export_notes(result)]


def export_notes(result: dict) -> list[str]:
    """An export's own findings: the onnx export's measured parity per encoder, and the notes of a
    format on what it had to write dense (hf-compressed)."""
    lines = [f"{part} encoder in onnxruntime vs rcc: max |difference| {result[part]['max_abs']:.3g}, "
             f"lowest cosine {result[part]['min_cosine']:.6f}" for part in ("image", "text") if part in result]
    return lines + [f"note: {note}" for note in result.get("notes", [])]


def _label(outcome: OpOutcome, nodes: dict) -> list[str]:
    op = outcome.op
    return [f"node {op.node} labelled {op.label!r}" if op.label else f"node {op.node}'s label removed"]


_DETAILS: dict[str, Callable[[OpOutcome, dict], list[str]]] = {
    "evaluate": _evaluate, "train": _train, "export": _export, "label": _label,
}
