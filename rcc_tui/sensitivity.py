"""What the layer tree shows of sensitivity scans: the head's stored scan, or its nearest scanned ancestor's.

A scan is an analysis, not an op (``rcc.services.sensitivity`` runs and stores it, for the app
and ``rcc-tui analyze sensitivity --session`` alike, at ``<session>/analysis/sensitivity-<node>.json``).
Reading the stored scan for the tree is a short background job (``read_job``).

The engine (and torch) is imported inside the functions: this module is imported by the main
screen before the first frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rcc_tui.workers import BACKGROUND, Job, JobContext

if TYPE_CHECKING:
    from rcc.session.graph import NodeRecord

# The app's scan: half of each layer's rank, as the rcc-mini report's main table. The CLI has no
# default (it asks for --rank or --sparsity); a rank cut is what the tree's numbers are read for.
DEFAULT_RANK = 0.5


@dataclass(frozen=True)
class TreeSensitivity:
    """The scores the tree shows: of ``node``'s stored scan, shown while ``head`` is checked out."""

    node: int
    head: int
    scores: dict[str, float]
    setting: str  # ScanSetting.describe()

    def legend(self) -> str:
        where = f"node {self.node}" if self.node == self.head else f"node {self.node} (ancestor of {self.head})"
        return f"sensitivity of {where} · {self.setting}"


def ancestry(nodes: Sequence[NodeRecord], head: int | None) -> list[int]:
    """``head``, its parent, … up to the root."""
    parents = {node.id: node.parent for node in nodes}
    chain: list[int] = []
    node = head
    while node is not None and node not in chain:
        chain.append(node)
        node = parents.get(node)
    return chain


def read_tree_sensitivity(directory: str, nodes: Sequence[NodeRecord], head: int | None) -> TreeSensitivity | None:
    """The head's stored scan, else its nearest scanned ancestor's (None when none was scanned).

    Why an ancestor's: the usual flow scans the dense root, then compresses; the root's ranking
    still says which layers to spare, so it stays shown, and the legend names the node it is of.
    """
    from rcc.analysis.sensitivity import nearest_sensitivity

    if head is None:
        return None
    result = nearest_sensitivity(directory, ancestry(nodes, head))
    if result is None or result.node is None:
        return None
    return TreeSensitivity(node=result.node, head=head, scores=result.scores(), setting=result.setting.describe())


@dataclass(frozen=True)
class SensitivityRead:
    """What ``read_job`` found for ``head``: the scan to show (or None), or the error that kept it from showing."""

    head: int | None
    found: TreeSensitivity | None
    error: str | None = None


def read_job(directory: str, nodes: Sequence[NodeRecord], head: int | None) -> Job:
    """Read the scan the tree shows for ``head`` (only analysis files, never the session: safe beside an op)."""

    def work(context: JobContext) -> SensitivityRead:
        from rcc.errors import RccError

        try:
            return SensitivityRead(head, read_tree_sensitivity(directory, nodes, head))
        except RccError as exc:  # a damaged file: say so, show no colours
            return SensitivityRead(head, None, str(exc))

    return Job("read the sensitivity scan", work, lane=BACKGROUND, kind="read")
