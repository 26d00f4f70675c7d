"""Applying a trial: the ApplyTrial op makes a node holding what the trial measured, and it replays."""

import json
from pathlib import Path

import pytest

from rcc.cli.main import main
from rcc.errors import RccError
from rcc.compression.trial_record import record_from_dict
from rcc.search.storage import StorageError, default_url, open_storage
from rcc.search.trials import list_trials, load_record, load_study
from rcc.session import ops as O
from rcc.session.replay import load_recipe, replay
from rcc.session.session import Session

pytestmark = pytest.mark.usefixtures("one_thread")

SEARCH = ["--space", "group", "--group-by", "tower", "--calib-per-class", "2", "--startup", "2"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_spec):
    """A tiny session with a 3-trial study 'demo' in its search.db (run through the CLI)."""
    directory = tmp_path_factory.mktemp("search-apply") / "session"
    with Session.create(directory, model=tiny_spec, data="digits", device="cpu"):
        pass
    assert main(["search", str(directory), "--study", "demo", "--trials", "3", "--device", "cpu", *SEARCH]) == 0
    return directory


def _compressing_trial(directory: Path) -> int:
    return next(row.number for row in list_trials(default_url(directory), "demo")
                if row.state == "COMPLETE" and row.removed)


def test_search_prints_progress_and_ends_with_the_front(tmp_path, tiny_spec, capsys):
    directory = tmp_path / "session"
    with Session.create(directory, model=tiny_spec, data="digits", device="cpu"):
        pass
    code = main(["search", str(directory), "--study", "cli", "--trials", "2", "--device", "cpu", *SEARCH,
                 "--json", str(tmp_path / "report.json")])
    out, err = capsys.readouterr()
    assert code == 0
    assert "trial 1 of 2 (#0) complete" in err and "trial 2 of 2 (#1) complete" in err and "front:" in err
    assert "Pareto front of study cli" in out and "2 trials run" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert [t["number"] for t in report["trials"]] == [0, 1] and report["front"]
    assert main(["search", "trials", str(directory), "--study", "cli"]) == 0
    assert "trials of study cli" in capsys.readouterr().out


def test_an_applied_trial_is_a_node_holding_what_the_trial_measured_and_it_replays(searched, tmp_path, tiny_spec):
    number = _compressing_trial(searched)
    url = default_url(searched)
    trial = load_study(url, "demo").trials[number]
    assert main(["search", "apply", str(searched), "--study", "demo", "--trial", str(number)]) == 0
    with Session.open(searched, read_only=True) as session:
        node = session.nodes()[-1]
        last = session.ops()[-1]
        plan = session.plan
    assert node.op_kind == "apply_trial" and node.parent == 1
    assert node.metrics["val/primary"] == trial.user_attrs["accuracy"]
    assert node.metrics["size/params"] == trial.user_attrs["size"]["size/params"]
    assert node.metrics["size/bytes"] == trial.user_attrs["size"]["size/bytes"]
    # The op log holds the trial itself; the storage is provenance (None: the session's search.db).
    assert last.body["study"] == "demo" and last.body["trial"] == number and last.body["storage"] is None
    assert record_from_dict(last.body["record"]) == load_record(url, "demo", number)
    assert record_from_dict(last.body["record"]).compression_plan() == plan

    # Replay never opens the study: delete it first, then re-run the log bit for bit.
    (searched / "search.db").rename(tmp_path / "moved.db")
    try:
        report = replay(load_recipe(searched), tmp_path / "replayed", [Path(tiny_spec.split("@")[1]).parent],
                        device="cpu")
    finally:
        (tmp_path / "moved.db").rename(searched / "search.db")
    assert report.mismatches(0.0) == []
    assert {row.key for row in report.rows if row.node == node.id} >= {"val/primary", "size/params"}
    with Session.open(searched, read_only=True) as a, Session.open(tmp_path / "replayed", read_only=True) as b:
        assert a.graph.state(node.id).tensors == b.graph.state(node.id).tensors


