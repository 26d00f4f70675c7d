"""``rcc-tui analyze sensitivity|subspace|ablation|compare|profile|report``: analyses, headless.

Every action writes ``<out>/<action>.json`` and a Markdown report ``<out>/<action>.md`` with
its PNG plots next to it. A model comes from a session node (``--session DIR [--node N]``,
read-only) or from a spec (``--model``, ``--data``).
"""

from __future__ import annotations

import argparse

from rcc.cli.common import DATA_HELP, MODEL_HELP

REPORT_DIR = "docs/analysis"


def _source_args(parser: argparse.ArgumentParser, node_help: str = "node to analyse (default: the head)") -> None:
    parser.add_argument("--session", metavar="DIR", default=None, help="take the model from this session (read-only)")
    parser.add_argument("--node", type=int, default=None, help=node_help)
    parser.add_argument("--model", default=None, metavar="SPEC", help=MODEL_HELP + " (without --session)")
    parser.add_argument("--data", default=None, metavar="SPEC", help=DATA_HELP + " (default: the session's, or digits)")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N")


def _out_arg(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--out", required=default is None, default=default, metavar="DIR",
                        help="folder for the JSON, the Markdown report and its PNG plots")
    parser.set_defaults(out_folder=True)  # checked before any work (rcc.cli.main.check_outputs)


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "analyze", help="sensitivity, subspaces, stage ablation, significance, profiles",
        description="Analyses of models and session nodes, written as JSON plus a Markdown report with PNG plots.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    sens = actions.add_parser("sensitivity", help="compress one layer (or group) at a time; measure what it costs",
                              description="Compress each selected layer alone at one setting and measure the metric "
                                          "drop, the prediction drift (KL from the dense predictions) and the size "
                                          "saved; rank the cheap proxies against them. With --session the scan is "
                                          "also stored in the session (analysis/sensitivity-NODE.json) for the app.")
    _source_args(sens)
    sens.add_argument("--split", default=None,
                      help="split to measure on: the eval split, val (a scan guides compression, so it never "
                           "reads test); accepted for old scripts")
    sens.add_argument("--rank", type=float, default=None, metavar="F",
                      help="rank as a fraction of each layer's full rank min(m, n), e.g. 0.5")
    sens.add_argument("--sparsity", type=float, default=0.0, help="prune to this sparsity first (0 ≤ s < 1)")
    sens.add_argument("--method", default="magnitude", help="pruning method: magnitude, wanda or dare")
    sens.add_argument("--pattern", default="unstructured",
                      help="unstructured, or channel / head: each unit is one MLP / attention losing --sparsity of "
                           "its hidden units / heads")
    sens.add_argument("--no-whiten", action="store_true", help="plain SVD instead of activation-aware SVD")
    sens.add_argument("--tower", action="append", default=None, help="only layers of this tower (repeatable)")
    sens.add_argument("--kind", action="append", default=None, help="only layers of this kind (repeatable)")
    sens.add_argument("--layer", action="append", default=None, help="only this layer (repeatable)")
    sens.add_argument("--group-by", default="layer", choices=("layer", "block", "kind"))
    sens.add_argument("--calib-per-class", type=int, default=16, help="calibration images per class")
    sens.add_argument("--seed", type=int, default=0)
    _out_arg(sens)
    sens.set_defaults(run=run_sensitivity)

    sub_ = actions.add_parser("subspace", help="principal angles / Grassmann distance, dense against compressed",
                              description="Angles between the top-k left and right singular subspaces of every "
                                          "changed layer: session nodes --a (default: the root) and --b (default: the "
                                          "head), or --compressed DIR (from `rcc-tui compress`) against its base "
                                          "model.")
    sub_.add_argument("--session", metavar="DIR", default=None)
    sub_.add_argument("--a", type=int, default=None, help="dense node (default: the session's root)")
    sub_.add_argument("--b", type=int, default=None, help="compressed node (default: the head)")
    sub_.add_argument("--compressed", metavar="DIR", default=None, help="a compressed model folder (without --session)")
    sub_.add_argument("--k", type=int, default=None, help="subspace dimension (default: the compressed rank, else "
                                                           "a quarter of the full rank)")
    sub_.add_argument("--tower", action="append", default=None, help="only layers of this tower (repeatable)")
    _out_arg(sub_)
    sub_.set_defaults(run=run_subspace)

    abl = actions.add_parser("ablation", help="the cascade with each stage removed and in every stage order",
                             description="Run the cascade from the same start with each stage removed and in every "
                                         "order of its stages; a table of size, metric and time per variant.")
    _source_args(abl, node_help="starting node (default: the head)")
    abl.add_argument("--plan", default=None, metavar="PLAN.json", help="the plan (default: the node's plan)")
    abl.add_argument("--stages", default="dare,nullu,alphaedit", help="comma-separated stages of the full variant")
    abl.add_argument("--threshold", type=float, default=0.95)
    abl.add_argument("--max-attempts", type=int, default=3)
    abl.add_argument("--schedule", default="linear")
    abl.add_argument("--steps", type=int, default=1)
    abl.add_argument("--no-orders", action="store_true", help="skip the reorderings")
    abl.add_argument("--no-removals", action="store_true", help="skip the one-stage-removed variants")
    abl.add_argument("--calib-per-class", type=int, default=16)
    abl.add_argument("--test-split", default=None, help="also measure each variant on this split (default: test "
                                                        "when the dataset has one)")
    _out_arg(abl)
    abl.set_defaults(run=run_ablation)

    cmp_ = actions.add_parser("compare", help="two session nodes: bootstrap intervals and a paired significance test",
                              description="Evaluate two nodes per example on the same split; bootstrap intervals of "
                                          "each metric, the difference with its interval, and its p-value (exact "
                                          "McNemar for accuracy, paired bootstrap for recall).")
    cmp_.add_argument("--session", metavar="DIR", required=True)
    cmp_.add_argument("--a", type=int, required=True, help="first node")
    cmp_.add_argument("--b", type=int, required=True, help="second node (Δ = b − a)")
    cmp_.add_argument("--split", default=None, help="default: the session's test split")
    cmp_.add_argument("--confidence", type=float, default=0.95)
    cmp_.add_argument("--resamples", type=int, default=2000)
    cmp_.add_argument("--seed", type=int, default=0)
    cmp_.add_argument("--device", default="cpu")
    _out_arg(cmp_)
    cmp_.set_defaults(run=run_compare)

    prof = actions.add_parser("profile", help="time per stage of a recorded session op",
                              description="Times per stage attempt of a session's run_cascade / run_stage op, as "
                                          "recorded (for per-layer times and memory, use ablation or the Python API "
                                          "rcc.analysis.profile.profile_cascade).")
    prof.add_argument("--session", metavar="DIR", required=True)
    prof.add_argument("--op", type=int, default=None, help="op sequence number (default: the last compression op)")
    _out_arg(prof)
    prof.set_defaults(run=run_profile)

    rep = actions.add_parser("report", help="the rcc-mini analysis report (docs/analysis)",
                             description="Sensitivity of every rcc-mini text-tower layer at 50 %% rank (and at 2 %% "
                                         "rank, where single layers start to hurt), and the stage ablation / ordering "
                                         "table of a text-tower plan; writes README.md, JSON and PNGs.")
    rep.add_argument("--quick", action="store_true", help="a few layers and no reorderings (a smoke test)")
    rep.add_argument("--render-only", action="store_true",
                     help="redraw README.md and the PNGs from the JSON already in --out (runs no model)")
    _out_arg(rep, REPORT_DIR)
    rep.set_defaults(run=run_report)


