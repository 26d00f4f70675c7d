"""Sessions and recipes made before the data roles: digits' go on (calib is val), an eval-on-test one is refused.

Before, a node's eval metric was stored as ``eval/primary`` on the session's eval split: the
digits' ``calib`` (the images now called ``val``) or, for every other kind, ``test``. Such a
session is rewritten here into that old form (keys, meta) and opened with today's code.
"""

import json
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from rcc.cli.main import main
from rcc.errors import RccError
from rcc.session import ops as O
from rcc.session.replay import load_recipe, parse_recipe, recipe_of, replay
from rcc.session.session import Session

pytestmark = pytest.mark.usefixtures("one_thread")


def _make_old(directory: Path, eval_split: str) -> None:
    """Rewrite a session as the code before the data roles stored it."""
    db = sqlite3.connect(directory / "session.db")
    with db:
        db.execute("UPDATE metrics SET key = 'eval/primary' WHERE key = 'val/primary'")
        db.execute("UPDATE meta SET value = ? WHERE key = 'eval_split'", (eval_split,))
        db.execute("DELETE FROM meta WHERE key = 'splits'")
    db.close()


@pytest.fixture(scope="module")
def old_digits(tmp_path_factory, tiny_spec):
    directory = tmp_path_factory.mktemp("legacy") / "digits"
    with Session.create(directory, model=tiny_spec, data="digits", device="cpu") as session:
        session.apply(O.Evaluate(split="test"))
        metrics = dict(session.nodes()[0].metrics)
    _make_old(directory, "calib")
    return directory, metrics


def test_an_old_digits_session_reads_with_split_named_metrics(old_digits):
    directory, metrics = old_digits
    with Session.open(directory, read_only=True) as session:
        root = session.nodes()[0]
        assert session.eval_split == "val" and root.eval_split == "val"
        assert root.metrics == metrics and root.eval_metric == metrics["val/primary"]
        assert "eval/primary" not in root.metrics
        assert session.splits() == {"layout": "train 70 % / val 10 % / test 20 % of scikit-learn's 1,797 digits "
                                              "(stratified, seed 0)"}


def test_an_old_digits_session_goes_on_and_its_old_recipe_replays_bit_for_bit(old_digits, tmp_path, tiny_spec):
    directory, metrics = old_digits
    with Session.open(directory, device="cpu") as session:  # writable: the model loads on val
        session.apply(O.SetPlan(plan={"version": 1, "defaults": {"sparsity": 0.5, "method": "magnitude"},
                                      "rules": [], "overrides": {}, "seed": 0}))
        outcome = session.apply(O.RunStage(stage="dare"))
        assert set(outcome.metrics) >= {"val/primary", "size/params"}
        old = recipe_of(session)
    # The recipe as the old code wrote it: eval/primary keys.
    for node in old["nodes"].values():
        node["eval/primary"] = node.pop("val/primary")
    recipe = parse_recipe(json.loads(json.dumps(old)))
    assert all("val/primary" in m and "eval/primary" not in m for m in recipe.recorded.values())
    report = replay(recipe, tmp_path / "again", [Path(tiny_spec.split("@")[1]).parent], device="cpu")
    assert report.mismatches(0.0) == [] and {r.key for r in report.rows if r.node == 1} >= {"val/primary",
                                                                                           "test/primary"}


@pytest.fixture
def old_folder(tmp_path, tiny_spec):
    """An imagefolder session as made when eval and test were both the whole folder."""
    for c in range(2):
        for i in range(10):
            (tmp_path / "pics" / f"c{c}").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), (c * 100, i * 20, 0)).save(tmp_path / "pics" / f"c{c}" / f"{i}.png")
    directory = tmp_path / "folder-session"
    with Session.create(directory, model=tiny_spec, data=f"imagefolder:{tmp_path / 'pics'}", device="cpu"):
        pass
    _make_old(directory, "test")
    return directory


def test_an_old_session_that_optimised_on_test_is_readable_but_refused_for_more_work(old_folder, capsys):
    with Session.open(old_folder, read_only=True) as session:
        root = session.nodes()[0]
        assert root.eval_split == "test" and set(root.metrics) >= {"test/primary"}  # what it was measured on
    with pytest.raises(RccError, match=r"^session '.*folder-session' cannot continue: its eval split 'test' is not "
                                       r"val \(it was made before rcc kept calibration, eval and test apart, and "
                                       r"optimised on the split it reports\); allowed: .* which evaluates on val "
                                       r"\(`rcc-tui replay .*folder-session --out NEW`\)$"):
        Session.open(old_folder, device="cpu")
    code = main(["session", "apply", str(old_folder), '{"op": "evaluate", "split": "test"}', "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot continue" in err and len(err.strip().splitlines()) == 1
    assert main(["session", "show", str(old_folder)]) == 0
    assert "test/primary" in capsys.readouterr().out


def test_replaying_it_moves_eval_to_val_and_a_recipe_naming_test_as_eval_is_refused(old_folder, tmp_path,
                                                                                      tiny_spec):
    recipe = load_recipe(old_folder)
    roots = [tmp_path, Path(tiny_spec.split("@")[1]).parent]
    report = replay(recipe, tmp_path / "new", roots, device="cpu")
    keys = {row.key for row in report.rows}
    assert {"val/primary", "test/primary"} <= keys  # replayed on val; recorded on test: shown apart, not equal
    with Session.open(tmp_path / "new", read_only=True) as session:
        assert session.eval_split == "val" and "?split=0.7,0.1,0.2&seed=0" in session.setting("data")
    first = {"op": "load_model", "model": recipe.ops[0].model, "data": recipe.ops[0].data, "eval_split": "test"}
    explicit = parse_recipe({"format": "rcc-recipe", "version": 1, "ops": [first]})
    with pytest.raises(RccError, match=r"^split 'test' cannot be the eval split of 'imagefolder:.*': it is the split "
                                       r"reported as test; allowed: val$"):
        replay(explicit, tmp_path / "refused", roots, device="cpu")
    assert not any((tmp_path / "refused").iterdir())  # nothing left behind
