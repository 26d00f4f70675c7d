"""The history DAG drawn as lanes of box-drawing glyphs, newest node on top (like lazygit's graph).

Each row is one node: its lane holds ``●`` (``◉`` for the current node), other live
lanes ``│``; lanes of children that branched from this node join it with ``─┘``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rcc.session.graph import NodeRecord


@dataclass(frozen=True)
class GraphRow:
    node: NodeRecord
    prefix: str  # the lane glyphs, one cell of two characters per lane
    column: int


def graph_rows(nodes: Sequence[NodeRecord], head: int | None = None) -> list[GraphRow]:
    """One row per node, newest first, with the lane glyphs to draw before it."""
    lanes: list[int | None] = []  # each lane waits for the node id it will reach next
    rows = []
    for node in sorted(nodes, key=lambda n: n.id, reverse=True):
        waiting = [i for i, want in enumerate(lanes) if want == node.id]
        if waiting:
            column = waiting[0]
        else:  # a branch tip: take the leftmost free lane
            column = lanes.index(None) if None in lanes else len(lanes)
            if column == len(lanes):
                lanes.append(None)
        cells = []
        joins = set(waiting[1:])
        last_join = max(joins, default=-1)
        for i, want in enumerate(lanes):
            if i == column:
                cells.append("◉" if node.id == head else "●")
            elif i in joins:
                cells.append("┘" if i == last_join else "┴")
            elif column < i < last_join:
                cells.append("┼" if want is not None else "─")
            else:
                cells.append("│" if want is not None else " ")
        prefix = "".join(cell + ("─" if column <= i < last_join else " ") for i, cell in enumerate(cells))
        rows.append(GraphRow(node, prefix.rstrip() + " ", column))
        for i in joins:
            lanes[i] = None
        lanes[column] = node.parent
        while lanes and lanes[-1] is None:
            lanes.pop()
    return rows
