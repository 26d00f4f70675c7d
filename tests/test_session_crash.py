"""A session killed with SIGKILL at any moment opens again with every committed node whole.

Four writer processes run at once, each looping model-changing ops on its own session and
printing ``committed N`` after each; the parent kills one at a seeded moment after a commit,
one while a blob of its new node is written but not yet renamed, one inside the open
database transaction of a commit, and one right after its journal record was fsync'd but
before COMMIT. Then every node listed must check out to exactly the tensors its manifest
names, and the journal must hold exactly the committed ops. A further test kills writers of
two sessions at 24 random moments, reopening each session after every kill. (The writers are
forked from one process that imported torch and open_clip once, so each writer costs a fork.)
"""

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rcc.compression.plan import CompressionPlan, Rule, plan_to_dict
from rcc.errors import RccError
from rcc.session import ops as O
from rcc.session.journal import JOURNAL, read_journal
from rcc.session.lock import SessionInUse
from rcc.session.session import Session
from rcc.session.state import manifest_of

pytestmark = pytest.mark.slow

MODES = ("after-commit", "blob", "transaction", "journal")
MLP_HALF = CompressionPlan(rules=(Rule(kind="mlp_in", settings={"sparsity": 0.5}),
                                  Rule(kind="mlp_out", settings={"sparsity": 0.5})))
REPO = Path(__file__).resolve().parents[1]

# Imports everything once, then forks one writer per line "DIRECTORY PAUSE_AT MODE FIFO" on stdin
# and answers "pid N". A writer prints to its FIFO; SIGCHLD is ignored so dead writers are reaped.
ZYGOTE = r'''
import os
import signal
import sys
import time

import open_clip  # noqa: F401 - everything a writer needs is imported before the fork, once for all
import rcc.compression.calibration_sets  # noqa: F401
import rcc.compression.cascade  # noqa: F401
import rcc.data.digits  # noqa: F401
import rcc.eval.suite  # noqa: F401
import rcc.eval.zeroshot  # noqa: F401
import rcc.models.open_clip_adapter  # noqa: F401
import rcc.session.handlers  # noqa: F401
import rcc.session.state  # noqa: F401
from rcc.data.text_corpus import docstring_sentences
from rcc.errors import RccError
from rcc.session import ops as O
from rcc.session.journal import Journal
from rcc.session.session import Session

docstring_sentences("calib")  # cached: the calibration corpus, read once

LAYERS = [f"{tower}resblocks.{block}.mlp.{name}" for tower in ("visual.transformer.", "transformer.")
          for block in (0, 1) for name in ("c_fc", "c_proj")]
FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def write(directory, pause_at, mode, out):
    # Each writer its own shared store: the four writers run the same ops on equal sessions, and
    # one linking a blob another already wrote would never write (nor pause in) a blob of its own.
    os.environ["RCC_DATA_HOME"] = directory + ".data-home"
    session = Session.open(directory, device="cpu")
    commits = len(session.nodes())
    set_meta, fsync = session.graph._set_meta, os.fsync

    def pause(what):
        print(f"{what} {commits + 1}", file=out, flush=True)
        time.sleep(120)

    def pausing_set_meta(values):
        set_meta(values)  # the last statement inside the commit's transaction
        if commits + 1 == pause_at and mode == "transaction":
            pause("in transaction")

    def pausing_fsync(fd):
        fsync(fd)
        # A blob's temporary file, written, not yet renamed (not a directory fsync after a link
        # from the shared store, where another session may have put the same blob first).
        if commits + 1 == pause_at and mode == "blob" and os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
            pause("blob written")

    append = session.graph.journal.append

    def pausing_append(record):
        append(record)  # fsync'd: the journal holds the op; the database has not committed it
        if commits + 1 == pause_at and mode == "journal":
            pause("journal written")

    session.graph._set_meta, os.fsync = pausing_set_meta, pausing_fsync
    session.graph.journal.append = pausing_append
    print(f"committed {commits}", file=out, flush=True)
    for i in range(commits, commits + 10_000):  # a writer started again goes on where the last one was
        try:
            session.apply(O.RunStage(stage="dare", fraction=FRACTIONS[i % 4], layers=(LAYERS[i % len(LAYERS)],)))
        except RccError:  # that layer is at this strength already (an earlier writer's op): the next one
            continue
        commits = len(session.nodes())
        print(f"committed {commits}", file=out, flush=True)


signal.signal(signal.SIGCHLD, signal.SIG_IGN)
print("ready", flush=True)
for line in sys.stdin:
    directory, pause_at, mode, fifo = line.split()
    pid = os.fork()
    if pid == 0:
        try:
            with open(fifo, "w") as out:
                write(directory, int(pause_at), mode, out)
        finally:
            os._exit(1)
    print(f"pid {pid}", flush=True)
'''


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class Writer:
    """One forked writer and what the parent saw of it."""

    def __init__(self, zygote: subprocess.Popen, directory: Path, mode: str, seed: int, tag: str = ""):
        self.directory, self.mode = directory, mode
        self.rng = random.Random(seed)
        # The writer pauses inside the op that would make node ``pause_at`` (blob and transaction modes).
        self.pause_at = 4 + self.rng.randrange(3) if mode != "after-commit" else 0
        self.last_committed = 0
        self.lines: list[str] = []
        self.while_paused: dict = {}
        self.after_kill: dict = {}
        self.killed = False
        self.fifo = directory.parent / f"{mode}{tag}.fifo"
        os.mkfifo(self.fifo)
        zygote.stdin.write(f"{directory} {self.pause_at} {mode} {self.fifo}\n")
        zygote.stdin.flush()
        answer = zygote.stdout.readline().split()
        assert answer[0] == "pid", answer
        self.pid = int(answer[1])

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not _gone(self.pid):
            assert time.monotonic() < deadline, f"writer {self.pid} outlived SIGKILL"
            time.sleep(0.01)
        self.killed = True
        self.after_kill["leftovers"] = sorted(p.name for p in (self.directory / "store" / "tmp").glob("*.part"))

    def drive(self) -> None:
        """Read the writer's lines; kill it at this writer's moment."""
        target = 3 + self.rng.randrange(3)  # commits to see (the root, then at least two ops)
        with open(self.fifo) as lines:
            for line in lines:
                line = line.strip()
                self.lines.append(line)
                if line.startswith("committed"):
                    self.last_committed = int(line.split()[1])
                if self.mode == "after-commit" and line.startswith("committed") and self.last_committed >= target:
                    time.sleep(self.rng.uniform(0.0, 0.15))  # right after the commit, or somewhere in the next op
                    return self.kill()
                if line.startswith(("in transaction", "blob written", "journal written")):
                    self.while_paused = self._probe_while_paused()
                    self.kill()
                    try:  # the kernel dropped the dead writer's flock: a new writer gets in at once
                        with Session.open(self.directory, device="cpu", load=False) as again:
                            self.after_kill.update(opened=True, nodes=len(again.nodes()))
                    except Exception as exc:  # noqa: BLE001 - reported by the test
                        self.after_kill.update(opened=False, error=repr(exc))
                    return None
        raise AssertionError(f"writer {self.mode} ended by itself after {self.lines}")

    def _probe_while_paused(self) -> dict:
        seen = {}
        try:
            Session.open(self.directory, device="cpu", load=False).close()
            seen["second writer"] = "admitted"
        except SessionInUse as exc:
            seen["second writer"] = str(exc)
        with Session.open(self.directory, read_only=True) as reader:
            seen["visible nodes"] = len(reader.nodes())
        return seen


