"""The history graph: nodes, edges, the op log, metrics and labels in one SQLite database.

A node is a model state (a name → blob-hash manifest plus the compressed structure and the
plan that made it) with its metrics. Every op is recorded with the node it started from and
the node it left current. An op and the node it made are committed in one transaction, after
their blobs are on disk, so a crash leaves either the whole node or nothing of it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rcc.errors import RccError
from rcc.session.metric_keys import metric_key, modern_metrics, modern_split

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ops (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, body TEXT NOT NULL,
    node_before INTEGER, node_after INTEGER, created REAL NOT NULL, seconds REAL NOT NULL,
    result TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY, op_seq INTEGER NOT NULL, created REAL NOT NULL,
    structure TEXT NOT NULL, plan TEXT NOT NULL, summary TEXT NOT NULL DEFAULT '',
    params INTEGER NOT NULL, label TEXT NOT NULL DEFAULT '', note TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS edges (parent INTEGER NOT NULL, child INTEGER NOT NULL, PRIMARY KEY (parent, child));
CREATE TABLE IF NOT EXISTS tensors (
    node INTEGER NOT NULL, name TEXT NOT NULL, hash TEXT NOT NULL, nbytes INTEGER NOT NULL,
    PRIMARY KEY (node, name));
CREATE TABLE IF NOT EXISTS metrics (
    node INTEGER NOT NULL, key TEXT NOT NULL, value REAL NOT NULL, op_seq INTEGER NOT NULL,
    PRIMARY KEY (node, key));
"""


@dataclass(frozen=True)
class NodeRecord:
    id: int
    parent: int | None
    op_seq: int
    op_kind: str
    created: float
    params: int
    summary: str = ""
    label: str = ""
    note: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # "<split>/<metric>" and "size/…" (metric_keys)
    eval_split: str = ""  # the session's eval split: ``eval_metric`` is its primary metric

    @property
    def eval_metric(self) -> float | None:
        """The node's primary metric on the eval split (what the cascade and search compare), if measured."""
        return self.metrics.get(metric_key(self.eval_split)) if self.eval_split else None


@dataclass(frozen=True)
class OpRecord:
    seq: int
    kind: str
    body: dict
    node_before: int | None
    node_after: int | None
    created: float
    seconds: float
    result: dict = field(default_factory=dict)


@dataclass(frozen=True)
class NewNode:
    """What a model-changing op produced, to be committed with the op."""

    parent: int | None
    structure: dict
    plan: dict
    tensors: Mapping[str, tuple[str, int]]  # state-dict name → (blob hash, bytes)
    params: int
    summary: str = ""


@dataclass(frozen=True)
class NodeState:
    """A node's model state as stored: structure and the name → hash manifest."""

    id: int
    structure: dict
    plan: dict
    tensors: dict[str, str]


class DatabaseDamaged(RccError):
    """A session database SQLite cannot read (truncated, overwritten): ``rcc-tui session repair`` rebuilds it."""


@contextmanager
def _damage_is_a_user_error(path: Path):
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if type(exc) is not sqlite3.DatabaseError:  # locked, read-only, constraint: not damage
            raise
        raise DatabaseDamaged(f"session database {str(path)!r} is damaged ({exc}); rebuild it from the journal "
                              f"and the store with `rcc-tui session repair {path.parent}`") from exc


class _LockedConnection:
    """A sqlite3 connection whose calls are serialised: the app reads the graph on its main
    thread while a worker thread commits ops."""

    def __init__(self, connection: sqlite3.Connection, path: Path):
        self._connection = connection
        self.path = path
        self.lock = threading.RLock()

    def execute(self, *args):
        with self.lock, _damage_is_a_user_error(self.path):
            return _Rows(self._connection.execute(*args).fetchall(), self._connection)

    def executemany(self, *args):
        with self.lock, _damage_is_a_user_error(self.path):
            self._connection.executemany(*args)

    def executescript(self, script: str):
        with self.lock, _damage_is_a_user_error(self.path):
            self._connection.executescript(script)

    def close(self) -> None:
        with self.lock:
            self._connection.close()


class _Rows(list):
    """Rows fetched under the lock, with the ``fetchone`` / ``lastrowid`` callers use."""

    def __init__(self, rows, connection):
        super().__init__(rows)
        self.lastrowid = connection.execute("SELECT last_insert_rowid()").fetchone()[0]

    def fetchone(self):
        return self[0] if self else None