# -- helpers --------------------------------------------------------------------------------------

def _progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rcc.cli.common import stderr

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=stderr(), transient=True)


def _updater(bar, label: str):
    task = bar.add_task(label, total=None)

    def update(i: int, total: int, name: str) -> None:
        bar.update(task, completed=i, total=total, description=f"{label}: {name}")

    return update


def _load_source(args):
    """(model, data spec, eval split, test split, plan or None, node or None) from --session/--model."""
    from rcc.analysis.errors import AnalysisError
    from rcc.models.registry import load_model, resolve_device
    from rcc.session.workspace import default_eval_split

    if args.session:
        if args.model:
            raise AnalysisError("--model and --session were both given; allowed: one source of the model")
        from rcc.analysis.session_inputs import model_at_node

        found = model_at_node(args.session, args.node, resolve_device(args.device))
        data = args.data or found.data
        return found.model, data, found.eval_split if data == found.data else default_eval_split(data), \
            found.test_split, found.plan, found.node
    if args.node is not None:
        raise AnalysisError("--node needs --session; allowed: --session DIR --node N, or --model SPEC")
    data = args.data or "digits"
    model = load_model(args.model, device=resolve_device(args.device))
    return model, data, default_eval_split(data), "test", None, None


def _write(out: str, name: str, payload: dict, title: str, sections: list[str]) -> None:
    from pathlib import Path

    from rcc.analysis.report import write_markdown
    from rcc.analysis.json_io import write_json_atomic
    from rcc.cli.common import stdout

    write_json_atomic(Path(out) / f"{name}.json", payload)
    report = write_markdown(Path(out) / f"{name}.md", title, sections)
    stdout().print(f"wrote {Path(out) / (name + '.json')} and {report}")


