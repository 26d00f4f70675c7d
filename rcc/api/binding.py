"""Which session, if any, records what the Python API does to a model, and the workspace it runs in.

``rcc.load(spec, session=PATH)`` binds the loaded model to its open session: later API calls on
that model (``Cascade.run``, ``evaluate``, ``export``) go through ``Session.apply`` as ops.
An unbound model runs in a private workspace per dataset (data roles, cached splits and
calibration sets), the same object a session uses, so both paths compute the same thing.
"""

from __future__ import annotations

import weakref

from rcc.errors import RccError

_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → open Session
_WORKSPACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → {data spec: Workspace}
DEFAULT_DATA = "digits"


def bind(model, session) -> None:
    _SESSIONS[model] = session


def unbind(model):
    """Forget the model's session and return it (None if it had none)."""
    return _SESSIONS.pop(model, None)


def session_of(model, data: str | None = None):
    """The open session recording ``model`` (None for an unbound model); ``data``, when given, must be its data."""
    session = _SESSIONS.get(model)
    if session is None:
        return None
    if session.workspace is None or session.model is not model:
        raise RccError(f"session {str(session.directory)!r} reloaded its model after an error; allowed: "
                       f"rcc.load(..., session={str(session.directory)!r}) again for the live model")
    if data is not None and _canonical(data) != _canonical(session.workspace.data):
        raise RccError(f"data {data!r} is not the data of session {str(session.directory)!r} "
                       f"({session.workspace.data!r}); allowed: that data, or leave data out")
    return session


def workspace_for(model, data: str | None):
    """The unbound model's workspace on ``data`` (default ``digits``): its data roles, splits and calibration."""
    from rcc.data.roles import data_roles
    from rcc.session.workspace import Workspace

    spec = _canonical(data or DEFAULT_DATA)
    spaces = _WORKSPACES.setdefault(model, {})
    if spec not in spaces:
        roles = data_roles(spec)
        spaces[spec] = Workspace(model, spec, roles.eval, roles.test)
    return spaces[spec]


def _canonical(data: str) -> str:
    from rcc.data.registry import canonical_spec

    if not isinstance(data, str) or not data.strip():
        from rcc.data.registry import DATASET_FORMS

        raise RccError(f"data {data!r} is not a dataset spec; allowed: {', '.join(DATASET_FORMS)}")
    return canonical_spec(data)
