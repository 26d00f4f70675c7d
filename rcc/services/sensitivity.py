"""Sensitivity scans: compress each layer alone, measure how far predictions drift, keep the scan.

``rcc-tui analyze sensitivity`` scans a loaded model (a spec, or a session node read-only);
the app scans its session's live model at the head. Both run ``scan_layers``; a scan of a
session node is stored at ``<session>/analysis/sensitivity-<node>.json`` (``store_scan``),
where the app's tree, the search's seed and the CLI all read it. A scan records no op and
leaves the model bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from rcc.session.progress import OpProgress, ProgressFn

if TYPE_CHECKING:
    from rcc.analysis.sensitivity import ScanSetting, SensitivityResult
    from rcc.compression.calibration import CalibrationData
    from rcc.eval.encode import CancelCheck
    from rcc.models.adapter import VLModel
    from rcc.schema.layers import LayerInfo

CALIB_PER_CLASS = 16  # calibration images per class, as `rcc-tui analyze sensitivity --calib-per-class`
PHASE = "sensitivity"


@dataclass(frozen=True)
class StoredScan:
    """A scan of a session node and the file it was stored in."""

    result: SensitivityResult
    path: Path


def scan_layers(model: VLModel, data: str, split: str, setting: ScanSetting, layers: Sequence[LayerInfo],
                group_by: str = "layer", calib_per_class: int = CALIB_PER_CLASS, progress: ProgressFn | None = None,
                cancel: CancelCheck | None = None, dataset=None,
                calibration: CalibrationData | None = None) -> SensitivityResult:
    """Scan ``layers`` of ``model`` (``rcc.analysis.sensitivity.select_layers`` picks them) on ``split`` of ``data``.

    ``split`` must be the eval split: a scan guides what gets compressed, so it never reads the
    split reported as test (``rcc.data.roles.eval_split_of`` refuses it). ``dataset`` and
    ``calibration`` (train split) may be given when the caller has them loaded already (a
    session's workspace caches both); otherwise they are loaded here. Progress is phase
    ``sensitivity``, one unit per scanned layer (or group).
    """
    from rcc.analysis.probe import outcome_probe
    from rcc.analysis.sensitivity import scan_sensitivity
    from rcc.compression.calibration_sets import calibration_sets
    from rcc.data.registry import load_dataset
    from rcc.data.roles import eval_split_of

    split = eval_split_of(data, split)
    if dataset is None:
        dataset = load_dataset(data, split)
    if calibration is None:
        calibration, _ = calibration_sets(data, per_class=calib_per_class, seed=setting.seed)

    def unit(done: int, total: int, name: str) -> None:
        progress(OpProgress(op="analyze_sensitivity", phase=PHASE, done=done, total=total, detail=name))

    if progress:
        progress(OpProgress(op="analyze_sensitivity", phase=PHASE, done=0, total=len(layers)))
    return scan_sensitivity(model, setting, outcome_probe(dataset), calibration, layers, group_by,
                            progress=unit if progress else None, cancel=cancel, data=data, split=split)


def store_scan(result: SensitivityResult, session_dir: str | Path, node: int) -> StoredScan:
    """Keep ``result`` as the scan of ``node`` in the session (replacing an older scan of it)."""
    from rcc.analysis.sensitivity import save_sensitivity, sensitivity_path

    result = replace(result, node=node)
    return StoredScan(result, Path(save_sensitivity(result, sensitivity_path(session_dir, node))))


def scan_session(session, names: Sequence[str], setting: ScanSetting, progress: ProgressFn | None = None,
                 cancel: CancelCheck | None = None) -> StoredScan:
    """Scan ``names`` of an open session's live model (its head node) on its eval split, and store it.

    Call it only while no op runs on the session: the live model must be the head's.
    """
    from rcc.analysis.sensitivity import select_layers
    from rcc.errors import RccError

    workspace = session.workspace
    if workspace is None or session.head is None:
        raise RccError(f"session {str(session.directory)!r} has no model loaded; allowed: a session with a model")
    split = workspace.eval_split
    calibration, _ = workspace.calibration(CALIB_PER_CLASS, setting.seed)
    layers = select_layers(workspace.model, list(names) or None)
    result = scan_layers(workspace.model, workspace.data, split, setting, layers, progress=progress, cancel=cancel,
                         dataset=workspace.dataset(split), calibration=calibration)
    return store_scan(result, session.directory, session.head)
