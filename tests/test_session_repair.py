"""The journal and ``session repair``: a database truncated at random offsets is rebuilt whole.

One session on the tiny OpenCLIP model gets a small branching history (plan, stages, a
checkout and a branch, a label, an evaluation); a copy of it is damaged per case and
repaired, and the rebuilt database must hold exactly the original nodes, parents, op log,
metrics, labels, head and tensor manifests.
"""

import json
import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from rcc.cli.main import main
from rcc.compression.plan import CompressionPlan, Rule, plan_to_dict
from rcc.errors import RccError
from rcc.session import ops as O
from rcc.session.journal import JOURNAL, read_journal
from rcc.session.repair import repair
from rcc.session.session import Session

pytestmark = pytest.mark.usefixtures("one_thread")
LAYER = "visual.transformer.resblocks.0.mlp.c_fc"
OTHER = "transformer.resblocks.1.mlp.c_proj"


@pytest.fixture(scope="module")
def history(tmp_path_factory, tiny_spec) -> Path:
    directory = tmp_path_factory.mktemp("repair") / "session"
    plan = CompressionPlan(rules=(Rule(kind="mlp_in", settings={"sparsity": 0.5}),
                                  Rule(kind="mlp_out", settings={"sparsity": 0.5})))
    with Session.create(directory, model=tiny_spec, device="cpu") as session:
        session.apply(O.SetPlan(plan=plan_to_dict(plan)))
        session.apply(O.RunStage(stage="dare", layers=(LAYER,)))
        session.apply(O.RunStage(stage="dare", fraction=0.5, layers=(OTHER,)))
        session.apply(O.Checkout(node=2))
        session.apply(O.RunStage(stage="dare", fraction=0.25, layers=(OTHER,)))  # a branch: node 4
        session.apply(O.Label(node=3, label="main", note="the first branch"))
        session.apply(O.Evaluate(split="test"))
    return directory


def _snapshot(directory: Path) -> dict:
    with Session.open(directory, read_only=True) as session:
        return {"nodes": [(n.id, n.parent, n.op_seq, n.op_kind, n.params, n.summary, n.label, n.note, n.metrics)
                          for n in session.nodes()],
                "ops": [(o.seq, o.kind, o.body, o.node_before, o.node_after, o.result) for o in session.ops()],
                "head": session.head,
                "states": {n.id: session.graph.state(n.id) for n in session.nodes()},
                "settings": {k: session.setting(k) for k in ("model", "data", "eval_split", "test_split", "plan")}}


def test_the_journal_holds_every_commit_as_one_json_line(history):
    read = read_journal(history / JOURNAL)
    assert read.problems == []
    with Session.open(history, read_only=True) as session:
        assert [r["seq"] for r in read.records] == [o.seq for o in session.ops()] == list(range(1, 9))
        assert [r["node"]["id"] for r in read.records if r["node"]] == [n.id for n in session.nodes()]
    lines = (history / JOURNAL).read_text().splitlines()
    assert len(lines) == 9 and json.loads(lines[0]) == {"journal": "rcc-session", "version": 1}


@pytest.mark.parametrize("seed", range(8))
def test_a_database_truncated_at_a_random_offset_is_rebuilt_whole(history, tmp_path, seed):
    original = _snapshot(history)
    copy = tmp_path / "s"
    shutil.copytree(history, copy)
    database = copy / "session.db"
    size = database.stat().st_size
    offset = random.Random(seed).randrange(0, size)
    with open(database, "r+b") as handle:
        handle.truncate(offset)
    with pytest.raises(RccError) as refused:  # what opening says: one line, the way out
        with Session.open(copy, read_only=True) as session:
            session.nodes()
            session.ops()
            [session.graph.state(n.id) for n in session.nodes()]
    assert "session repair" in str(refused.value) and "\n" not in str(refused.value)
    report = repair(copy)
    assert report.rebuilt and report.ops == 8 and report.nodes == 4 and report.broken_nodes == {}
    assert report.kept_as.exists() and report.kept_as.stat().st_size == offset  # the damaged file is kept
    assert _snapshot(copy) == original
    with Session.open(copy, device="cpu") as session:  # and it works on: the next node gets the next id
        outcome = session.apply(O.RunStage(stage="dare", fraction=1.0, layers=(OTHER,)))
        assert outcome.new_node == 5 and session.head == 5
    assert [r["seq"] for r in read_journal(copy / JOURNAL).records] == list(range(1, 10))