class HistoryGraph:
    def __init__(self, path: str | Path, read_only: bool = False, journal=None):
        self.path = Path(path)
        self.journal = journal  # rcc.session.journal.Journal: each commit's record, before COMMIT
        uri = f"file:{self.path}?mode=ro" if read_only else f"file:{self.path}"
        try:
            self.db = _LockedConnection(sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None,
                                                        check_same_thread=False), self.path)
            if not read_only:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                self.db.executescript(SCHEMA)
                if self.meta("schema") is None:
                    self.set_meta({"schema": str(SCHEMA_VERSION)})
            version = self.meta("schema")
        except sqlite3.DatabaseError as exc:
            raise DatabaseDamaged(f"session database {str(self.path)!r} cannot be opened ({exc}); rebuild it from "
                                  f"the journal and the store with `rcc-tui session repair {self.path.parent}`") from exc
        if version != str(SCHEMA_VERSION):
            raise RccError(f"session database {str(self.path)!r} has schema {version!r}; "
                           f"allowed: {SCHEMA_VERSION} (written by this rcc-tui)")

    def close(self) -> None:
        self.db.close()

    # -- meta ----------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, values: Mapping[str, str]) -> None:
        with self._transaction():
            self._set_meta(values)

    def _set_meta(self, values: Mapping[str, str]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items()))

    @property
    def head(self) -> int | None:
        value = self.meta("head")
        return None if value is None else int(value)

    # -- writing -------------------------------------------------------------------------
    def _transaction(self):
        graph = self

        class _Tx:
            def __enter__(self):
                graph.db.lock.acquire()  # the whole transaction, not only each statement
                graph.db.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind, value, tb):
                try:
                    graph.db.execute("COMMIT" if kind is None else "ROLLBACK")
                finally:
                    graph.db.lock.release()
                return False

        return _Tx()

    def record(self, kind: str, body: dict, node_before: int | None, seconds: float,
               new_node: NewNode | None = None, head: int | None = None,
               metrics: Mapping[str, float] | None = None, metrics_node: int | None = None,
               label: tuple[int, str, str] | None = None, result: dict | None = None,
               meta: Mapping[str, str] | None = None) -> tuple[int, int | None]:
        """Commit an op and everything it made in one transaction; returns (op seq, new node id).

        The commit's record goes to the journal (if any) inside the transaction, before COMMIT.
        """
        with self._transaction():
            seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM ops").fetchone()[0]
            node_id = None
            node = None
            if new_node is not None:
                node_id = self.db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM nodes").fetchone()[0]
                node = {"id": node_id, "parent": new_node.parent, "structure": new_node.structure,
                        "plan": new_node.plan, "summary": new_node.summary, "params": new_node.params,
                        "tensors": {name: [digest, size] for name, (digest, size) in new_node.tensors.items()}}
            after = node_id if node_id is not None else (head if head is not None else node_before)
            target = node_id if metrics_node is None else metrics_node
            record = {"seq": seq, "kind": kind, "body": body, "node_before": node_before, "node_after": after,
                      "created": time.time(), "seconds": seconds, "result": result or {}, "node": node,
                      "metrics": [[target, k, float(v)] for k, v in (metrics or {}).items()] if target else [],
                      "label": list(label) if label is not None else None,
                      "meta": {**(meta or {}), **({"head": str(after)} if after is not None else {})}}
            self.apply_record(record)
            if self.journal is not None:
                self.journal.append(record)
        return seq, node_id

    def apply_record(self, record: Mapping) -> None:
        """Write one commit record (as ``record`` makes it, or as read back from the journal)."""
        seq = record["seq"]
        self.db.execute(
            "INSERT INTO ops (seq, kind, body, node_before, node_after, created, seconds, result) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, record["kind"], json.dumps(record["body"], sort_keys=True), record["node_before"],
             record["node_after"], record["created"], record["seconds"], json.dumps(record.get("result") or {})))
        node = record.get("node")
        if node is not None:
            self.db.execute(
                "INSERT INTO nodes (id, op_seq, created, structure, plan, summary, params) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (node["id"], seq, record["created"], json.dumps(node["structure"], sort_keys=True),
                 json.dumps(node["plan"], sort_keys=True), node.get("summary", ""), node["params"]))
            if node.get("parent") is not None:
                self.db.execute("INSERT INTO edges (parent, child) VALUES (?, ?)", (node["parent"], node["id"]))
            self.db.executemany("INSERT INTO tensors (node, name, hash, nbytes) VALUES (?, ?, ?, ?)",
                                [(node["id"], name, digest, size) for name, (digest, size) in node["tensors"].items()])
        if record.get("metrics"):
            self.db.executemany("INSERT OR REPLACE INTO metrics (node, key, value, op_seq) VALUES (?, ?, ?, ?)",
                                [(target, key, float(value), seq) for target, key, value in record["metrics"]])
        label = record.get("label")
        if label is not None:
            self.db.execute("UPDATE nodes SET label = ?, note = ? WHERE id = ?", (label[1], label[2], label[0]))
        if record.get("meta"):
            self._set_meta(record["meta"])

    def history(self) -> list[dict]:
        """The whole graph as commit records, in op order (what a journal holds; for sessions made before it)."""
        nodes = {row[1]: row for row in self.db.execute(
            "SELECT id, op_seq, structure, plan, summary, params FROM nodes")}
        parents = dict(self.db.execute("SELECT child, parent FROM edges"))
        metrics: dict[int, list] = {}
        for node, key, value, seq in self.db.execute("SELECT node, key, value, op_seq FROM metrics"):
            metrics.setdefault(seq, []).append([node, key, value])
        records = []
        for op in self.ops():
            row = nodes.get(op.seq)
            node = None
            if row is not None:
                node_id = row[0]
                node = {"id": node_id, "parent": parents.get(node_id), "structure": json.loads(row[2]),
                        "plan": json.loads(row[3]), "summary": row[4], "params": row[5],
                        "tensors": {name: [digest, size] for name, digest, size in self.db.execute(
                            "SELECT name, hash, nbytes FROM tensors WHERE node = ?", (node_id,))}}
            label = None
            if op.kind == "label" and isinstance(op.body.get("node"), int):
                label = [op.body["node"], op.body.get("label", ""), op.body.get("note", "")]
            records.append({"seq": op.seq, "kind": op.kind, "body": op.body, "node_before": op.node_before,
                            "node_after": op.node_after, "created": op.created, "seconds": op.seconds,
                            "result": op.result, "node": node, "metrics": metrics.get(op.seq, []), "label": label,
                            "meta": {"head": str(op.node_after)} if op.node_after is not None else {}})
        if records:  # the settings (model, data, splits, plan) as they are now, with the last commit
            settings = dict(self.db.execute("SELECT key, value FROM meta WHERE key != 'schema'"))
            records[-1]["meta"] = {**settings, **records[-1]["meta"]}
        return records

    def op_seqs(self) -> list[int]:
        return [row[0] for row in self.db.execute("SELECT seq FROM ops ORDER BY seq")]

    # -- reading -------------------------------------------------------------------------
    def eval_split(self) -> str:
        """The session's eval split by its current name ('' before the first op)."""
        return modern_split(self.meta("data"), self.meta("eval_split")) or ""

    def nodes(self) -> list[NodeRecord]:
        """Every node, oldest first, with its parent, op, label and metrics (legacy keys renamed)."""
        data, eval_split = self.meta("data"), self.eval_split()
        metrics: dict[int, dict[str, float]] = {}
        for node, key, value in self.db.execute("SELECT node, key, value FROM metrics"):
            metrics.setdefault(node, {})[key] = value
        metrics = {node: modern_metrics(values, data, eval_split) for node, values in metrics.items()}
        parents = dict(self.db.execute("SELECT child, parent FROM edges"))
        rows = self.db.execute(
            "SELECT n.id, n.op_seq, o.kind, n.created, n.params, n.summary, n.label, n.note "
            "FROM nodes n JOIN ops o ON o.seq = n.op_seq ORDER BY n.id")
        return [NodeRecord(id=i, parent=parents.get(i), op_seq=seq, op_kind=kind, created=created, params=params,
                           summary=summary, label=label, note=note, metrics=metrics.get(i, {}),
                           eval_split=eval_split)
                for i, seq, kind, created, params, summary, label, note in rows]

    def node(self, node: int) -> NodeRecord:
        for record in self.nodes():
            if record.id == node:
                return record
        raise RccError(f"node {node} does not exist; allowed: {self._node_range()}")

    def _node_range(self) -> str:
        low, high = self.db.execute("SELECT MIN(id), MAX(id) FROM nodes").fetchone()
        return "no node yet" if low is None else f"a node id from {low} to {high}"

    def state(self, node: int) -> NodeState:
        row = self.db.execute("SELECT structure, plan FROM nodes WHERE id = ?", (node,)).fetchone()
        if row is None:
            raise RccError(f"node {node} does not exist; allowed: {self._node_range()}")
        tensors = dict(self.db.execute("SELECT name, hash FROM tensors WHERE node = ?", (node,)))
        return NodeState(node, json.loads(row[0]), json.loads(row[1]), tensors)

    def ops(self) -> list[OpRecord]:
        rows = self.db.execute("SELECT seq, kind, body, node_before, node_after, created, seconds, result "
                               "FROM ops ORDER BY seq")
        return [OpRecord(seq, kind, json.loads(body), before, after, created, seconds, json.loads(result))
                for seq, kind, body, before, after, created, seconds, result in rows]

    def nodes_using(self, digest: str) -> list[int]:
        return [row[0] for row in self.db.execute("SELECT DISTINCT node FROM tensors WHERE hash = ? ORDER BY node",
                                                  (digest,))]

    def reachable_hashes(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT DISTINCT hash FROM tensors")}

    def node_hashes(self, nodes: Iterable[int]) -> dict[int, dict[str, tuple[str, int]]]:
        out: dict[int, dict[str, tuple[str, int]]] = {}
        for node in nodes:
            out[node] = {name: (digest, size) for name, digest, size in
                         self.db.execute("SELECT name, hash, nbytes FROM tensors WHERE node = ?", (node,))}
        return out
