"""``rcc-tui session repair``: rebuild a lost or damaged session database from the journal and the store.

The database is a projection of the journal (rcc.session.journal): every commit record is
written into a fresh database, in order, with its original op seq and node id. The damaged
database is kept beside it (``session.db.damaged-<time>``), never deleted. Then every blob a
node names is hashed; a node whose blob is missing or corrupt cannot be checked out, and is
reported by id with the tensor and the problem (the rest of the history is whole).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from rcc.errors import RccError
from rcc.session.journal import JOURNAL, read_journal


class RepairError(RccError):
    """A session that cannot be repaired (no session, no journal, in use)."""


@dataclass
class RepairReport:
    rebuilt: bool  # False: the database was intact and was left alone
    ops: int = 0
    nodes: int = 0
    kept_as: Path | None = None  # where the damaged database was moved
    journal_problems: list[str] = field(default_factory=list)
    broken_nodes: dict[int, str] = field(default_factory=dict)  # node → what is missing or corrupt
    reason: str = ""


def database_intact(path: Path) -> str | None:
    """None if SQLite reads the whole database and its tables; else what is wrong."""
    if not path.is_file():
        return "it is missing"
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            check = connection.execute("PRAGMA integrity_check").fetchall()
            if check != [("ok",)]:
                return f"integrity check: {check[0][0]}"
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = {"meta", "ops", "nodes", "edges", "tensors", "metrics"} - tables
            if missing:
                return f"tables {sorted(missing)} are missing"
            connection.execute("SELECT COUNT(*) FROM ops").fetchone()
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None


def repair(directory: str | Path, force: bool = False) -> RepairReport:
    """Rebuild ``directory``'s database from its journal (when damaged, missing or behind it, or ``force``)."""
    from rcc.session.graph import HistoryGraph
    from rcc.session.lock import SessionLock
    from rcc.session.session import DATABASE, STORE
    from rcc.session.store import TensorStore

    directory = Path(directory)
    journal_path = directory / JOURNAL
    if not directory.is_dir() or not (journal_path.is_file() or (directory / DATABASE).is_file()):
        raise RepairError(f"{str(directory)!r} is not a session; allowed: a session directory (it holds "
                          f"{DATABASE} or {JOURNAL})")
    lock = SessionLock(directory)
    lock.acquire()
    try:
        database = directory / DATABASE
        problem = database_intact(database)
        read = read_journal(journal_path)
        if problem is None and not force:
            behind = _commits(database) < len(read.records) - 1
            if not behind:
                return RepairReport(rebuilt=False, reason="the database is intact and agrees with its journal")
            problem = "it lacks commits its journal holds"
        if not read.records:
            raise RepairError(f"session {str(directory)!r} cannot be repaired: its database is damaged ({problem}) "
                              f"and its journal holds no commit ({'; '.join(read.problems) or 'empty'})")
        kept = _move_aside(database)
        graph = HistoryGraph(database)
        try:
            with graph._transaction():
                for record in read.records:
                    graph.apply_record(record)
            nodes = graph.nodes()
            store = TensorStore(directory / STORE, read_only=True)
            broken = _check_blobs(graph, store)
        finally:
            graph.close()
        return RepairReport(rebuilt=True, ops=len(read.records), nodes=len(nodes), kept_as=kept,
                            journal_problems=read.problems, broken_nodes=broken, reason=problem or "forced")
    finally:
        lock.release()


def _commits(database: Path) -> int:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return connection.execute("SELECT COUNT(*) FROM ops").fetchone()[0]
    finally:
        connection.close()


def _move_aside(database: Path) -> Path | None:
    """Keep the damaged database (and its WAL) under a new name; returns that name."""
    if not database.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = database.with_name(f"{database.name}.damaged-{stamp}")
    os.replace(database, kept)
    for suffix in ("-wal", "-shm"):
        side = database.with_name(database.name + suffix)
        if side.exists():
            os.replace(side, kept.with_name(kept.name + suffix))
    return kept


def _check_blobs(graph, store) -> dict[int, str]:
    """Hash every blob the nodes name; node → the first tensor whose blob is missing or corrupt."""
    users: dict[str, list[tuple[int, str]]] = {}
    for node, tensors in graph.node_hashes(node.id for node in graph.nodes()).items():
        for name, (digest, _) in tensors.items():
            users.setdefault(digest, []).append((node, name))
    bad = store.verify_all(users)
    broken: dict[int, str] = {}
    for digest, problem in bad.items():
        for node, name in users[digest]:
            broken.setdefault(node, f"tensor {name!r}: {problem}")
    return dict(sorted(broken.items()))
