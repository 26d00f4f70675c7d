"""Exact figures of one history node: its stored bytes and change from its parent, values, metrics, summary.

The history table rounds sizes to three figures so that its columns fit 80 columns; this line
under it gives every digit for the node under the cursor.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from rcc.session.graph import NodeRecord
from rcc.session.metric_keys import metric_key
from rcc_tui.sizes import MINUS, exact_bytes, percent_change


def details_text(node: NodeRecord, parent: NodeRecord | None, eval_split: str = "", test_split: str = "") -> Text:
    """``#5 “dare-50” run_cascade · stored 91,412,345 B (−2,123,456 B, −2.3% from #3) · val 0.9611 …``."""
    text = Text(no_wrap=False)
    text.append(f"#{node.id}", "bold")
    if node.label:
        text.append(f" “{node.label}”", "bold")
    text.append(f" {node.op_kind}")
    stored = node.metrics.get("size/bytes")
    text.append(f" · stored {exact_bytes(stored)}")
    before = parent.metrics.get("size/bytes") if parent is not None else None
    if stored is not None and before is not None:
        delta = stored - before
        text.append(f" ({delta:+,.0f} B, {percent_change(stored, before) or '±0'} from #{parent.id})"
                    .replace("-", MINUS))
    # Each metric named by its split: the eval split (val) first, then the split reported as test.
    for split in dict.fromkeys(filter(None, (node.eval_split or eval_split, test_split or "test"))):
        value = node.metrics.get(metric_key(split))
        if value is not None:
            text.append(f" · {split} {value:.4f}")
    values = node.metrics.get("size/params")
    if values is not None:
        text.append(f" · {values:,.0f} values")
    if node.summary:
        text.append(f" · {node.summary}", "dim")
    if node.note:
        text.append(f" · note: {node.note}", "italic")
    return text


class NodeDetails(Static):
    """The node under the history's cursor, every figure exact."""

    DEFAULT_CSS = """
    NodeDetails {
        height: auto;
        max-height: 3;
        padding: 0 1;
        color: $text-muted;
        border-top: solid $primary 30%;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)
        self.node: int | None = None

    def show(self, node: NodeRecord | None, parent: NodeRecord | None, eval_split: str = "",
             test_split: str = "") -> None:
        self.node = None if node is None else node.id
        self.update(Text("") if node is None else details_text(node, parent, eval_split, test_split))
