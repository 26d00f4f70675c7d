"""``rcc.load``, ``rcc.evaluate``, ``rcc.export``, ``rcc.close``: the notebook entry points.

Each does what the CLI command of the same name does. With a model loaded under
``session=PATH`` each call is a session op (``load_model``, ``evaluate``, ``export``), so the
notebook's work is in the session's op log: ``rcc-tui replay PATH`` redoes it and
``rcc-tui open PATH`` shows it in the app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rcc.api.binding import bind, session_of, unbind, workspace_for
from rcc.errors import RccError


def load(spec: str = "rcc-mini", *, session: str | Path | None = None, data: str | None = None,
         device: str = "auto"):
    """The model named by ``spec`` (``rcc-mini``, ``open_clip:…``, ``hf:…``, ``hf-blip:…``) as a VLModel.

    With ``session``: a new session there on ``spec`` and ``data`` (default ``digits``), or the
    existing session at that path brought back at its head node; the model's later API calls
    are recorded in it.
    """
    if session is None:
        if data is not None:
            raise RccError(f"data {data!r} given without a session; allowed: data with session=PATH (the "
                           f"session's dataset), else pass data to Cascade.run / rcc.evaluate")
        from rcc.models.registry import load_model

        return load_model(spec, device=device)
    from rcc.session.session import Session, is_session

    if not is_session(session):
        created = Session.create(session, model=spec, data=data or "digits", device=device)
        bind(created.model, created)
        return created.model
    opened = Session.open(session, device=device)
    try:
        recorded = opened.setting("model")
        if spec != recorded:
            raise RccError(f"model {spec!r} is not the model of session {str(session)!r} ({recorded!r}); "
                           f"allowed: rcc.load({recorded!r}, session={str(session)!r})")
        bind(opened.model, opened)
        session_of(opened.model, data)  # refuses data other than the session's
    except BaseException:
        unbind(opened.model)
        opened.close()
        raise
    return opened.model


def close(model) -> None:
    """Close the session recording ``model`` (releasing its lock, so the app can open it); no-op if none."""
    session = unbind(model)
    if session is not None:
        session.close()


def evaluate(model, data: str | None = None, split: str = "test", cancel=None) -> dict[str, float]:
    """The model's metrics on ``split`` of ``data`` (default: the session's data, else ``digits``), each
    named by its split: ``{"test/top1": …, "test/primary": …}``."""
    from rcc.session.flows import evaluate_on
    from rcc.session.ops import Evaluate

    session = session_of(model, data)
    if session is not None:
        return dict(session.apply(Evaluate(split=split), cancel=cancel).metrics)
    metrics, _report = evaluate_on(workspace_for(model, data), split, cancel)
    return metrics


@dataclass(frozen=True)
class Exported:
    """What an export wrote: its format, directory and bytes, beside the dense weights' bytes."""

    format: str
    directory: Path
    total_bytes: int
    dense_bytes: int
    node: int | None = None  # the session node exported, when recorded
    details: dict = field(default_factory=dict)  # onnx: the parity measured per encoder; notes on what stays dense


def export(model, out: str | Path, format: str = "compressed") -> Exported:
    """Write the model to ``out`` (a new or empty directory) as ``format``: compressed, dense, onnx or
    hf-compressed (see ``rcc-tui export --help``)."""
    from rcc.session.ops import Export

    op = Export(format=format, out=str(Path(out).expanduser().resolve()))  # the op's own checks of format
    session = session_of(model)
    if session is not None:
        result = dict(session.apply(op).result)
        common = [result.pop(key) for key in ("out", "total_bytes", "dense_bytes", "node")]
        result.pop("format", None)
        return Exported(op.format, Path(common[0]), *common[1:], details=result)
    from rcc.exports import export_model

    report = export_model(model, op.format, op.out)
    return Exported(op.format, report.directory, report.total_bytes, report.dense_bytes, details=report.details)
