"""The history graph: lanes drawn newest first, and ops + nodes committed in one transaction."""

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest

from rcc.errors import RccError
from rcc.session.graph import HistoryGraph, NewNode, NodeRecord
from rcc.session.lanes import graph_rows


def _node(i: int, parent: int | None) -> NodeRecord:
    return NodeRecord(id=i, parent=parent, op_seq=i, op_kind="run_stage", created=float(i), params=0)


def _drawn(parents: dict[int, int | None], head: int | None) -> list[tuple[int, str, int]]:
    nodes = [_node(i, p) for i, p in parents.items()]
    return [(row.node.id, row.prefix, row.column) for row in graph_rows(nodes, head)]


def test_a_linear_history_is_one_lane_newest_first():
    assert _drawn({1: None, 2: 1, 3: 2}, head=3) == [(3, "◉ ", 0), (2, "● ", 0), (1, "● ", 0)]
    # The head marker follows the head, wherever it is.
    assert _drawn({1: None, 2: 1, 3: 2}, head=2) == [(3, "● ", 0), (2, "◉ ", 0), (1, "● ", 0)]


def test_input_order_does_not_matter():
    assert _drawn({3: 2, 1: None, 2: 1}, head=3) == _drawn({1: None, 2: 1, 3: 2}, head=3)


def test_a_branch_gets_its_own_lane_and_joins_its_parent():
    # 1 ─ 2 ─ 3 and 1 ─ 4 (checkout of 1, then a new op)
    assert _drawn({1: None, 2: 1, 3: 2, 4: 1}, head=4) == [
        (4, "◉ ", 0),
        (3, "│ ● ", 1),
        (2, "│ ● ", 1),
        (1, "●─┘ ", 0),
    ]


def test_two_branches_from_one_node_join_it_in_one_row():
    # 1 has three children 2, 3, 4; the head is the oldest branch.
    assert _drawn({1: None, 2: 1, 3: 1, 4: 1}, head=2) == [
        (4, "● ", 0),
        (3, "│ ● ", 1),
        (2, "│ │ ◉ ", 2),
        (1, "●─┴─┘ ", 0),
    ]


def test_branches_from_two_nodes_keep_their_lanes_until_they_join():
    # 1 ─ 2 ─ 3 ─ 5 and 2 ─ 4: the lane of 4 joins at 2, then 2 continues to 1 in lane 0.
    assert _drawn({1: None, 2: 1, 3: 2, 4: 2, 5: 3}, head=5) == [
        (5, "◉ ", 0),
        (4, "│ ● ", 1),
        (3, "● │ ", 0),
        (2, "●─┘ ", 0),
        (1, "● ", 0),
    ]


def test_a_lane_passing_a_join_is_crossed():
    # 5 → 2, 4 → 1, 3 → 2: at node 2, the lanes of 5 and 3 join across the lane of 4 (waiting for 1).
    assert _drawn({1: None, 2: 1, 3: 2, 4: 1, 5: 2}, head=1) == [
        (5, "● ", 0),
        (4, "│ ● ", 1),
        (3, "│ │ ● ", 2),
        (2, "●─┼─┘ ", 0),
        (1, "◉─┘ ", 0),
    ]


def test_no_nodes_draw_no_rows():
    assert graph_rows([], None) == []


# -- the database ------------------------------------------------------------------------------

def _new(parent, tensors=None, params=10) -> NewNode:
    return NewNode(parent=parent, structure={"split": []}, plan={"seed": 0},
                   tensors=tensors if tensors is not None else {"w": ("a" * 64, 16)}, params=params,
                   summary="s")


@pytest.fixture
def graph(tmp_path):
    g = HistoryGraph(tmp_path / "session.db")
    yield g
    g.close()


def _snapshot(graph: HistoryGraph):
    tables = ("ops", "nodes", "edges", "tensors", "metrics", "meta")
    return {t: list(graph.db.execute(f"SELECT * FROM {t} ORDER BY 1, 2")) for t in tables}