# -- actions --------------------------------------------------------------------------------------

def run_sensitivity(args: argparse.Namespace) -> int:
    from rcc.analysis.report import sensitivity_section
    from rcc.analysis.sensitivity import ScanSetting, select_layers
    from rcc.cli.common import stdout, table
    from rcc.services.sensitivity import scan_layers, store_scan

    setting = ScanSetting(rank=args.rank, sparsity=args.sparsity, method=args.method, whiten=not args.no_whiten,
                          seed=args.seed, pattern=args.pattern)
    model, data, eval_split, _, _, node = _load_source(args)
    layers = select_layers(model, args.layer, args.tower, args.kind)
    with _progress_bar() as bar:
        update = _updater(bar, "sensitivity")
        result = scan_layers(model, data, args.split or eval_split, setting, layers, args.group_by,
                             calib_per_class=args.calib_per_class,
                             progress=lambda event: update(event.done, event.total or 0, event.detail))
    if node is not None:
        stored = store_scan(result, args.session, node)
        result = stored.result
        stdout().print(f"stored in the session: {stored.path}")
    rows = [[u.name, u.drift, u.metric_drop, u.saved] for u in result.ranked()[:15]]
    stdout().print(table(f"most sensitive of {len(result.units)} ({setting.describe()})",
                         ["unit", "drift", "drop", "saved"], rows))
    _write(args.out, "sensitivity", result.as_dict(), f"Sensitivity of {result.model}",
           [sensitivity_section(result, args.out)])
    return 0


def run_subspace(args: argparse.Namespace) -> int:
    from rcc.analysis.errors import AnalysisError
    from rcc.analysis.report import subspace_section
    from rcc.analysis.subspace import compare_subspaces
    from rcc.cli.common import stdout, table

    if bool(args.session) == bool(args.compressed):
        raise AnalysisError("give exactly one of --session DIR or --compressed DIR")
    if args.session:
        from rcc.analysis.session_inputs import model_at_node, root_node

        a = args.a if args.a is not None else root_node(args.session)
        dense = model_at_node(args.session, a).model
        found = model_at_node(args.session, args.b)
        compressed, names = found.model, (f"node {a}", f"node {found.node}")
    else:
        from rcc.compression.structure import load_compressed
        from rcc.models.registry import load_model

        compressed = load_compressed(args.compressed, device="cpu")
        dense = load_model(compressed.spec, device="cpu")
        names = (compressed.spec, args.compressed)
    layers = [layer.name for layer in compressed.layers() if not args.tower or layer.tower in args.tower]
    result = compare_subspaces(dense, compressed, k=args.k, layers=layers)
    stdout().print(table(f"Grassmann distance, {names[0]} → {names[1]}",
                         ["tower", "layers", "mean left", "mean right", "max"],
                         [[s.group, s.layers, s.mean_left, s.mean_right, s.max_distance] for s in result.towers]))
    _write(args.out, "subspace", {"a": names[0], "b": names[1], **result.as_dict()},
           f"Subspaces: {names[0]} → {names[1]}", [subspace_section(result, args.out)])
    return 0