@pytest.fixture(scope="module")
def zygote():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
    process.ready = False
    lock = threading.Lock()  # one writer forked at a time (stdin line, stdout answer)

    def fork(directory: Path, mode: str, seed: int, tag: str = "") -> Writer:
        with lock:
            if not process.ready:
                assert process.stdout.readline().strip() == "ready", process.stderr.read()[-3000:]
                process.ready = True
            return Writer(process, directory, mode, seed, tag)

    process.fork = fork
    yield process
    process.kill()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def killed(tmp_path_factory, tiny_spec, zygote):
    """Four sessions whose writers were SIGKILLed at different moments (seeded), run side by side."""
    root = tmp_path_factory.mktemp("crash")
    writers, errors = {}, []
    try:
        for mode in MODES:  # meanwhile the zygote imports
            with Session.create(root / mode, model=tiny_spec, device="cpu") as session:
                session.apply(O.SetPlan(plan=plan_to_dict(MLP_HALF)))
        for seed, mode in enumerate(MODES):
            writers[mode] = zygote.fork(root / mode, mode, seed=seed)

        def run(writer):
            try:
                writer.drive()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(w,)) for w in writers.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=240)
    finally:
        for writer in writers.values():
            if not _gone(writer.pid):
                os.kill(writer.pid, signal.SIGKILL)
    if errors:
        raise AssertionError(f"{errors[0]}; zygote stderr: {zygote.stderr.read()[-3000:]}") from errors[0]
    return writers


