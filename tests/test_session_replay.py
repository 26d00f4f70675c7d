"""Replay and recipes: exact metrics on every node, refusal of tampered recipes before anything
runs, and the headless session commands (session new|ls|show|log|graph|apply|gc|export-recipe)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from rcc.cli.main import main
from rcc.compression.plan import CompressionPlan, Rule, plan_to_dict
from rcc.errors import RccError
from rcc.session import ops as O
from rcc.session.ops import OpError
from rcc.session.recipe_paths import confine_data_spec, confine_model_spec
from rcc.session.replay import load_recipe, parse_recipe, recipe_of, replay
from rcc.session.session import Session

pytestmark = pytest.mark.usefixtures("one_thread")

PLAN = CompressionPlan(rules=(Rule(tower="vision", settings={"sparsity": 0.5}),
                              Rule(tower="vision", kind="mlp_in", settings={"rank": 4}),
                              Rule(tower="text", kind="mlp_out", settings={"sparsity": 0.3})), seed=5)
KINDS = ["load_model", "set_plan", "run_stage", "run_cascade", "checkout", "run_stage", "evaluate", "label"]


@pytest.fixture(scope="module")
def model_root(tiny_spec) -> Path:
    """The folder holding the tiny model's config and weights: the data root replays need."""
    return Path(tiny_spec.split("@")[1]).parent


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, tiny_spec):
    """A closed session: plan, stage, cascade, a checkout and a branch, an evaluation and a label."""
    directory = tmp_path_factory.mktemp("recorded") / "session"
    with Session.create(directory, model=tiny_spec, data="digits", device="cpu") as session:
        session.apply(O.SetPlan(plan=plan_to_dict(PLAN)))
        session.apply(O.RunStage(stage="dare", fraction=0.5, calib_per_class=4))   # node 2
        session.apply(O.RunCascade(stages=("nullu", "dare", "alphaedit"), threshold=0.5, steps=2,
                                   calib_per_class=4))                               # node 3
        session.apply(O.Checkout(node=2))
        session.apply(O.RunStage(stage="nullu", fraction=0.75, calib_per_class=4))  # node 4, a branch
        session.apply(O.Evaluate(split="test"))
        session.apply(O.Label(node=3, label="cascade", note="from node 2"))
    return directory


def _same_histories(a: Path, b: Path) -> None:
    with Session.open(a, read_only=True) as first, Session.open(b, read_only=True) as second:
        nodes_a, nodes_b = first.nodes(), second.nodes()
        assert [(n.id, n.parent, n.op_kind, n.params, n.label, n.note, n.metrics) for n in nodes_a] == [
            (n.id, n.parent, n.op_kind, n.params, n.label, n.note, n.metrics) for n in nodes_b]
        assert [(o.kind, o.body, o.node_before, o.node_after) for o in first.ops()][1:] == [
            (o.kind, o.body, o.node_before, o.node_after) for o in second.ops()][1:]
        assert first.head == second.head
        for node in nodes_a:  # bit-identical weights: the very same blobs
            assert first.graph.state(node.id).tensors == second.graph.state(node.id).tensors, node.id


def test_the_recorded_session_has_the_expected_shape(recorded):
    with Session.open(recorded, read_only=True) as session:
        assert [op.kind for op in session.ops()] == KINDS
        assert [(n.id, n.parent) for n in session.nodes()] == [(1, None), (2, 1), (3, 2), (4, 2)]
        assert session.head == 4
        assert "test/top1" in session.nodes()[3].metrics


def test_replay_reproduces_every_metric_and_every_weight_exactly(recorded, model_root, tmp_path):
    recipe = load_recipe(recorded)
    assert [op.kind for op in recipe.ops] == KINDS
    seen = []
    report = replay(recipe, tmp_path / "again", [model_root], device="cpu", on_op=lambda i, op: seen.append(i))
    assert seen == list(range(len(KINDS))) and report.ops == len(KINDS)
    assert report.rows and all(row.difference == 0 for row in report.rows)
    assert report.mismatches(0.0) == []
    with Session.open(recorded, read_only=True) as session:
        recorded_metrics = {(n.id, k) for n in session.nodes() for k in n.metrics}
    assert {(row.node, row.key) for row in report.rows} == recorded_metrics
    assert {row.node for row in report.rows} == {1, 2, 3, 4}
    assert (4, "test/top5") in recorded_metrics
    _same_histories(recorded, tmp_path / "again")


