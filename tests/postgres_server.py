"""A throwaway PostgreSQL server for tests: the one CI exports, or one started here.

CI (.ci/run) starts a server and exports its URL in RCC_TEST_POSTGRES_URL. Locally, when that
is unset, ``throwaway_server`` starts one from the PostgreSQL binaries if they are installed
(initdb into a new temporary directory, listening on 127.0.0.1 only, on a free port, trust
authentication for that local user) and stops it and deletes its data afterwards. initdb
refuses to run as root, so as root the server runs as the ``postgres`` user. ``unavailable``
says why no server can be had (the tests that need one skip with that reason).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "RCC_TEST_POSTGRES_URL"
SERVER_USER = "postgres"  # who runs the server when we are root


def find_binary(name: str) -> str | None:
    """``name`` on PATH, else in Debian's /usr/lib/postgresql/VERSION/bin (newest version)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: [int(x) if x.isdigit() else 0 for x in p.split("/")[4].split(".")])
    return candidates[-1] if candidates else None


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    return [runuser, "-u", SERVER_USER, "--"] if runuser else ["su", SERVER_USER, "-s", "/bin/sh", "-c"]


def unavailable() -> str | None:
    """Why no throwaway server can be started here (None: it can)."""
    import importlib.util

    if not any(importlib.util.find_spec(driver) for driver in ("psycopg", "psycopg2")):
        return "no PostgreSQL driver is installed (pip install 'rcc-tui[postgres]')"
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if find_binary(name) is None]
    if missing:
        return f"PostgreSQL binaries are missing ({', '.join(missing)}); .ci/run installs them"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} user to run initdb as"
        if not shutil.which("runuser"):
            return "running as root and runuser is missing"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(_as_server_user() + command, check=True, capture_output=True, text=True, **kwargs)


@contextmanager
def throwaway_server(database: str = "rcc") -> Iterator[str]:
    """Start a server, create ``database``, yield its URL; stop the server and delete its data after."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    root = tempfile.mkdtemp(prefix="rcc-pg-")
    data = os.path.join(root, "data")
    os.mkdir(data)
    if os.geteuid() == 0:
        import pwd

        entry = pwd.getpwnam(SERVER_USER)
        for path in (root, data):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        user = SERVER_USER
    else:
        import getpass

        user = getpass.getuser()
    port = _free_port()
    pg_ctl = find_binary("pg_ctl")
    started = False
    try:
        _run([find_binary("initdb"), "-D", data, "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"])
        _run([pg_ctl, "-D", data, "-l", os.path.join(root, "server.log"), "-w", "-t", "60",
              "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
        started = True
        createdb = find_binary("createdb")
        _run([createdb, "-h", "127.0.0.1", "-p", str(port), "-U", user, database])
        yield f"postgresql://{user}@127.0.0.1:{port}/{database}"
    except subprocess.CalledProcessError as exc:
        log = os.path.join(root, "server.log")
        tail = open(log).read()[-2000:] if os.path.exists(log) else ""
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr or exc}\n{tail}") from exc
    finally:
        if started:
            subprocess.run(_as_server_user() + [pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"],
                           capture_output=True)
            time.sleep(0.1)
        shutil.rmtree(root, ignore_errors=True)