def test_an_op_without_its_record_reads_the_trial_from_storage_and_logs_it(searched):
    number = _compressing_trial(searched)
    op = {"op": "apply_trial", "study": "demo", "trial": number}
    with Session.open(searched, load=False) as session:
        head = session.head
    if head != 1:
        assert main(["session", "apply", str(searched), '{"op": "checkout", "node": 1}']) == 0
    assert main(["session", "apply", str(searched), json.dumps(op)]) == 0
    with Session.open(searched, read_only=True) as session:
        logged = session.ops()[-1].body
    assert logged["record"] == load_record(default_url(searched), "demo", number).as_dict()


def test_applying_is_refused_off_the_searched_node_and_for_unknown_or_unfinished_trials(searched, tmp_path):
    import optuna

    number = _compressing_trial(searched)
    record = load_record(default_url(searched), "demo", number).as_dict()
    with Session.open(searched, device="cpu") as session:
        session.apply(O.Label(node=1, label="root"))
        if session.head == 1:
            session.apply(O.ApplyTrial(study="demo", trial=number, record=record))
        head, nodes = session.head, len(session.nodes())
        with pytest.raises(RccError, match=rf"trial {number} of study 'demo' carries no trial record; allowed: "):
            session.apply(O.ApplyTrial(study="demo", trial=number))  # the session itself never reads a study
        with pytest.raises(RccError, match=rf"was searched from node 1, but the head is node {head}; "
                                           r"allowed: checkout node 1 first"):
            session.apply(O.ApplyTrial(study="demo", trial=number, record=record))
        assert len(session.nodes()) == nodes  # nothing recorded
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(open_storage(default_url(searched)), "demo")
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={}, distributions={}))
    pruned = max(t.number for t in study.trials)
    with pytest.raises(RccError, match=rf"trial {pruned} of study 'demo' is PRUNED; allowed: a COMPLETE trial"):
        load_record(default_url(searched), "demo", pruned)
    with pytest.raises(RccError, match=r"trial 99 is not in study 'demo'; allowed: 0 to"):
        load_record(default_url(searched), "demo", 99)
    with pytest.raises(RccError, match=r"study 'nope' is not in .*; allowed: demo"):
        list_trials(default_url(searched), "nope")
    assert main(["search", "apply", str(searched), "--study", "demo"]) == 2  # no --trial


def test_reading_a_study_never_creates_a_storage(tmp_path):
    with pytest.raises(StorageError, match="does not exist yet"):
        list_trials(f"sqlite:///{tmp_path / 'none.db'}", "demo")
    assert not (tmp_path / "none.db").exists()


@pytest.mark.parametrize("fields, message", [
    (dict(study="s", trial=0, storage="postgresql://me:secret@db/x"), "a URL without one"),
    (dict(study="", trial=0), "study '' is invalid"),
    (dict(study="s", trial=-1), "trial -1 is invalid"),
    (dict(study="s", trial=0, record={"plan": {}, "stages": ["prune"]}), "stages \\['prune'\\] are invalid"),
    (dict(study="s", trial=0, record={"plan": {"defaults": {"sparsity": 2}}}), "sparsity 2 is out of range"),
])
def test_bad_apply_trial_ops_are_refused_before_anything_runs(fields, message):
    with pytest.raises(RccError, match=message):
        O.op_from_dict({"op": "apply_trial", **fields})
    assert "secret" not in str(pytest.raises(RccError, O.op_from_dict, {"op": "apply_trial", **fields}).value)


def test_a_storage_url_that_is_not_one_is_refused_naming_the_forms(tmp_path):
    from rcc.search.storage import resolve_url

    with pytest.raises(StorageError, match="is not a database URL; allowed: sqlite:///PATH"):
        resolve_url("not a url", tmp_path)
    assert resolve_url(str(tmp_path / "x.db"), None) == f"sqlite:///{tmp_path / 'x.db'}"


