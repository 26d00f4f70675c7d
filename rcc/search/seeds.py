"""Sensitivity figures that seed a study: layer name → score (higher: more sensitive).

Two forms are read: a flat JSON object ``{"layer name": score, ...}``, and the scan file
``rcc-tui analyze sensitivity`` writes (``{"units": [{"layers": [...], "drift": d}, ...]}``,
every layer of a unit scored with the unit's drift). A session keeps the scan of node N in
``analysis/sensitivity-N.json``; ``session_sensitivity`` finds it, so a search seeds itself
from a scan of the node it starts from when there is one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rcc.errors import RccError

SCAN_FILE = "analysis/sensitivity-{node}.json"
SCAN_SCORE = "drift"


def scores_from_json(data: Any, source: str) -> dict[str, float]:
    """Layer → score from either form (see the module docstring); refuses anything else in one line."""
    if isinstance(data, Mapping) and isinstance(data.get("units"), list):
        try:
            scores = {str(layer): float(unit[SCAN_SCORE]) for unit in data["units"] for layer in unit["layers"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise RccError(f"sensitivity scan {source} is malformed ({type(exc).__name__}: {exc}); allowed: a file "
                           f"written by `rcc-tui analyze sensitivity`") from None
    elif isinstance(data, Mapping) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                           for v in data.values()):
        scores = {str(k): float(v) for k, v in data.items()}
    else:
        raise RccError(f"sensitivity file {source} is neither a scan nor an object of layer name → number")
    scores = {k: v for k, v in scores.items() if math.isfinite(v)}
    if not scores:
        raise RccError(f"sensitivity file {source} holds no finite score")
    return scores


def read_scores(path: str | Path) -> dict[str, float]:
    """Layer → score from a JSON file of either form."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RccError(f"sensitivity file {str(path)!r} cannot be read as JSON: {exc}") from None
    return scores_from_json(data, repr(str(path)))


def session_sensitivity(session_dir: str | Path, node: int) -> tuple[Path, dict[str, float]] | None:
    """The session's scan of ``node`` and its scores, or None when the session has none."""
    path = Path(session_dir) / SCAN_FILE.format(node=int(node))
    return (path, read_scores(path)) if path.is_file() else None
