"""User-facing errors: one line that names the bad value and what is allowed.

The CLI prints these without a traceback and exits 2; the app shows them as notifications.
Anything else that escapes is a bug in rcc, not a user mistake.
"""


class RccError(Exception):
    """Base of every error caused by user input (specs, paths, data, settings)."""


class ModelSpecError(RccError):
    """A model spec that cannot be parsed, found or loaded."""


class DataError(RccError):
    """A dataset spec, file or record that cannot be read."""


class EvalError(RccError):
    """An evaluation that cannot run on the given model and data (e.g. captioning on CLIP)."""


class Cancelled(RccError):
    """Raised when the user cancels a long operation between batches/layers."""
