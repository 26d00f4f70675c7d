"""Where studies live: an SQLite file in the session by default, or any Optuna RDB URL.

    (none)                          sqlite:///SESSION/search.db   (embedded, nothing to start)
    --storage sqlite:///PATH.db     another SQLite file
    --storage postgresql://USER@HOST:PORT/DB, mysql+pymysql://...   a server many machines share

A server URL is how workers on many machines join one study; rcc builds no scheduler of its
own. Passwords do not belong in URLs that get recorded (an ``apply_trial`` op keeps its
storage URL in the op log, and recipes are shared): give them through the driver's usual
channels (PGPASSWORD or ~/.pgpass for PostgreSQL). ``display_url`` masks one if present.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from rcc.errors import RccError

DEFAULT_FILE = "search.db"
URL_FORMS = "sqlite:///PATH, postgresql://USER@HOST:PORT/DB, mysql+pymysql://USER@HOST/DB"
DRIVERS = {"postgresql": "psycopg (pip install 'rcc-tui[postgres]')", "mysql": "pymysql"}


class StorageError(RccError):
    """A storage URL that cannot be parsed or opened."""


def default_url(session_dir: str | Path) -> str:
    """``sqlite:///ABS/SESSION/search.db``: the study file inside the session directory."""
    return f"sqlite:///{(Path(session_dir).resolve() / DEFAULT_FILE)}"


def resolve_url(storage: str | None, session_dir: str | Path | None) -> str:
    """The URL to open: ``storage`` as given (a bare ``.db`` path becomes SQLite), else the session's file."""
    if storage is None or storage == "":
        if session_dir is None:
            raise StorageError("no storage given and no session to hold search.db; allowed: --storage URL")
        return default_url(session_dir)
    if "://" not in storage and storage.endswith((".db", ".sqlite", ".sqlite3")):
        return f"sqlite:///{Path(storage).expanduser().resolve()}"
    check_url(storage)
    return storage


def check_url(url: str) -> None:
    """Refuse what is not a database URL, with the forms that are."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StorageError(f"storage {url!r} is not a database URL; allowed: {URL_FORMS}") from exc
    if not parsed.drivername:
        raise StorageError(f"storage {url!r} names no database; allowed: {URL_FORMS}")


def display_url(url: str) -> str:
    """The URL with any password masked (for messages and tables)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def without_password(url: str) -> str:
    """The URL with its password left out (what an op log may record)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return url if parsed.password is None else parsed.set(password=None).render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL (None for other databases and in-memory SQLite)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def with_installed_driver(url: str) -> str:
    """A bare ``postgresql://`` URL with the PostgreSQL driver that is installed.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, 2.0 to psycopg2; whichever the
    installed SQLAlchemy wants, use the other driver when only that one is installed.
    """
    import importlib.util

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername != "postgresql":
        return url
    try:
        parsed.get_dialect().import_dbapi()
        return url
    except ImportError:
        for driver in ("psycopg", "psycopg2"):
            if importlib.util.find_spec(driver) is not None:
                return parsed.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
    return url


def open_storage(url: str, create: bool = True, heartbeat: bool = False):
    """An ``optuna.storages.RDBStorage`` on ``url``.

    ``create`` False never writes: a missing SQLite file is an error instead of a new database,
    and no table is created (for listings). ``heartbeat`` makes running trials beat every 20 s,
    so a worker that dies leaves a trial other workers mark failed after 120 s, not one that
    looks RUNNING forever.
    """
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    check_url(url)
    url = with_installed_driver(url)
    path = sqlite_path(url)
    kwargs: dict = {}
    if path is not None:
        if not create and not path.is_file():
            raise StorageError(f"storage {display_url(url)!r} does not exist yet; allowed: the storage of a study "
                               f"`rcc-tui search` has run")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Several worker processes write one file: wait for the lock rather than fail at once.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    if heartbeat:
        kwargs.update(heartbeat_interval=20, grace_period=120)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, skip_table_creation=not create, **kwargs)
    except ImportError as exc:
        backend = url.split(":", 1)[0].split("+", 1)[0]
        need = DRIVERS.get(backend, "its SQLAlchemy driver")
        raise StorageError(f"storage {display_url(url)!r} needs a database driver that is not installed; "
                           f"allowed: install {need}") from exc
    except (SQLAlchemyError, OSError, optuna.exceptions.StorageInternalError) as exc:
        cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ else exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise StorageError(f"storage {display_url(url)!r} cannot be opened: {first}") from exc