def test_a_study_starts_from_the_current_plan_and_from_sensitivity_figures(tmp_path, tiny_spec):
    from rcc.compression.plan import plan_to_dict, uniform_plan

    directory = tmp_path / "session"
    with Session.create(directory, model=tiny_spec, data="digits", device="cpu") as session:
        session.apply(O.SetPlan(plan=plan_to_dict(uniform_plan(sparsity=0.4, towers=["text"]))))
        text = [layer.name for layer in session.model.layers() if layer.tower == "text"]
    scores = tmp_path / "sensitivity.json"
    scores.write_text(json.dumps({name: float(i) for i, name in enumerate(text)}))  # later layers more sensitive
    assert main(["search", str(directory), "--study", "seeded", "--trials", "2", "--tower", "text", "--space", "layer",
                 "--sparsity", "0:0.8:0.05", "--sensitivity", str(scores), "--calib-per-class", "2",
                 "--device", "cpu"]) == 0
    first, second = load_study(default_url(directory), "seeded").trials
    assert first.user_attrs["origin"] == "current plan"
    assert first.params and all(v == pytest.approx(0.4) for v in first.params.values())
    assert second.user_attrs["origin"] == "sensitivity"
    ordered = [second.params[f"sparsity[{name}]"] for name in text if f"sparsity[{name}]" in second.params]
    assert ordered == sorted(ordered, reverse=True) and ordered[0] > ordered[-1]


def test_patience_timeouts_and_cancel_stop_a_search(tmp_path, tiny_spec):
    from rcc.search.run import run_search
    from rcc.search.study import Limits, StudySettings, patience_exhausted
    from rcc.search.trials import TrialRow

    def row(number, state="COMPLETE", front=False):
        return TrialRow(number, state, 1.0, 1.0, 0.5, 0.5, front, None, "sampler", 1.0)

    rows = [row(0, front=True), row(1), row(2, "PRUNED"), row(3, "RUNNING")]
    assert patience_exhausted(rows, "pareto", 2) and not patience_exhausted(rows, "pareto", 3)
    directory = tmp_path / "session"
    with Session.create(directory, model=tiny_spec, data="digits", device="cpu"):
        pass
    report = run_search(directory, "quick", StudySettings(startup_trials=2), Limits(trials=None, timeout=0.001),
                        device="cpu")
    assert len(report.rows) == 1  # the timeout is checked after every trial
    heard = []
    report = run_search(directory, "stop", StudySettings(startup_trials=2), Limits(trials=5), device="cpu",
                        progress=heard.append, cancel=lambda: len(heard) >= 2)
    assert [r.state for r in report.rows] == ["COMPLETE", "COMPLETE"]  # stopped between trials, nothing failed
    with pytest.raises(RccError, match="cancelled"):
        run_search(directory, "stop", StudySettings(startup_trials=2), Limits(trials=5), device="cpu",
                   cancel=lambda: True)
    assert [r.state for r in list_trials(default_url(directory), "stop")][-1] == "FAIL"  # the trial it was in


def test_sensitivity_scans_are_read_and_a_new_study_seeds_itself_from_the_sessions_scan(tmp_path, tiny_spec,
                                                                                       capsys):
    from rcc.search.seeds import read_scores, scores_from_json

    scan = {"version": 1, "score": "drift", "units": [{"name": "text.0", "layers": ["a", "b"], "drift": 0.5},
                                                      {"name": "text.1", "layers": ["c"], "drift": 0.25}]}
    assert scores_from_json(scan, "scan") == {"a": 0.5, "b": 0.5, "c": 0.25}
    with pytest.raises(RccError, match="is malformed"):
        scores_from_json({"units": [{"layers": ["a"]}]}, "scan")
    with pytest.raises(RccError, match="neither a scan nor an object"):
        scores_from_json(["a"], "list")
    with pytest.raises(RccError, match="cannot be read as JSON"):
        read_scores(tmp_path / "missing.json")

    directory = tmp_path / "session"
    with Session.create(directory, model=tiny_spec, data="digits", device="cpu") as session:
        text = [layer.name for layer in session.model.layers() if layer.tower == "text"]
    (directory / "analysis").mkdir()
    units = [{"name": name, "layers": [name], "drift": float(i)} for i, name in enumerate(text)]
    (directory / "analysis" / "sensitivity-1.json").write_text(json.dumps({"units": units}))
    assert main(["search", str(directory), "--study", "scanned", "--trials", "1", "--tower", "text", "--space",
                 "layer", "--calib-per-class", "2", "--device", "cpu"]) == 0
    assert "seeding from the sensitivity scan" in capsys.readouterr().err
    (first,) = load_study(default_url(directory), "scanned").trials
    assert first.user_attrs["origin"] == "sensitivity"
