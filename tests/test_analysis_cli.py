"""``rcc-tui analyze …`` on a tiny session: files written, the session's sensitivity, node statistics, errors."""

from __future__ import annotations

import json

import pytest
from scipy import stats

from rcc.analysis.compare import compare_nodes_stats
from rcc.analysis.errors import AnalysisError
from rcc.analysis.profile import profile_session_op
from rcc.analysis.sensitivity import load_sensitivity
from rcc.cli.main import main
from rcc.compression.plan import CompressionPlan, Rule, plan_to_dict, save_plan
from rcc.session import ops as O
from rcc.session.session import Session

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
PLAN = CompressionPlan(rules=(
    Rule(tower="text", kind="mlp_in", settings={"sparsity": 0.5, "rank": 4}),
    Rule(tower="vision", kind="mlp_out", settings={"sparsity": 0.5}),
))


@pytest.fixture(scope="module")
def session_dir(tmp_path_factory, tiny_spec):
    """Node 1: the tiny model on digits; node 2: the cascade (dare → nullu) of PLAN on it, threshold 0."""
    directory = tmp_path_factory.mktemp("analysis") / "s"
    with Session.create(directory, model=tiny_spec, data="digits", device="cpu") as session:
        session.apply(O.SetPlan(plan=plan_to_dict(PLAN)))
        session.apply(O.RunCascade(stages=("dare", "nullu"), threshold=0.0, calib_per_class=2))
    return directory


def test_sensitivity_of_a_node_is_written_and_stored_in_the_session(session_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["analyze", "sensitivity", "--session", str(session_dir), "--node", "1", "--tower", "text",
                 "--kind", "mlp_in", "--kind", "attn_q", "--rank", "0.5", "--calib-per-class", "2",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "sensitivity.json").read_text())
    assert data["node"] == 1 and data["split"] == "val" and len(data["units"]) == 4
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "sensitivity-proxies.png").is_file()
    report = (out / "sensitivity.md").read_text()
    assert "![drift per unit](sensitivity.png)" in report and "Spearman" in report
    scores = load_sensitivity(session_dir, 1)
    assert set(scores) == {u["name"] for u in data["units"]}
    assert load_sensitivity(session_dir, 2) is None


def test_compare_gives_intervals_and_the_exact_mcnemar_p_value(session_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["analyze", "compare", "--session", str(session_dir), "--a", "1", "--b", "2",
                 "--resamples", "300", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "compare.json").read_text())
    paired = data["paired"]
    b, c = paired["discordant"]
    assert paired["p_value"] == pytest.approx(1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5).pvalue)
    assert paired["n"] == 360 and data["split"] == "test" and paired["test"] == "exact McNemar"
    assert paired["difference"]["estimate"] == pytest.approx(data["interval_b"]["estimate"]
                                                             - data["interval_a"]["estimate"])
    assert "Δ top1" in printed and "exact McNemar" in (out / "compare.md").read_text()
    again = compare_nodes_stats(session_dir, 1, 2, resamples=300)
    assert again.as_dict() == data  # seeded: the same numbers every time


def test_subspace_and_profile_of_the_recorded_cascade(session_dir, tmp_path):
    out = tmp_path / "sub"
    assert main(["analyze", "subspace", "--session", str(session_dir), "--out", str(out)]) == 0
    data = json.loads((out / "subspace.json").read_text())
    changed = {layer["name"] for layer in data["layers"]}
    assert changed == {"transformer.resblocks.0.mlp.c_fc", "transformer.resblocks.1.mlp.c_fc",
                       "visual.transformer.resblocks.0.mlp.c_proj", "visual.transformer.resblocks.1.mlp.c_proj"}
    factorised = [layer for layer in data["layers"] if layer["name"].startswith("transformer.")]
    assert all(layer["k"] == 4 for layer in factorised)
    assert {s["group"] for s in data["towers"]} == {"text", "vision"}

    assert main(["analyze", "profile", "--session", str(session_dir), "--out", str(tmp_path / "prof")]) == 0
    profile = profile_session_op(session_dir)
    assert profile.source == "recorded op 3 (run_cascade)"
    assert [a.stage for a in profile.attempts] == ["dare", "nullu"]
    assert json.loads((tmp_path / "prof" / "profile.json").read_text())["source"] == profile.source