def test_record_commits_an_op_its_node_tensors_metrics_and_head(graph):
    seq, node = graph.record("load_model", {"op": "load_model"}, None, 1.5, new_node=_new(None),
                             metrics={"eval/primary": 0.5}, meta={"model": "m"})
    assert (seq, node) == (1, 1)
    seq, node = graph.record("run_stage", {"op": "run_stage"}, 1, 0.5,
                             new_node=_new(1, {"w": ("b" * 64, 16), "m": ("c" * 64, 4)}, params=7),
                             metrics={"eval/primary": 0.25})
    assert (seq, node) == (2, 2)
    seq, node = graph.record("evaluate", {"op": "evaluate"}, 2, 0.1, metrics={"test/top1": 0.75}, metrics_node=2)
    assert (seq, node) == (3, None)
    graph.record("checkout", {"op": "checkout", "node": 1}, 2, 0.0, head=1)
    graph.record("label", {"op": "label"}, 1, 0.0, label=(2, "good", "a note"))
    assert graph.head == 1 and graph.meta("model") == "m"
    nodes = graph.nodes()
    assert [(n.id, n.parent, n.op_seq, n.op_kind, n.params) for n in nodes] == [
        (1, None, 1, "load_model", 10), (2, 1, 2, "run_stage", 7)]
    assert nodes[1].metrics == {"eval/primary": 0.25, "test/top1": 0.75}
    assert (nodes[1].label, nodes[1].note) == ("good", "a note")
    assert [(o.seq, o.kind, o.node_before, o.node_after) for o in graph.ops()] == [
        (1, "load_model", None, 1), (2, "run_stage", 1, 2), (3, "evaluate", 2, 2), (4, "checkout", 2, 1),
        (5, "label", 1, 1)]
    state = graph.state(2)
    assert state.tensors == {"w": "b" * 64, "m": "c" * 64} and state.structure == {"split": []}
    assert graph.reachable_hashes() == {"a" * 64, "b" * 64, "c" * 64}
    assert graph.node_hashes([2]) == {2: {"w": ("b" * 64, 16), "m": ("c" * 64, 4)}}
    with pytest.raises(RccError, match="node 9 does not exist.*from 1 to 2"):
        graph.state(9)


def _fail_midway(graph, **kwargs):
    before = _snapshot(graph)
    with pytest.raises((sqlite3.Error, TypeError, ValueError)):  # what SQLite or the row's conversion raises
        graph.record("run_stage", {"op": "run_stage"}, graph.head, 0.2, **kwargs)
    assert _snapshot(graph) == before
    # The transaction is closed and its lock released: another thread can read at once.
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(lambda: len(graph.ops())).result(timeout=10) == len(before["ops"])


def test_a_failure_inside_record_leaves_no_op_and_no_node(graph):
    graph.record("load_model", {"op": "load_model"}, None, 1.0, new_node=_new(None), metrics={"eval/primary": 0.5})
    # A tensor row that cannot be written: fails after the op and node rows were inserted.
    _fail_midway(graph, new_node=_new(1, {"w": ("b" * 64, 16), "bad": None}))
    # A metric that is not a number: fails after the node and its tensors were inserted.
    _fail_midway(graph, new_node=_new(1), metrics={"eval/primary": "high"})
    # An edge that already exists (a primary key violation) fails inside the transaction too.
    graph.db.execute("INSERT INTO edges (parent, child) VALUES (1, 2)")
    _fail_midway(graph, new_node=_new(1))
    graph.db.execute("DELETE FROM edges")
    # The database is usable afterwards: the next op gets the next sequence number and node id.
    seq, node = graph.record("run_stage", {"op": "run_stage"}, 1, 0.2, new_node=_new(1))
    assert (seq, node) == (2, 2)
    assert [n.id for n in graph.nodes()] == [1, 2] and graph.head == 2


def test_a_failure_inside_record_is_invisible_to_another_connection(tmp_path, monkeypatch):
    graph = HistoryGraph(tmp_path / "session.db")
    graph.record("load_model", {"op": "load_model"}, None, 1.0, new_node=_new(None))
    reader = HistoryGraph(tmp_path / "session.db", read_only=True)
    original = graph._set_meta
    seen = {}

    def crash(values):  # the last statement of the transaction: everything else is written by now
        seen["nodes inside"] = graph.db.execute("SELECT COUNT(*) FROM nodes").fetchone()[0]
        seen["nodes outside"] = len(reader.nodes())
        raise OSError("disk full")

    monkeypatch.setattr(graph, "_set_meta", crash)
    with pytest.raises(OSError):
        graph.record("run_stage", {"op": "run_stage"}, 1, 0.2, new_node=_new(1), metrics={"eval/primary": 1.0})
    assert seen == {"nodes inside": 2, "nodes outside": 1}
    monkeypatch.setattr(graph, "_set_meta", original)
    for g in (graph, reader):
        assert [n.id for n in g.nodes()] == [1] and len(g.ops()) == 1 and g.head == 1
    graph.close()
    reader.close()


def test_a_database_of_another_schema_is_refused(tmp_path):
    graph = HistoryGraph(tmp_path / "session.db")
    graph.set_meta({"schema": "99"})
    graph.close()
    with pytest.raises(RccError, match="schema '99'.*allowed: 1"):
        HistoryGraph(tmp_path / "session.db")


def test_a_file_that_is_not_a_database_is_refused_in_one_line(tmp_path):
    path = tmp_path / "session.db"
    path.write_bytes(b"this is not sqlite, just some bytes " * 40)
    with pytest.raises(RccError) as info:
        HistoryGraph(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_read_only_graph_cannot_write(tmp_path):
    HistoryGraph(tmp_path / "session.db").close()
    reader = HistoryGraph(tmp_path / "session.db", read_only=True)
    with pytest.raises(sqlite3.OperationalError):
        reader.record("evaluate", {"op": "evaluate"}, None, 0.0)
    reader.close()
