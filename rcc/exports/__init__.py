"""Exports out of rcc: compressed and dense (``checkpoints``), ONNX (``onnx_export``) and compressed-tensors
(``hf_compressed``).

``export_model(model, format, out)`` is the one entry point the session op, the CLI and the app use.
Plural on purpose: ``rcc.export`` is the Python API's function (``rcc/api``), which a subpackage of
that name would shadow.
"""

from rcc.exports.formats import EXPORT_FORMATS, export_model

__all__ = ["EXPORT_FORMATS", "export_model"]
