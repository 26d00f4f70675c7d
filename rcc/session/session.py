"""``Session``: the one way to change a workbench session, for the app, the CLI and replay alike.

A session is a directory::

    session.db     the history graph: nodes, edges, op log, metrics, labels (SQLite, WAL)
    session.journal  every commit as a JSON line (rcc.session.journal): rebuilds a lost database
    store/         content-addressed tensor blobs (rcc.session.store), hard-linked with the
                   data home's shared store where possible (rcc.session.home)
    session.lock   held (flock) by the one process that has the session open for writing
    exports/       default home of exports

``apply(op)`` runs an op's handler, then commits what it made in one transaction. If the
handler fails or is cancelled, the model and the plan are put back as they were at the head
node, and nothing is recorded: the session is exactly as before the op.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from rcc.compression.plan import CompressionPlan, plan_from_dict, plan_to_dict
from rcc.errors import RccError
from rcc.eval.encode import CancelCheck
from rcc.session import ops as O
from rcc.session.graph import HistoryGraph, NewNode, NodeRecord, NodeState, OpRecord
from rcc.session.lock import SessionLock
from rcc.session.progress import OpProgress, ProgressFn
from rcc.session.store import TensorStore

DATABASE = "session.db"
STORE = "store"
EXPORTS = "exports"


@dataclass(frozen=True)
class OpOutcome:
    seq: int
    op: O.Op
    node_before: int | None
    node_after: int | None
    new_node: int | None
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    result: dict = field(default_factory=dict)
    unchanged: bool = False  # the op could have made a node but changed no tensor: none was recorded


@dataclass(frozen=True)
class GcReport:
    removed: int
    freed_bytes: int  # bytes that left the disk, shared store included (a blob another session links stays)
    kept: int
    shared_removed: int = 0  # blobs of the shared store that no session links any more
    shared_freed_bytes: int = 0


@dataclass(frozen=True)
class DiskUsage:
    total: int  # every file of the session directory
    shared: int  # of which blob bytes also linked elsewhere (the shared store, other sessions)

    @property
    def own(self) -> int:
        return self.total - self.shared


def is_session(directory: str | Path) -> bool:
    return (Path(directory) / DATABASE).is_file()


class Session:
    """An open session; use ``Session.create`` / ``Session.open`` (and close it, or use ``with``)."""

    def __init__(self, directory: Path, graph: HistoryGraph, store: TensorStore, lock: SessionLock | None,
                 device: str):
        self.directory = directory
        self.graph = graph
        self.store = store
        self._lock = lock
        self.device = device
        self.workspace = None  # rcc.session.workspace.Workspace once the model is loaded
        self.plan = CompressionPlan()
        self._current: tuple[dict, dict] | None = None  # (structure, name → hash) of the live model

    # -- opening and closing -------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | Path, model: str = "rcc-mini", data: str = "digits",
               eval_split: str | None = None, test_split: str = "test", device: str = "auto",
               progress: ProgressFn | None = None,
               cancel: CancelCheck | None = None) -> Session:
        """A new session in ``directory`` (new or empty), with its model loaded as the root node."""
        from rcc.output_paths import check_output_dir

        directory = Path(directory)
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise RccError(f"session directory {str(directory)!r} exists and is not empty; "
                           f"allowed: a new or empty directory (or `rcc-tui open` it if it is a session)")
        check_output_dir(directory, "session directory")  # not under a file, writable
        directory.mkdir(parents=True, exist_ok=True)
        session = cls._open(directory, device, read_only=False)
        try:
            session.apply(O.LoadModel(model=model, data=data, eval_split=eval_split, test_split=test_split),
                          progress, cancel)
        except BaseException:
            session.close()
            # Nothing the user made lives here yet: leave the directory as empty as we found it.
            for child in directory.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            raise
        return session

    @classmethod
    def open(cls, directory: str | Path, device: str = "auto", read_only: bool = False,
             load: bool = True, progress: ProgressFn | None = None) -> Session:
        """An existing session; ``load`` brings the model back at the head node (not for read-only)."""
        directory = Path(directory)
        if not is_session(directory):
            raise RccError(f"{str(directory)!r} is not a session; allowed: a directory made by "
                           f"`rcc-tui new` (it holds {DATABASE})")
        session = cls._open(directory, device, read_only)
        try:
            if load and not read_only and session.head is not None:
                session._reload(progress)
        except BaseException:
            session.close()
            raise
        return session

    @classmethod
    def _open(cls, directory: Path, device: str, read_only: bool) -> Session:
        from rcc.models.registry import resolve_device

        lock = None
        if not read_only:
            lock = SessionLock(directory)
            lock.acquire()
        try:
            graph = HistoryGraph(directory / DATABASE, read_only=read_only)
        except BaseException:
            if lock:
                lock.release()
            raise
        from rcc.session.home import shared_store_root

        store = TensorStore(directory / STORE, read_only=read_only, shared=None if read_only else shared_store_root())
        if not read_only:
            store.clean_temporary()
            try:
                _start_journal(graph, directory)
            except BaseException:
                graph.close()
                lock.release()
                raise
        session = cls(directory, graph, store, lock, resolve_device(device))
        plan = graph.meta("plan")
        if plan:
            session.plan = plan_from_dict(json.loads(plan))
        return session

    def close(self) -> None:
        self.store.save_verified()
        self.graph.close()
        if self._lock:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def read_only(self) -> bool:
        return self._lock is None

    # -- reading -------------------------------------------------------------------------
    @property
    def head(self) -> int | None:
        return self.graph.head

    @property
    def model(self):
        if self.workspace is None:
            raise RccError(f"session {str(self.directory)!r} has no model loaded")
        return self.workspace.model

    def nodes(self) -> list[NodeRecord]:
        return self.graph.nodes()

    def ops(self) -> list[OpRecord]:
        return self.graph.ops()

    def setting(self, key: str) -> str | None:
        return self.graph.meta(key)

    @property
    def eval_split(self) -> str:
        """The split the cascade, backoff, search, sensitivity and training's model selection read."""
        return self.graph.eval_split()

    @property
    def test_split(self) -> str:
        """The split reports read (the ``evaluate`` op's default)."""
        return self.graph.meta("test_split") or "test"

    @property
    def eval_key(self) -> str:
        """The metric key of a node's eval metric: ``<eval split>/primary``."""
        from rcc.session.metric_keys import metric_key

        return metric_key(self.eval_split)

    def splits(self) -> dict:
        """How the data was split: {"layout": words with sizes and seed, "items": split → count} (items:
        as measured when the session was made; absent for sessions older than the data roles)."""
        stored = self.graph.meta("splits")
        if stored:
            return json.loads(stored)
        from rcc.data.registry import split_layout

        data = self.graph.meta("data")
        return {"layout": split_layout(data)} if data else {}

    # -- changing ------------------------------------------------------------------------
    def apply(self, op: O.Op, progress: ProgressFn | None = None, cancel: CancelCheck | None = None) -> OpOutcome:
        """Run ``op`` and record it; on any error the session stays exactly as before."""
        from rcc.session.handlers import HANDLERS

        if self.read_only:
            raise RccError(f"session {str(self.directory)!r} is open read-only; it cannot apply {op.kind!r}")
        if not isinstance(op, O.Op):
            raise O.OpError(f"{op!r} is not a session operation; allowed: {', '.join(O.OP_TYPES)}")
        if self.head is None and not op.starts_session:
            first = ", ".join(kind for kind, cls in O.OP_TYPES.items() if cls.starts_session)
            raise O.OpError(f"op {op.kind!r} needs a model; allowed first op: {first}")
        if self.workspace is None and self.head is not None and op.needs_model:
            # Opened without its model (load=False): bring it in now. A checkout goes straight to
            # its target, so a node with a corrupt blob at the head cannot lock the others away.
            if op.moves_head:
                self._load_base()
            else:
                self._reload()
        before, plan_before = self.head, self.plan
        start = time.perf_counter()
        try:
            effect = HANDLERS[op.kind](self, op, progress, cancel)
            logged = effect.op or op  # with the fields its handler filled in
            plan = effect.plan or self.plan
            new_node, captured, unchanged = None, None, False
            metrics, metrics_node = effect.metrics, effect.metrics_node
            if effect.new_node:
                from rcc.session.progress import phase_progress
                from rcc.session.state import capture, same_state

                saving = phase_progress(op.kind, "saving", progress)
                captured = capture(self.model.module, self.store,
                                   None if saving is None else lambda done, total: saving(done, total, "tensors"))
                parent = self.graph.state(before) if before is not None else None
                if parent is not None and same_state(captured, parent.structure, parent.tensors):
                    # A node equal to its parent would only clutter the history: the op is
                    # recorded (replay re-runs it), its node and that node's metrics are not.
                    unchanged, metrics, metrics_node = True, {}, None
                else:
                    new_node = NewNode(parent=before, structure=captured.structure, plan=plan_to_dict(plan),
                                       tensors=captured.tensors, params=int(effect.metrics.get("size/params", 0)),
                                       summary=effect.summary)
            meta = {"plan": json.dumps(plan_to_dict(plan), sort_keys=True), **effect.settings}
            seconds = time.perf_counter() - start
            result = _jsonable({**effect.result, **({"unchanged": True} if unchanged else {})})
            if captured is not None and captured.healed:
                result["healed_blobs"] = self._healed_report(captured)
            seq, node_id = self.graph.record(
                logged.kind, O.op_to_dict(logged), before, seconds, new_node=new_node, head=effect.head,
                metrics=metrics, metrics_node=metrics_node, label=effect.label, result=result, meta=meta)
        except BaseException:
            self.plan = plan_before
            if op.changes_model or op.visits_nodes:
                self._resync()
            raise
        self.plan = plan
        if captured is not None:
            self._current = (captured.structure, {k: v[0] for k, v in captured.tensors.items()})
        elif effect.state is not None:
            self._current = effect.state
        self.store.save_verified()
        return OpOutcome(seq=seq, op=logged, node_before=before, node_after=self.head, new_node=node_id,
                         seconds=seconds, metrics=effect.metrics, result=result, unchanged=unchanged)

    def _healed_report(self, captured) -> list[dict]:
        """Corrupt blobs the new node needed, rewritten from the live model, with the earlier nodes using them."""
        report = []
        for name in captured.healed:
            digest = captured.tensors[name][0]
            report.append({"tensor": name, "blob": digest, "nodes": self.graph.nodes_using(digest)})
        return report

    # -- model state ---------------------------------------------------------------------
    def load_workspace(self, model: str, data: str, eval_split: str, test_split: str,
                        progress: ProgressFn | None = None) -> None:
        from rcc.models.registry import load_model
        from rcc.session.state import manifest_of
        from rcc.session.workspace import Workspace

        if progress:
            progress(OpProgress(op="load_model", phase="loading", detail=model))
        loaded = load_model(model, device=self.device)
        self.workspace = Workspace(loaded, data, eval_split, test_split)
        self._current = manifest_of(loaded.module)

    def _load_base(self, progress: ProgressFn | None = None) -> None:
        """Load the base model from its spec (the state of the root node's spec, not of any node).

        A session made before the data roles whose eval split was its test split is refused:
        continuing it would keep optimising on the split it reports.
        """
        from rcc.data.roles import data_roles
        from rcc.errors import DataError

        data = self.graph.meta("data")
        try:
            roles = data_roles(data, self.eval_split, self.test_split)
        except DataError:
            raise RccError(f"session {str(self.directory)!r} cannot continue: its eval split {self.eval_split!r} is "
                           f"not val (it was made before rcc kept calibration, eval and test apart, and optimised on "
                           f"the split it reports); allowed: read it (session show/log/graph), or replay its recipe "
                           f"into a new session, which evaluates on val (`rcc-tui replay {self.directory} --out NEW`)"
                           ) from None
        self.load_workspace(self.graph.meta("model"), data, roles.eval, roles.test, progress)

    def _reload(self, progress: ProgressFn | None = None) -> None:
        """Load the base model from its spec and bring it to the head node (opening a session)."""
        from rcc.session.state import RestoreError

        self._load_base(progress)
        try:
            self.restore_to(self.graph.state(self.head), progress, op="open")
        except RestoreError as exc:
            self.workspace, self._current = None, None
            raise RestoreError(f"{exc}; the other nodes are intact: check one out with `rcc-tui session apply "
                               f"{self.directory} '{{\"op\": \"checkout\", \"node\": N}}'`") from exc

    def model_at(self, node: int):
        """A second, independent copy of the model at ``node`` (e.g. a teacher for training)."""
        from rcc.models.registry import load_model
        from rcc.session.state import RestoreError, manifest_of, restore

        target = self.graph.state(node)
        model = load_model(self.graph.meta("model"), device=self.device)
        structure, tensors = manifest_of(model.module)
        try:
            restore(model.module, tensors, structure, target.tensors, target.structure, self.store, node)
        except RestoreError as exc:
            raise self._with_users(exc) from exc
        return model

    def _with_users(self, exc):
        """A restore error that also names every node using the bad blob (a blob is shared by content)."""
        from rcc.session.state import RestoreError

        users = self.graph.nodes_using(exc.digest) if getattr(exc, "digest", None) else []
        if len(users) <= 1:
            return exc
        return RestoreError(f"{exc}; nodes using this blob: {', '.join(map(str, users))}", exc.digest)

    def restore_to(self, target: NodeState, progress: ProgressFn | None = None, op: str = "checkout") -> int:
        """Make the live model equal ``target``; returns the bytes loaded from the store."""
        from rcc.session.progress import phase_progress
        from rcc.session.state import RestoreError, restore

        structure, tensors = self._current
        reading = phase_progress(op, "checkout", progress)
        counted = None if reading is None else (lambda done, total: reading(done, total, f"blobs of node {target.id}"))
        try:
            loaded = restore(self.model.module, tensors, structure, target.tensors, target.structure,
                             self.store, target.id, counted)
        except RestoreError as exc:
            raise self._with_users(exc) from exc
        self._current = (target.structure, dict(target.tensors))
        return loaded

    def _resync(self) -> None:
        """After a failed op: put the live model back to the head node, whatever the op left."""
        if self.workspace is None or self.head is None:
            return
        from rcc.session.state import manifest_of

        try:
            self._current = manifest_of(self.model.module)
            self.restore_to(self.graph.state(self.head))
        except Exception:  # the module is in a shape restore cannot follow: start from the base model
            try:
                self._reload()
            except Exception:  # not even that (a corrupt head): the next op loads the model again
                self.workspace, self._current = None, None

    # -- paths and housekeeping -----------------------------------------------------------
    def resolve_export_path(self, out: str) -> Path:
        """Relative export paths live under the session's ``exports/``."""
        path = Path(out).expanduser()
        return path if path.is_absolute() else self.directory / EXPORTS / path

    def gc(self) -> GcReport:
        """Delete blobs that no node references (never anything a node reaches)."""
        if self.read_only:
            raise RccError(f"session {str(self.directory)!r} is open read-only; gc needs write access")
        reachable = self.graph.reachable_hashes()
        stored = self.store.all_hashes()
        garbage = stored - reachable
        freed = self.store.remove(garbage)
        self.store.clean_temporary()
        self.store.save_verified()
        shared_removed = shared_freed = 0
        if self.store.shared is not None:
            # Blobs no session links any more (link count 1: the shared store's own), this one's included.
            shared_removed, shared_freed = self.store.shared.collect_shared()
            self.store.shared.clean_temporary()  # links a crash left half made (another writer's fail harmlessly)
        return GcReport(removed=len(garbage), freed_bytes=freed + shared_freed, kept=len(stored & reachable),
                        shared_removed=shared_removed, shared_freed_bytes=shared_freed)

    def disk_bytes(self) -> int:
        return self.disk_usage().total

    def disk_usage(self) -> DiskUsage:
        """Bytes of the session directory, and how many of them are blobs linked elsewhere too."""
        total = shared = 0
        for path in self.directory.rglob("*"):
            if path.is_file():
                stat = path.stat()
                total += stat.st_size
                shared += stat.st_size if stat.st_nlink > 1 else 0
        return DiskUsage(total, shared)


def _start_journal(graph: HistoryGraph, directory: Path) -> None:
    """Attach the journal to a graph opened for writing, agreeing with the database's commits."""
    from rcc.session.journal import JOURNAL, Journal

    journal = Journal(directory / JOURNAL)
    journal.reconcile(graph.op_seqs(), graph.history)
    graph.journal = journal


def _jsonable(value):
    """Round-trip through JSON so results hold only plain types (floats stay exact)."""
    return json.loads(json.dumps(value, default=str))