def test_ablation_from_a_node_with_a_plan_file(session_dir, tmp_path):
    plan = tmp_path / "plan.json"
    save_plan(PLAN, plan)
    out = tmp_path / "abl"
    assert main(["analyze", "ablation", "--session", str(session_dir), "--node", "1", "--plan", str(plan),
                 "--stages", "dare,nullu", "--threshold", "0", "--calib-per-class", "2", "--out", str(out)]) == 0
    data = json.loads((out / "ablation.json").read_text())
    assert [v["name"] for v in data["variants"]] == ["dare → nullu", "nullu", "dare", "nullu → dare"]
    assert all(v["test_metric"] is not None for v in data["variants"])
    assert (out / "ablation.png").is_file() and "| variant |" in (out / "ablation.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["sensitivity", "--rank", "0", "--out", "X"], "rank fraction 0.0 is out of range"),
    (["sensitivity", "--rank", "0.5", "--node", "1", "--out", "X"], "--node needs --session"),
    (["sensitivity", "--session", "SESSION", "--node", "9", "--rank", "0.5", "--out", "X"],
     "node 9 is not in session"),
    (["sensitivity", "--session", "SESSION", "--layer", "nope", "--rank", "0.5", "--out", "X"],
     "layer 'nope' is not in model"),
    (["compare", "--session", "SESSION", "--a", "1", "--b", "2", "--confidence", "2", "--out", "X"],
     "confidence 2.0 is out of range"),
    (["subspace", "--out", "X"], "exactly one of --session DIR or --compressed DIR"),
    (["profile", "--session", "SESSION", "--op", "1", "--out", "X"], "has no timings"),
    (["profile", "--session", "NOWHERE", "--out", "X"], "is not a session"),
])
def test_user_errors_exit_2_with_one_line(session_dir, tmp_path, capsys, argv, message):
    argv = [str(session_dir) if a == "SESSION" else str(tmp_path / "none") if a == "NOWHERE"
            else str(tmp_path / "x") if a == "X" else a for a in argv]
    assert main(["analyze", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_compare_refuses_an_unknown_node(session_dir):
    with pytest.raises(AnalysisError, match="node 7 is not in session"):
        compare_nodes_stats(session_dir, 1, 7)


def test_the_report_renders_from_its_json_alone(session_dir, tmp_path, tiny_spec):
    """``analyze report --render-only``: README.md and every PNG from the JSON files, no model run."""
    from rcc.analysis.ablation import ablation_variants, run_ablation
    from rcc.analysis.compare import comparison_of
    from rcc.analysis.json_io import write_json_atomic
    from rcc.analysis.mini_report import META
    from rcc.analysis.probe import metric_of, outcome_probe
    from rcc.analysis.profile import profile_cascade
    from rcc.analysis.sensitivity import ScanSetting, scan_sensitivity, select_layers
    from rcc.analysis.subspace import compare_subspaces
    from rcc.compression.calibration_sets import calibration_sets
    from rcc.compression.cascade import CascadeConfig
    from rcc.data.registry import load_dataset
    from rcc.eval.per_example import example_outcomes
    from rcc.models.registry import load_model

    out = tmp_path / "report"
    model, dense = load_model(tiny_spec, device="cpu"), load_model(tiny_spec, device="cpu")
    calib = load_dataset("digits", "val")
    calibration, preserved = calibration_sets("digits", per_class=2)
    probe = outcome_probe(calib)
    layers = select_layers(model, towers=["text"], kinds=["mlp_in", "projection"])
    for name, rank in (("sensitivity-rank50", 0.5), ("sensitivity-rank02", 0.02)):
        write_json_atomic(out / f"{name}.json",
                          scan_sensitivity(model, ScanSetting(rank=rank), probe, calibration, layers).as_dict())
    config = CascadeConfig(stages=("dare", "nullu"), threshold=0.0)
    ablation = run_ablation(model, PLAN, metric_of(probe), calibration, preserved, config, metric_of(probe),
                            ablation_variants(config.stages, orders=False))
    write_json_atomic(out / "ablation.json", ablation.as_dict())
    cascade, profile = profile_cascade(model, PLAN, metric_of(probe), calibration, preserved, config)
    write_json_atomic(out / "profile.json", {"cascade": cascade.as_dict(), "profile": profile.as_dict()})
    comparison = comparison_of(example_outcomes(dense, calib), example_outcomes(model, calib), ("dense", "RCC"),
                               "digits", "val", resamples=200)
    write_json_atomic(out / "compare.json", comparison.as_dict())
    write_json_atomic(out / "subspace.json", compare_subspaces(dense, model).as_dict())
    write_json_atomic(out / META, {"command": "test", "seconds": 1.0, "machine": "x", "threads": 1, "torch": "t",
                                   "load_average": None, "eval_examples": len(calib), "test_examples": len(calib)})

    assert main(["analyze", "report", "--render-only", "--out", str(out)]) == 0
    readme = (out / "README.md").read_text()
    assert readme.startswith("# rcc-mini analysis report") and "## Headline" in readme
    assert "exact McNemar" in readme and "| dare → nullu | full |" in readme
    for png in ("sensitivity-rank50.png", "sensitivity-rank02-proxies.png", "ablation.png", "subspace.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in readme
    (out / "ablation.json").write_text("[]")
    assert main(["analyze", "report", "--render-only", "--out", str(out)]) == 2
