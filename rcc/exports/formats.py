"""One entry point for every export format: ``export_model(model, format, out)``.

- ``compressed``: rcc's own format, smallest, loads with ``rcc.load_compressed``;
- ``dense``: the original architecture for plain open_clip / transformers;
- ``onnx``: image and text encoders for onnxruntime (``rcc.exports.onnx_export``);
- ``hf-compressed``: a compressed-tensors checkpoint for transformers (``rcc.exports.hf_compressed``).

A failed export leaves the directory as it found it (new or empty).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rcc.errors import RccError
from rcc.models.adapter import VLModel
from rcc.exports.checkpoints import (
    ExportReport, dense_bytes, export_compressed, export_dense, export_report, fresh_directory,
)

EXPORT_FORMATS = ("compressed", "dense", "onnx", "hf-compressed")  # rcc.session.ops.EXPORT_FORMATS


def export_model(model: VLModel, format: str, out_dir: str | Path, extra: dict | None = None) -> ExportReport:
    """Write ``model`` in ``format`` into the new or empty directory ``out_dir``."""
    if format not in EXPORT_FORMATS:
        raise RccError(f"export format {format!r} is unknown; allowed: {', '.join(EXPORT_FORMATS)}")
    if format == "compressed":
        return export_compressed(model, out_dir, extra=extra)
    if format == "dense":
        return export_dense(model, out_dir)
    existed = Path(out_dir).exists()
    out = fresh_directory(out_dir)
    try:
        if format == "onnx":
            from rcc.exports.onnx_export import export_onnx

            details = export_onnx(model, out)
        else:
            from rcc.exports.hf_compressed import export_hf_compressed

            details = export_hf_compressed(model, out)
    except BaseException:
        for path in out.iterdir():  # it was new or empty: put it back that way
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if not existed:
            out.rmdir()
        raise
    return export_report(format, out, dense_bytes(model.module), details)