def _check_every_node(directory: Path, at_least: int) -> Session:
    session = Session.open(directory, device="cpu")
    nodes = session.nodes()
    ids = [n.id for n in nodes]
    assert len(nodes) >= at_least
    assert ids == list(range(1, len(nodes) + 1))
    assert session.head in ids
    assert list(session.store.tmp.glob("*.part")) == []  # crash leftovers are cleaned on open
    for record in session.ops():  # every op ended at a node that exists
        assert record.node_after in ids
    for node in nodes:
        assert node.op_kind in ("load_model", "run_stage") and "val/primary" in node.metrics
        assert node.parent == (None if node.id == 1 else node.id - 1)  # the writers never branch
    # The blobs of every node verify, and each node checks out to exactly its manifest.
    hashes = session.graph.reachable_hashes()
    assert set(session.store.get_many(hashes)) == hashes
    for node in reversed(nodes):
        session.apply(O.Checkout(node=node.id))
        structure, tensors = manifest_of(session.model.module)
        state = session.graph.state(node.id)
        assert tensors == state.tensors and structure == state.structure, node.id
    # The journal holds exactly the committed ops (an uncommitted last record was dropped on opening).
    assert [r["seq"] for r in read_journal(directory / JOURNAL).records] == [o.seq for o in session.ops()]
    return session


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_writer_leaves_every_committed_node_whole(killed, mode):
    writer = killed[mode]
    assert writer.killed and _gone(writer.pid)
    assert writer.last_committed >= 3, writer.lines  # the root and at least two ops were committed
    session = _check_every_node(writer.directory, at_least=writer.last_committed)
    try:
        count = len(session.nodes())
        # At most the one op that committed but was killed before it could say so.
        assert count <= writer.last_committed + 1
        if mode != "after-commit":  # killed inside the op, before its commit ended: that node never existed
            assert count == writer.last_committed == writer.pause_at - 1
        if mode == "blob":  # the kill left a written but unnamed blob; opening removed it
            assert len(writer.after_kill["leftovers"]) == 1, writer.after_kill
        # The session goes on: the next node gets the next id.
        outcome = session.apply(O.RunStage(stage="dare", fraction=0.5,
                                           layers=("visual.transformer.resblocks.0.mlp.c_fc",)))
        assert outcome.new_node == count + 1
    finally:
        session.close()


@pytest.mark.parametrize("mode", ["blob", "transaction", "journal"])
def test_while_a_writer_is_inside_an_op_others_see_the_last_commit_and_cannot_write(killed, mode):
    writer = killed[mode]
    assert writer.while_paused["visible nodes"] == writer.pause_at - 1
    refused = writer.while_paused["second writer"]
    assert "in use by another process" in refused and f"pid {writer.pid}" in refused
    assert "\n" not in refused


@pytest.mark.parametrize("mode", ["blob", "transaction", "journal"])
def test_after_the_kill_a_second_opener_is_not_blocked(killed, mode):
    writer = killed[mode]
    assert writer.after_kill["opened"] is True, writer.after_kill
    assert writer.after_kill["nodes"] == writer.pause_at - 1


def test_a_half_written_blob_left_by_a_crash_is_never_visible(tmp_path, tiny_spec):
    directory = tmp_path / "s"
    with Session.create(directory, model=tiny_spec, device="cpu") as session:
        digests = session.store.all_hashes()
        leftover = session.store.tmp / f"{'0' * 64}.{'1' * 32}.part"
    leftover.write_bytes(b"\x00" * 100)  # what a kill during a blob write leaves behind
    with Session.open(directory, device="cpu") as session:
        assert not leftover.exists()
        assert session.store.all_hashes() == digests
        with pytest.raises(RccError):
            session.store.get("0" * 64)


KILLS_PER_SESSION = 12


def _kill_at_random_moments(zygote, directory: Path, seed: int) -> list[dict]:
    """Start a writer on ``directory`` again and again; SIGKILL each at a random moment; check after each."""
    rng = random.Random(seed)
    seen = []
    for kill in range(KILLS_PER_SESSION):
        writer = zygote.fork(directory, "after-commit", seed=rng.randrange(10**6), tag=f"-{seed}-{kill}")
        lines: list[str] = []
        reader = threading.Thread(target=lambda lines=lines, fifo=writer.fifo: lines.extend(
            line.strip() for line in open(fifo)), daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        while not lines and time.monotonic() < deadline:  # the writer opened the session
            time.sleep(0.01)
        assert lines, f"writer {kill} of {directory.name} never started"
        time.sleep(rng.uniform(0.0, 1.5))  # anywhere: between ops, in a stage, writing blobs, committing
        writer.kill()
        reader.join(timeout=30)
        said = [int(line.split()[1]) for line in lines if line.startswith("committed")]
        with Session.open(directory, device="cpu", load=False) as again:  # reopens: journal reconciled
            nodes = again.nodes()
            ids = [node.id for node in nodes]
            assert ids == list(range(1, len(ids) + 1)) and again.head in ids
            assert len(ids) in (said[-1], said[-1] + 1)  # at most the op that committed but could not say so
            assert [r["seq"] for r in read_journal(directory / JOURNAL).records] == [o.seq for o in again.ops()]
            assert list(again.store.tmp.glob("*.part")) == []
        seen.append({"said": said[-1], "nodes": len(ids)})
    return seen


def test_kills_at_24_random_moments_never_lose_a_committed_node(tmp_path, tiny_spec, zygote):
    directories = [tmp_path / f"random-{i}" for i in range(2)]
    for directory in directories:
        with Session.create(directory, model=tiny_spec, device="cpu") as session:
            session.apply(O.SetPlan(plan=plan_to_dict(MLP_HALF)))
    results, errors = {}, []

    def run(i: int, directory: Path) -> None:
        try:
            results[i] = _kill_at_random_moments(zygote, directory, seed=100 + i)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, d)) for i, d in enumerate(directories)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    if errors:
        raise errors[0]
    assert sum(len(r) for r in results.values()) == 2 * KILLS_PER_SESSION >= 20
    for directory in directories:
        final = results[directories.index(directory)][-1]["nodes"]
        _check_every_node(directory, at_least=final).close()
