"""What model and weights loaders raise on a bad file, and a one-line reason without their advice.

Garbage, truncated or foreign files reach users as ``UnpicklingError`` (torch.load with
``weights_only``), ``SafetensorError``, ``UnicodeDecodeError`` (a binary file read as a
config) and the usual ``OSError`` / ``ValueError`` family. torch's own message for a refused
pickle suggests re-running with ``weights_only=False``, which would execute code from the
file: that advice never reaches the user.
"""

from __future__ import annotations

import pickle  # only to name UnpicklingError, what torch.load(weights_only=True) raises; nothing is unpickled
import re

from safetensors import SafetensorError

# Errors a loader raises for a bad source or file (missing, unreadable, malformed, not fitting
# the config). Anything else is a bug in rcc worth a traceback.
LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError)

_ADVICE = re.compile(r"weights_only|trusted source|arbitrary code|file an issue|documentation of torch\.load",
                     re.IGNORECASE)


def load_reason(exc: BaseException, limit: int = 200) -> str:
    """A short reason for ``exc``: its first meaningful line, never torch's weights_only advice."""
    text = str(exc).strip()
    if isinstance(exc, pickle.UnpicklingError) or "WeightsUnpickler" in text:
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines() if "WeightsUnpickler" in text \
            else []
        detail = [line.strip() for line in detail if line.strip() and not _ADVICE.search(line)]
        found = f" ({detail[0]})" if detail else ""
        return f"not a safetensors file nor a weights-only torch checkpoint{found}"[:limit]
    if isinstance(exc, UnicodeDecodeError):
        return "a binary file where text (JSON) was expected"
    if isinstance(exc, SafetensorError):
        return f"not a valid safetensors file ({text.splitlines()[0] if text else 'unreadable'})"[:limit]
    sentences = [part.strip() for line in text.splitlines() for part in re.split(r"(?<=\.)\s+", line)]
    kept = [s for s in sentences if s and not _ADVICE.search(s)]
    first = kept[0] if kept else type(exc).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."
