"""The one error type of the analysis package."""

from rcc.errors import RccError


class AnalysisError(RccError):
    """An analysis asked for with values it cannot use (unknown layer, node, setting, file)."""
