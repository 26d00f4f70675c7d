"""The sensitivity view's work: reading a node's stored scan for the tree, and scanning in the OpRunner.

A scan is an analysis, not an op: it changes neither the session's graph nor the live model
(``scan_sensitivity`` snapshots every unit and restores it, and the whole scan restores the
layers it unfused), so it records nothing in the op log. Its result is stored where
``rcc-tui analyze sensitivity --session`` stores it (``<session>/analysis/sensitivity-<node>.json``),
so the app and the headless command read and write the same file.

The engine (and torch) is imported inside the functions: this module is imported by the main
screen before the first frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from rcc.analysis.sensitivity import ScanSetting, SensitivityResult
    from rcc.session.graph import NodeRecord
    from rcc.session.session import Session

# The app's scan: half of each layer's rank, as the rcc-mini report's main table. The CLI has no
# default (it asks for --rank or --sparsity); a rank cut is what the tree's numbers are read for.
DEFAULT_RANK = 0.5
CALIB_PER_CLASS = 16  # as `rcc-tui analyze sensitivity --calib-per-class`


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


class SensitivityScanned(Message):
    """A scan finished and was stored; ``result.node`` is the node it was made on."""

    def __init__(self, result: SensitivityResult, path: str) -> None:
        super().__init__()
        self.result = result
        self.path = path


def scan_setting(rank: float | None = DEFAULT_RANK, sparsity: float = 0.0, method: str = "magnitude") -> ScanSetting:
    from rcc.analysis.sensitivity import ScanSetting

    return ScanSetting(rank=rank, sparsity=sparsity, method=method)


def scan_job(session: Session, directory: str, node: int, names: Sequence[str],
             setting: ScanSetting) -> Callable[[Callable, Callable], Message]:
    """A job for ``OpRunner.run``: scan ``names`` of the live model at ``node`` as the CLI does, and store it.

    Runs only while no op runs (the runner runs one job at a time), so the live model is the head's.
    """

    def job(progress, cancel) -> Message:
        from dataclasses import replace

        from rcc.analysis.probe import outcome_probe
        from rcc.analysis.sensitivity import (
            save_sensitivity,
            scan_sensitivity,
            select_layers,
            sensitivity_path,
        )
        from rcc.errors import RccError
        from rcc.session.progress import OpProgress

        workspace = session.workspace
        if workspace is None:
            raise RccError(f"session {directory!r} has no model loaded; allowed: a session with a model")
        model = workspace.model
        layers = select_layers(model, list(names) or None)
        split = workspace.eval_split
        calibration, _ = workspace.calibration(CALIB_PER_CLASS, setting.seed)

        def unit(done: int, total: int, name: str) -> None:
            progress(OpProgress(op="analyze_sensitivity", phase="sensitivity", done=done, total=total, detail=name))

        result = scan_sensitivity(model, setting, outcome_probe(workspace.dataset(split)), calibration, layers,
                                  progress=unit, cancel=cancel, data=workspace.data, split=split)
        result = replace(result, node=node)
        path = save_sensitivity(result, sensitivity_path(directory, node))
        return SensitivityScanned(result, str(path))

    return job
