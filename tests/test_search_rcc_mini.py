"""Searching rcc-mini's pretrained text tower: the search beats the uniform plan of the same size,
hopeless trials are pruned (and recorded so), and an applied trial replays to the same metric.

Setting: magnitude pruning of the MiniLM text tower at 70–95 % with one multiplier per block.
Uniform magnitude pruning loses accuracy fast past 80 % (digits calib top-1 0.978 dense, about
0.88 at 85 %), and the blocks are far from equally sensitive (the last one most), so a plan that
spares the sensitive blocks at the same size is a real improvement a few trials can find.
"""

import copy
import math
from pathlib import Path

import pytest

from rcc.compression.plan import uniform_plan
from rcc.search.objective import ObjectiveConfig
from rcc.search.pruning import PruningConfig
from rcc.session.trial_compress import compress
from rcc.compression.trial_record import make_record
from rcc.search.space import Bounds, SpaceConfig
from rcc.search.storage import default_url
from rcc.search.run import run_search
from rcc.search.study import Limits, StudySettings
from rcc.search.trials import dominates, list_trials, load_study
from rcc.compression.stored_size import size_metrics
from rcc.session.replay import load_recipe, replay
from rcc.session.session import Session

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

TEXT_BLOCKS = SpaceConfig(level="global", group_by=("block",), towers=("text",), sparsity=Bounds(0.7, 0.95, 0.05),
                          multiplier=Bounds(0.6, 1.2, 0.1), method="magnitude")
OBJECTIVE = ObjectiveConfig(calib_per_class=1)


@pytest.fixture(scope="module")
def session_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("search-mini") / "session"
    with Session.create(directory, device="cpu"):
        pass
    return directory


@pytest.fixture(scope="module")
def study(session_dir):
    """A pareto study of 8 trials (TPE, seed 0) on the text tower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the function-scoped one_thread
    try:
        settings = StudySettings(space=TEXT_BLOCKS, objective=OBJECTIVE, startup_trials=5)
        return run_search(session_dir, "text-blocks", settings, Limits(trials=8), device="cpu")
    finally:
        torch.set_num_threads(threads)


def _uniform(model, removed: float, calibration, preserved, evaluate):
    """(stored values, calib accuracy) of magnitude pruning every text layer at ``removed``."""
    copied = copy.deepcopy(model)
    plan = uniform_plan(sparsity=removed, method="magnitude", towers=["text"])
    compress(copied, make_record(plan, ("dare",), 1, True, False, 1), calibration, preserved)
    return size_metrics(copied)["size/params"], evaluate(copied)


def test_a_small_study_finds_plans_that_dominate_the_uniform_plan_of_the_same_size(study, rcc_mini):
    from rcc.compression.calibration_sets import calibration_sets
    from rcc.data.registry import load_dataset
    from rcc.eval.suite import evaluator

    calibration, preserved = calibration_sets("digits", per_class=1, seed=0)
    evaluate = evaluator(load_dataset("digits", "val"))
    complete = [r for r in study.rows if r.state == "COMPLETE"]
    assert len(complete) >= 6 and study.front
    # The most accurate front trials that remove at least 75 % of the text tower, best first.
    candidates = sorted((r for r in study.front if r.removed >= 0.75), key=lambda r: -r.accuracy)[:2]
    found = []
    for row in candidates:
        # A hair less removed than the trial: the uniform plan stores at least as many values.
        uniform_size, uniform_accuracy = _uniform(rcc_mini, math.floor(row.removed * 1000) / 1000, calibration,
                                                  preserved, evaluate)
        found.append((row.number, row.size, row.accuracy, uniform_size, uniform_accuracy))
        if dominates((row.size, row.accuracy), (uniform_size, uniform_accuracy)) and row.accuracy > uniform_accuracy:
            break
    else:
        pytest.fail(f"no front trial beat the uniform plan of its size: (trial, size, accuracy, uniform size, "
                    f"uniform accuracy) = {found}")
    number, size, accuracy, uniform_size, uniform_accuracy = found[-1]
    assert size <= uniform_size and accuracy >= uniform_accuracy + 2 / 180  # at least two calib images better


def test_hopeless_trials_are_pruned_on_a_small_rung_and_recorded_as_pruned(session_dir):
    settings = StudySettings(space=SpaceConfig(level="global", towers=("text",), sparsity=Bounds(0.9, 0.95, 0.05),
                                               multiplier=None, method="magnitude"),
                             objective=ObjectiveConfig(mode="min-size", threshold=0.95, calib_per_class=1),
                             pruning=PruningConfig(rungs=(0.25, 1.0)), startup_trials=2)
    report = run_search(session_dir, "hopeless", settings, Limits(trials=2), device="cpu")
    rows = list_trials(default_url(session_dir), "hopeless")
    assert [r.state for r in rows] == ["PRUNED", "PRUNED"] and report.front == ()
    for row, trial in zip(rows, load_study(default_url(session_dir), "hopeless").trials):
        assert "below" in row.note and "threshold × dense" in row.note
        assert [n for n, _ in trial.user_attrs["rungs"]] == [50]  # stopped after the first rung
        assert trial.intermediate_values and list(trial.intermediate_values)[0] == 50
        assert trial.constraints["accuracy"] > 0  # infeasible, as the TPE sampler must know
        assert trial.user_attrs["record"]["plan"]["overrides"]  # still reproducible


def test_an_applied_trial_replays_to_the_same_metric(study, session_dir, tmp_path):
    from rcc.cli.main import main

    best = max((r for r in study.front if r.removed), key=lambda r: r.accuracy)
    assert main(["search", "apply", str(session_dir), "--study", "text-blocks", "--trial", str(best.number),
                 "--device", "cpu"]) == 0
    with Session.open(session_dir, read_only=True) as session:
        node = session.nodes()[-1]
    assert node.metrics["val/primary"] == best.accuracy
    assert node.metrics["size/params"] == best.size
    report = replay(load_recipe(session_dir), tmp_path / "replayed", [Path(".")], device="cpu")
    assert report.mismatches(0.0) == []
    assert [r.replayed for r in report.rows if r.node == node.id and r.key == "val/primary"] == [best.accuracy]
