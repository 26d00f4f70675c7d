"""``rcc-tui compress``: run the RCC cascade headless and write the compressed model + a report."""

from __future__ import annotations

import argparse

from rcc.cli.common import DATA_HELP, add_model_args


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "compress", help="compress a model with the RCC cascade",
        description="Run Recursive Cascade Compression (DARE → Nullu → AlphaEdit → quant by default) following a plan. "
                    "After each stage the model is evaluated on --eval-split; a stage that brings the metric "
                    "below --threshold × dense is undone and retried gentler, then skipped. Writes the compressed "
                    "model (safetensors + manifest) to --out and the report to --json.",
    )
    add_model_args(parser)
    parser.add_argument("--plan", required=True, metavar="PLAN.json", help="a plan from `rcc-tui plan`")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="where to write the compressed model: a new or empty directory (or --force)")
    parser.add_argument("--force", action="store_true", help="write into --out even if it is not empty")
    parser.add_argument("--data", default="digits", metavar="SPEC", help=DATA_HELP)
    parser.add_argument("--eval-split", default=None,
                        help="split checked after each stage: always val, the eval split (calibration reads train, "
                             "the report's test numbers read test); accepted for old scripts")
    parser.add_argument("--test-split", default="test", help="split of the final before/after report: test")
    parser.add_argument("--threshold", type=float, default=0.95, help="keep ≥ this fraction of the dense metric")
    parser.add_argument("--stages", default="dare,nullu,alphaedit,quant",
                        help="comma-separated stage order (quant acts on layers the plan gives bits 8)")
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--schedule", default="linear", help="linear, cosine, exponential or adaptive")
    parser.add_argument("--steps", type=int, default=1, help="schedule steps (default 1: straight to the plan)")
    parser.add_argument("--calib-per-class", type=int, default=16, help="calibration images per class")
    parser.add_argument("--no-whiten", action="store_true", help="plain SVD instead of activation-aware SVD")
    parser.add_argument("--allocation", choices=("uniform", "global"), default="uniform",
                        help="channel / head patterns: each group loses its planned share (uniform), or a tower's "
                             "groups lose the same total, cheapest units first by measured cost (global)")
    parser.add_argument("--preserve", action="store_true",
                        help="confine AlphaEdit corrections to the null space of preserved inputs (general "
                             "sentences and other images), so their outputs do not move; slower on pruned layers")
    parser.add_argument("--quant-method", choices=("rtn", "gptq"), default="gptq",
                        help="quant stage rounding: round to nearest, or GPTQ error feedback on calibration inputs")
    parser.add_argument("--smooth-alpha", type=float, default=0.0, metavar="A",
                        help="quant stage: SmoothQuant migration strength 0 ≤ A < 1 (default 0: off)")
    parser.add_argument("--no-quant-embeddings", action="store_true",
                        help="quant stage: keep embedding tables in float (default: int8 in towers with int8 layers)")
    parser.add_argument("--base", metavar="SPEC", default=None,
                        help="the model this one was fine-tuned from: DARE then drops and rescales the deltas")
    parser.add_argument("--json", metavar="REPORT", help="also write the report as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from rcc.cli.common import stderr, stdout, table, write_json
    from rcc.compression.calibration_sets import calibration_sets
    from rcc.compression.cascade import CascadeConfig, run_cascade
    from rcc.compression.plan import load_plan, resolve_plan
    from rcc.compression.stage_context import StageOptions
    from rcc.compression.structure import save_compressed
    from rcc.data.registry import load_dataset
    from rcc.data.roles import data_roles
    from rcc.eval.suite import evaluator
    from rcc.models.registry import load_model, resolve_device
    from rcc.output_paths import check_output_dir
    from rcc.session.metric_keys import metric_key

    # Everything the run will write is checked first: the cascade must not find out at its end.
    check_output_dir(args.out, "--out", force=args.force)
    plan = load_plan(args.plan)
    config = CascadeConfig(
        stages=tuple(s.strip() for s in args.stages.split(",") if s.strip()), threshold=args.threshold,
        max_attempts=args.max_attempts, schedule=args.schedule, steps=args.steps,
        options=replace(StageOptions(), whiten=not args.no_whiten, preserve=args.preserve,
                        quant_method=args.quant_method, smooth_alpha=args.smooth_alpha,
                        quant_embeddings=not args.no_quant_embeddings, allocation=args.allocation),
    )
    config.validate()
    roles = data_roles(args.data, args.eval_split, args.test_split)
    eval_split, test_split = roles.eval, roles.test
    check_data = load_dataset(args.data, eval_split)
    test_data = load_dataset(args.data, test_split)
    model = load_model(args.model, device=resolve_device(args.device))
    resolve_plan(plan, model.layers())  # refuse a plan that does not fit the model before any work
    calibration, preserved = calibration_sets(args.data, per_class=args.calib_per_class, seed=plan.seed)
    test_metric = evaluator(test_data)
    dense_test = test_metric(model)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=stderr(),
                  transient=True) as bar:
        task = bar.add_task("calibrating", total=None)

        def progress(stage: str, i: int, total: int, name: str) -> None:
            bar.update(task, completed=i + 1, total=total, description=f"{stage}: {name}")

        def on_attempt(attempt) -> None:
            verdict = "kept" if attempt.accepted else "undone"
            bar.console.print(f"step {attempt.step} {attempt.stage} attempt {attempt.attempt} (strength "
                              f"{attempt.fraction:.3f}): {eval_split} metric {attempt.metric:.4f}, {verdict}")

        base = load_model(args.base, device=resolve_device(args.device)) if args.base else None
        result = run_cascade(model, plan, evaluator(check_data), calibration, preserved, config,
                             progress=progress, on_attempt=on_attempt, base=base)
    final_test = test_metric(model)
    save_compressed(model, args.out, extra={"plan": args.plan, "cascade": result.as_dict()})
    rows = [
        [f"metric on {eval_split} (dense → compressed)", f"{result.dense_metric:.4f} → {result.final_metric:.4f}"],
        [f"metric on {test_split} (dense → compressed)", f"{dense_test:.4f} → {final_test:.4f}"],
        ["selected layers' parameters", f"{result.params_before:,} → {result.params_after:,} "
                                        f"({result.removed_fraction:.1%} removed)"],
        ["model parameters", f"{result.model_params_before:,} → {result.model_params_after:,}"],
        ["attempts (kept / undone)", f"{sum(a.accepted for a in result.attempts)} / "
                                     f"{sum(not a.accepted for a in result.attempts)}"],
        ["stages skipped", len(result.skipped)],
        ["seconds", f"{result.seconds:.1f}"],
        ["splits", roles.layout],
    ]
    stdout().print(table(f"compressed {model.spec} → {args.out}", ["", "value"], rows))
    # "metrics": every number keyed by the split it was measured on (rcc.session.metric_keys).
    metrics = {metric_key(eval_split): {"dense": result.dense_metric, "compressed": result.final_metric},
               metric_key(test_split): {"dense": dense_test, "compressed": final_test}}
    write_json(args.json, {"model": model.spec, "data": args.data, "eval_split": eval_split, "test_split": test_split,
                           "splits": roles.as_dict(), "metrics": metrics, "test_dense": dense_test,
                           "test_compressed": final_test, "cascade": result.as_dict(), "out": args.out})
    return 0
