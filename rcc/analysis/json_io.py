"""Analysis results on disk: strict JSON (no NaN), written atomically, readable by anyone."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rcc.analysis.errors import AnalysisError


def write_json_atomic(path: str | Path, payload: dict) -> Path:
    """Write indented JSON through a temporary file and a rename, so readers never see half a file."""
    target = Path(path)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is for reading
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, allow_nan=False)
            handle.write("\n")
        os.replace(tmp, target)
    except OSError as error:
        raise AnalysisError(f"cannot write {str(target)!r}: {error.strerror or error}") from None
    except ValueError as error:  # NaN or infinity: not JSON
        raise AnalysisError(f"cannot write {str(target)!r}: {error}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return target