def run_ablation(args: argparse.Namespace) -> int:
    from rcc.analysis.ablation import ablation_variants, run_ablation as ablate
    from rcc.analysis.errors import AnalysisError
    from rcc.analysis.probe import metric_of, outcome_probe
    from rcc.analysis.report import ablation_section
    from rcc.cli.common import stdout, table
    from rcc.compression.calibration_sets import calibration_sets
    from rcc.compression.cascade import CascadeConfig
    from rcc.compression.plan import load_plan, resolve_plan
    from rcc.data.registry import dataset_splits, load_dataset
    from rcc.data.roles import eval_split_of

    model, data, eval_split, test_split, node_plan, _ = _load_source(args)
    plan = load_plan(args.plan) if args.plan else node_plan
    if plan is None:
        raise AnalysisError("no plan: give --plan PLAN.json (or --session, to use the node's plan)")
    resolve_plan(plan, model.layers())
    config = CascadeConfig(stages=tuple(s.strip() for s in args.stages.split(",") if s.strip()),
                           threshold=args.threshold, max_attempts=args.max_attempts, schedule=args.schedule,
                           steps=args.steps)
    config.validate()
    test = args.test_split or (test_split if test_split in dataset_splits(data) else None)
    calibration, preserved = calibration_sets(data, per_class=args.calib_per_class, seed=plan.seed)
    eval_split = eval_split_of(data, eval_split)
    evaluate = metric_of(outcome_probe(load_dataset(data, eval_split)))
    test_evaluate = metric_of(outcome_probe(load_dataset(data, test))) if test else None
    variants = ablation_variants(config.stages, orders=not args.no_orders, removals=not args.no_removals)
    with _progress_bar() as bar:
        result = ablate(model, plan, evaluate, calibration, preserved, config, test_evaluate, variants,
                        progress=_updater(bar, "ablation"), splits=(eval_split, test))
    stdout().print(table("ablation", ["variant", "removed", f"{eval_split} metric", "seconds"],
                         [[v.name, f"{v.removed_fraction:.1%}", v.metric, round(v.seconds, 1)]
                          for v in result.variants]))
    _write(args.out, "ablation", result.as_dict(), "Stage ablation", [ablation_section(result, args.out)])
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from rcc.analysis.compare import compare_nodes_stats
    from rcc.analysis.report import compare_section
    from rcc.cli.common import stdout

    result = compare_nodes_stats(args.session, args.a, args.b, args.split, args.confidence, args.resamples,
                                 args.seed, args.device)
    stdout().print(result.summary())
    _write(args.out, "compare", result.as_dict(), f"Node {args.a} against node {args.b}", [compare_section(result)])
    return 0


def run_profile(args: argparse.Namespace) -> int:
    from rcc.analysis.profile import profile_session_op
    from rcc.analysis.report import profile_section
    from rcc.cli.common import stdout

    profile = profile_session_op(args.session, args.op)
    stdout().print(f"{profile.source}: {profile.total_seconds:.1f} s; "
                   + ", ".join(f"{k} {v:.1f} s" for k, v in profile.stage_seconds.items()))
    _write(args.out, "profile", profile.as_dict(), "Profile", [profile_section(profile)])
    return 0


def run_report(args: argparse.Namespace) -> int:
    from rcc.analysis.mini_report import build_report, render_report
    from rcc.cli.common import stdout

    if args.render_only:
        stdout().print(f"wrote {render_report(args.out)}")
        return 0
    with _progress_bar() as bar:
        path = build_report(args.out, quick=args.quick, progress=lambda label: _updater(bar, label))
    stdout().print(f"wrote {path}")
    return 0
