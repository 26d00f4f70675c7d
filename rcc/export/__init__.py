"""Exports out of rcc: compressed and dense (``rcc.session.export``), ONNX and compressed-tensors.

``export_model(model, format, out)`` is the one entry point the session op, the CLI and the app use.
"""

from rcc.export.formats import EXPORT_FORMATS, export_model

__all__ = ["EXPORT_FORMATS", "export_model"]