def _replay_cli(source, out, root, *extra) -> int:
    return main(["replay", str(source), "--out", str(out), "--data-root", str(root), "--device", "cpu", *extra])


def test_the_replay_command_verifies_a_session(recorded, model_root, tmp_path, capsys):
    report = tmp_path / "report.json"
    assert _replay_cli(recorded, tmp_path / "again", model_root, "--verify", "--json", str(report)) == 0
    captured = capsys.readouterr()
    assert "same" in captured.out and "DIFFERS" not in captured.out
    rows = json.loads(report.read_text())["rows"]
    assert f"{len(KINDS)} ops replayed; 0 of {len(rows)} metrics differ" in captured.out
    assert captured.out.count("same") == len(rows)
    assert f"[1/{len(KINDS)}] load_model" in captured.err and f"[{len(KINDS)}/{len(KINDS)}] label" in captured.err


def test_without_out_the_replay_goes_to_a_temporary_session_and_sizes_print_as_integers(
        recorded, model_root, tmp_path, capsys, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    before = {p.name for p in recorded.parent.iterdir()}
    assert main(["replay", str(recorded), "--data-root", str(model_root), "--device", "cpu", "--verify"]) == 0
    out = capsys.readouterr().out
    assert {p.name for p in recorded.parent.iterdir()} == before  # nothing written next to the source
    assert list((tmp_path / "tmp").iterdir()) == []  # and the temporary session is gone
    assert "a temporary session (removed; --out keeps it)" in " ".join(out.split())  # the title may wrap
    with Session.open(recorded, read_only=True) as session:
        stored = int(session.nodes()[0].metrics["size/bytes"])
    row = next(line for line in out.splitlines() if "size/bytes" in line and "│ 1 " in line)
    assert f"{stored:,}" in row and f"{stored}.0000" not in out


@pytest.fixture(scope="module")
def recipe_file(recorded, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "nested" / "recipe.json"
    assert main(["session", "export-recipe", str(recorded), str(path)]) == 0
    return path


def test_export_recipe_writes_the_op_log_and_the_metrics(recipe_file, recorded, capsys):
    data = json.loads(recipe_file.read_text())
    assert (data["format"], data["version"]) == ("rcc-recipe", 1)
    assert [op["op"] for op in data["ops"]] == KINDS
    assert data["ops"][1]["plan"] == plan_to_dict(PLAN)
    assert data["ops"][4] == {"op": "checkout", "node": 2}
    assert sorted(data["nodes"]) == ["1", "2", "3", "4"]
    with Session.open(recorded, read_only=True) as session:
        assert data == json.loads(json.dumps(recipe_of(session)))
        assert data["nodes"]["3"] == session.nodes()[2].metrics
    assert not list(recipe_file.parent.glob("*.json.*"))  # nothing but the recipe


def test_a_recipe_file_replays_and_verifies(recipe_file, model_root, tmp_path, capsys):
    assert _replay_cli(recipe_file, tmp_path / "again", model_root, "--verify") == 0
    out = capsys.readouterr().out
    assert "same" in out and "DIFFERS" not in out


def test_verify_fails_when_a_recorded_metric_was_edited(recipe_file, model_root, tmp_path, capsys):
    data = json.loads(recipe_file.read_text())
    data["nodes"]["2"]["val/primary"] += 0.125
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    assert _replay_cli(edited, tmp_path / "again", model_root, "--verify") == 1
    out = capsys.readouterr().out
    assert out.count("DIFFERS") == 1
    assert "1 of" in out and "metrics differ beyond 0" in out
    # A tolerance larger than the edit accepts it.
    assert _replay_cli(edited, tmp_path / "again2", model_root, "--verify", "--tolerance", "0.2") == 0


# -- tampered recipes -------------------------------------------------------------------------------

@pytest.fixture
def roots(tmp_path, model_root):
    """A data root with a folder inside, a folder outside it, and a symlink inside pointing outside."""
    root = tmp_path / "data"
    (root / "inside").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "inside-link").symlink_to(root / "inside", target_is_directory=True)
    return root, model_root


TAMPERED = {
    "unknown op type": (lambda d, r: d["ops"][3].update(op="frobnicate"), ["'frobnicate'", "ops[3]", "unknown"]),
    "unknown field": (lambda d, r: d["ops"][2].update(strength=2), ["'strength'", "ops[2]", "unknown"]),
    "bad value": (lambda d, r: d["ops"][2].update(fraction=1.5), ["fraction 1.5", "ops[2]"]),
    "second load_model": (lambda d, r: d["ops"].insert(3, {"op": "load_model"}), ["load_model"]),
    "no load_model": (lambda d, r: d["ops"].pop(0), ["load_model"]),
    "no ops": (lambda d, r: d.update(ops=[]), ["ops"]),
    "other format": (lambda d, r: d.update(format="pickle"), ["not an rcc recipe"]),
    "other version": (lambda d, r: d.update(version=2), ["version 2", "allowed: 1"]),
    "unknown key": (lambda d, r: d.update(weights="x"), ["'weights'", "unknown"]),
    "bad metric": (lambda d, r: d["nodes"]["2"].update(x="high"), ["nodes['2']"]),
    "relative escape": (lambda d, r: d["ops"][0].update(data="imagefolder:../../etc"),
                        ["'../../etc'", "escapes the data roots"]),
    "absolute outside": (lambda d, r: d["ops"][0].update(data="imagefolder:/etc"), ["'/etc'", "escapes"]),
    "symlink out, absolute": (lambda d, r: d["ops"][0].update(data=f"imagefolder:{r / 'link'}"), ["escapes"]),
    "option outside": (lambda d, r: d["ops"][0].update(data="imagefolder:inside?classnames=/etc/hostname"),
                       ["classnames", "'/etc/hostname'", "escapes"]),
    "model config outside": (lambda d, r: d["ops"][0].update(model="open_clip:/etc/tiny.json"),
                             ["'/etc/tiny.json'", "escapes"]),
    "model weights outside": (lambda d, r: d["ops"][0].update(model=d["ops"][0]["model"].split("@")[0]
                                                                + "@../../../../w.safetensors"),
                              ["w.safetensors", "escapes"]),
}


@pytest.mark.parametrize("name", list(TAMPERED))
def test_a_tampered_recipe_is_refused_before_anything_runs(name, recipe_file, roots, tmp_path, capsys):
    root, model_root = roots
    change, words = TAMPERED[name]
    data = json.loads(recipe_file.read_text())
    change(data, root)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    out = tmp_path / "replayed"
    code = main(["replay", str(bad), "--out", str(out), "--data-root", str(root), "--data-root", str(model_root),
                 "--verify"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("rcc-tui: error: ") and "\n" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert not out.exists()


def test_paths_inside_the_roots_are_resolved_not_refused(roots):
    root, _ = roots
    assert confine_data_spec("imagefolder:inside", [root]) == f"imagefolder:{root / 'inside'}"
    assert confine_data_spec("imagefolder:inside-link", [root]) == f"imagefolder:{root / 'inside'}"
    assert confine_data_spec(f"imagefolder:{root}/inside/../inside", [root]) == f"imagefolder:{root / 'inside'}"
    assert confine_data_spec("digits", [root]) == "digits"
    assert confine_model_spec("rcc-mini", [root]) == "rcc-mini"
    assert confine_model_spec("open_clip:ViT-B-32@laion2b_s34b_b79k", [root]) == "open_clip:ViT-B-32@laion2b_s34b_b79k"
    with pytest.raises(OpError, match="escapes"):
        confine_data_spec("imagefolder:inside/../../outside", [root])


def test_a_relative_symlink_out_of_the_root_is_refused(roots):
    root, _ = roots
    with pytest.raises(OpError, match="'link' escapes the data roots"):
        confine_data_spec("imagefolder:link", [root])
    with pytest.raises(OpError, match="escapes"):
        confine_data_spec("imagefolder:link/sub", [root])


def test_a_relative_path_is_relative_to_the_first_root_only(roots, tmp_path):
    # recipe_paths: "relative paths are relative to the first root". `link` in the first root
    # leads outside it; it must not quietly become a (non-existent) `link` under the second root.
    root, _ = roots
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(OpError, match="escapes"):
        confine_data_spec("imagefolder:link", [root, other])


def test_a_model_directory_in_the_working_directory_is_not_read_when_it_is_outside_the_roots(
        roots, tmp_path, monkeypatch):
    # `hf:org/model` is a hub id or, when that folder exists, a local directory; transformers looks
    # for it relative to the working directory. With --data-root elsewhere, that folder is outside
    # the roots: the confined spec must not still point at it.
    root, _ = roots
    cwd = tmp_path / "elsewhere"
    (cwd / "org" / "model").mkdir(parents=True)
    (cwd / "org" / "model" / "config.json").write_text("{}")
    monkeypatch.chdir(cwd)
    try:
        confined = confine_model_spec("hf:org/model", [root])
    except OpError:
        return  # refused: fine
    target = confined.partition(":")[2]
    assert not Path(target).resolve().is_relative_to(cwd), confined


def test_a_recipe_path_that_is_neither_a_session_nor_a_file_is_refused(tmp_path):
    with pytest.raises(RccError, match="neither a session directory nor a recipe file"):
        load_recipe(tmp_path / "nothing")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(RccError, match="cannot be read as JSON"):
        load_recipe(tmp_path / "broken.json")
    with pytest.raises(RccError, match="not an rcc recipe"):
        parse_recipe([1, 2])


# -- the session commands ---------------------------------------------------------------------------

def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_session_show_log_graph_and_ls_describe_a_session(recorded, tiny_spec, capsys):
    assert main(["session", "show", str(recorded)]) == 0
    out = capsys.readouterr().out
    for word in (tiny_spec.split(":", 1)[1][:40], "digits", "val (180 items)", "train (1,257 items)",
                 "test (360 items)", "test 20 % of scikit-learn's", "node 4", "test/top1", "val/primary", '"seed": 5'):
        assert word in out, (word, out)

    assert main(["session", "log", str(recorded)]) == 0
    out = capsys.readouterr().out
    positions = [out.index(kind) for kind in ("load_model", "set_plan", "run_cascade", "checkout", "evaluate",
                                              "label")]
    assert positions == sorted(positions)
    assert out.count("run_stage") == 2 and '"node": 2' in out

    assert main(["session", "graph", str(recorded)]) == 0
    lines = _lines(capsys.readouterr().out)
    assert len(lines) == 4
    assert [next(t for t in line.split() if t.isdigit()) for line in lines] == ["4", "3", "2", "1"]
    assert lines[0].startswith("◉ ") and "◉" not in "".join(lines[1:])
    assert lines[1].startswith("│ ● ") and "[cascade]" in lines[1] and "run_cascade" in lines[1]
    assert lines[2].startswith("●─┘ ") and lines[3].startswith("● ") and "load_model" in lines[3]

    assert main(["session", "ls", str(recorded.parent)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(f"│ {recorded.name} ")]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].split("│")[1:-1]]
    with Session.open(recorded, read_only=True) as session:
        head = session.nodes()[-1]
    assert cells[2:7] == ["digits", "4", "4", f"val {head.metrics['val/primary']:.4f}", f"{head.params:,}"], cells


def test_session_ls_of_a_folder_without_sessions_lists_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RCC_SESSIONS_DIR", str(tmp_path / "none"))
    assert main(["session", "ls"]) == 0
    assert str(tmp_path / "none") in capsys.readouterr().out


@pytest.fixture
def copy(recorded, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(recorded, target)
    return target


def test_session_apply_runs_ops_as_the_app_would(copy, tmp_path, capsys):
    ops_file = tmp_path / "ops.json"
    ops_file.write_text(json.dumps([{"op": "checkout", "node": 1}, {"op": "run_stage", "stage": "dare"}]))
    code = main(["session", "apply", str(copy), '{"op": "label", "node": 4, "label": "branch"}', str(ops_file),
                 "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line for line in _lines(out) if line.startswith("#")]  # each op's headline (details follow it)
    assert lines[0].startswith("#9 label: head node 4")
    assert lines[1].startswith("#10 checkout: head node 1")
    assert lines[2].startswith("#11 run_stage: node 5") and "val/primary" in lines[2]
    with Session.open(copy, read_only=True) as session:
        nodes = session.nodes()
        assert [(n.id, n.parent) for n in nodes][-1] == (5, 1) and session.head == 5
        assert nodes[3].label == "branch"


def test_session_gc_removes_what_no_node_references(copy, capsys):
    with Session.open(copy, load=False) as session:
        stray = session.store.put(torch.full((64,), 7.0))
        kept = len(session.graph.reachable_hashes())
    assert main(["session", "gc", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "removed 1 unreferenced blobs" in out and f"kept {kept}" in out
    with Session.open(copy, load=False) as session:
        assert not session.store.has(stray.hash)
        assert session.store.all_hashes() == session.graph.reachable_hashes()


def test_session_new_makes_a_session_with_its_root_node(tmp_path, tiny_spec, capsys):
    assert main(["session", "new", str(tmp_path / "s"), "--model", tiny_spec, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "node 1" in out and "1,233,345 parameters" in out
    assert "(the eval split)" in out and "val 0." in out and "test 20 % of scikit-learn's 1,797 digits" in out
    assert main(["session", "new", str(tmp_path / "s"), "--model", tiny_spec]) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["session", "apply", "{copy}", '{"op": "frobnicate"}'], ["'frobnicate'", "unknown"]),
    (["session", "apply", "{copy}", '{"op": "run_stage", "fraction": 0}'], ["fraction 0"]),
    (["session", "apply", "{copy}", "{not json"], ["not valid JSON"]),
    (["session", "apply", "{copy}", "/no/such/ops.json"], ["/no/such/ops.json"]),
    (["session", "apply", "{copy}", '{"op": "checkout", "node": 99}'], ["node 99 does not exist"]),
    (["session", "apply", "{copy}", '{"op": "run_stage", "layers": ["no.such.layer"]}'], ["'no.such.layer'"]),
    (["session", "show", "{tmp}"], ["is not a session"]),
    (["session", "log", "{tmp}/missing"], ["is not a session"]),
    (["session", "graph", "{tmp}"], ["is not a session"]),
    (["session", "gc", "{tmp}"], ["is not a session"]),
    (["session", "export-recipe", "{tmp}", "{tmp}/r.json"], ["is not a session"]),
    (["replay", "{tmp}/missing", "--out", "{tmp}/out"], ["neither a session directory nor a recipe file"]),
    (["replay", "{copy}", "--out", "{tmp}/out", "--tolerance", "-1"], ["tolerance -1", "≥ 0"]),
])
def test_bad_session_commands_exit_2_with_one_line_and_change_nothing(args, words, copy, tmp_path, capsys):
    with Session.open(copy, read_only=True) as session:
        ops_before = len(session.ops())
    argv = [a.replace("{copy}", str(copy)).replace("{tmp}", str(tmp_path)) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rcc-tui: error: ") and "\n" not in err, err
    for word in words:
        assert word in err, (word, err)
    with Session.open(copy, read_only=True) as session:
        assert len(session.ops()) == ops_before
    assert not (tmp_path / "out").exists()


def test_applying_to_a_session_that_is_open_elsewhere_exits_2(copy, capsys):
    with Session.open(copy, load=False):
        assert main(["session", "apply", str(copy), '{"op": "evaluate"}']) == 2
    err = capsys.readouterr().err.strip()
    assert "in use by another process" in err and "\n" not in err