def test_repair_says_what_cannot_be_rebuilt(history, tmp_path, capsys):
    copy = tmp_path / "s"
    shutil.copytree(history, copy)
    with Session.open(copy, read_only=True) as session:
        only_node_4 = set(session.graph.state(4).tensors.values()) - set(session.graph.state(3).tensors.values())
        digest = sorted(only_node_4)[0]
        path = session.store.path(digest)
    path.unlink()  # a blob lost with the database
    (copy / "session.db").write_bytes(b"\x00" * 4096)
    assert main(["session", "repair", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "rebuilt from the journal" in out and "8 ops, 4 nodes" in out
    assert "cannot be rebuilt: node 4" in out and digest[:12] in out and "missing" in out
    assert "node 3" not in out.split("cannot be rebuilt")[1]
    with Session.open(copy, device="cpu", load=False) as session:  # its head is node 4
        session.apply(O.Checkout(node=3))  # the other nodes check out
        with pytest.raises(RccError, match="node 4"):
            session.apply(O.Checkout(node=4))


def test_an_intact_database_is_left_alone_and_a_missing_one_is_rebuilt(history, tmp_path, capsys):
    copy = tmp_path / "s"
    shutil.copytree(history, copy)
    before = (copy / "session.db").read_bytes()
    assert main(["session", "repair", str(copy)]) == 0
    assert "nothing to repair" in capsys.readouterr().out
    assert (copy / "session.db").read_bytes() == before
    original = _snapshot(history)
    (copy / "session.db").unlink()
    assert repair(copy).rebuilt
    assert _snapshot(copy) == original


def test_a_database_behind_its_journal_is_refused_on_opening_then_repaired(history, tmp_path):
    copy = tmp_path / "s"
    shutil.copytree(history, copy)
    with sqlite3.connect(copy / "session.db") as connection:  # as if the last commits were lost
        connection.execute("DELETE FROM ops WHERE seq > 5")
    with pytest.raises(RccError, match="lacks 3 commits"):
        Session.open(copy, device="cpu", load=False)
    assert repair(copy).rebuilt
    assert _snapshot(copy) == _snapshot(history)


def test_a_torn_last_journal_line_and_an_uncommitted_record_are_dropped_on_opening(history, tmp_path):
    copy = tmp_path / "s"
    shutil.copytree(history, copy)
    journal = copy / JOURNAL
    records = read_journal(journal).records
    uncommitted = {**records[-1], "seq": 9}
    with open(journal, "ab") as handle:
        handle.write(json.dumps(uncommitted).encode() + b"\n" + b'{"seq": 10, "kind": "ev')  # killed mid-write
    assert len(read_journal(journal).records) == 9 and "incomplete" in read_journal(journal).problems[0]
    Session.open(copy, device="cpu", load=False).close()
    assert [r["seq"] for r in read_journal(journal).records] == list(range(1, 9))
    assert read_journal(journal).problems == []


def test_a_session_made_before_the_journal_gets_one_on_opening(history, tmp_path):
    copy = tmp_path / "s"
    shutil.copytree(history, copy)
    (copy / JOURNAL).unlink()
    Session.open(copy, device="cpu", load=False).close()
    assert [r["seq"] for r in read_journal(copy / JOURNAL).records] == list(range(1, 9))
    (copy / "session.db").unlink()
    assert repair(copy).rebuilt
    assert _snapshot(copy) == _snapshot(history)


def test_repair_refuses_what_it_cannot_do_with_one_line(tmp_path, capsys):
    assert main(["session", "repair", str(tmp_path / "none")]) == 2
    assert "is not a session" in capsys.readouterr().err
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "session.db").write_bytes(b"garbage" * 100)
    assert main(["session", "repair", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be repaired" in err and "journal" in err
