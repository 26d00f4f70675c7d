"""``rcc-tui plan``: write a starter compression plan (JSON) for a model."""

from __future__ import annotations

import argparse

from rcc.cli.common import add_model_args


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "plan", help="write a starter compression plan",
        description="Write a compression plan JSON: the same settings for every layer matched by --tower / "
                    "--kind (all layers by default), and a summary of the expected parameter count.",
    )
    add_model_args(parser)
    parser.add_argument("--sparsity", type=float, default=0.0, help="0 ≤ s < 1 (default 0)")
    parser.add_argument("--method", default="magnitude", help="dare, magnitude or wanda (default magnitude)")
    parser.add_argument("--pattern", default="unstructured",
                        help="unstructured, row, N:M such as 2:4, channel (remove MLP hidden units: mlp_in rows and "
                             "mlp_out columns; default kind mlp_in) or head (remove attention heads: q/k/v rows and "
                             "out-projection columns; default kind attn_q)")
    parser.add_argument("--rank", default=None, help="an integer, energy:F (0 < F ≤ 1) or auto (needs --budget)")
    parser.add_argument("--budget", type=float, default=None,
                        help="for --rank auto: fraction of the selected layers' parameters to keep (0 < b < 1)")
    parser.add_argument("--correction", action="store_true", help="apply AlphaEdit correction")
    parser.add_argument("--bits", default=None, help="8: the quant stage stores the weights in int8 "
                                                     "(default none: float weights)")
    parser.add_argument("--tower", action="append", help="only layers of this tower (repeatable)")
    parser.add_argument("--kind", action="append", help="only layers of this kind (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, metavar="PLAN.json")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rcc.cli.common import format_value, stdout, table
    from rcc.compression.plan import save_plan, summarize_plan, uniform_plan
    from rcc.compression.plan_rules import check_bits
    from rcc.models.registry import load_model
    from rcc.output_paths import check_output_file

    check_output_file(args.out, "--out plan file")
    model = load_model(args.model, device="cpu")
    layers = model.layers()
    plan = uniform_plan(sparsity=args.sparsity, rank=args.rank, method=args.method, pattern=args.pattern,
                        towers=args.tower, kinds=args.kind, correction=args.correction, budget=args.budget,
                        layers=layers, bits=check_bits(args.bits))
    plan = replace(plan, seed=args.seed)
    summary = summarize_plan(plan, layers)
    save_plan(plan, args.out)
    stdout().print(table(f"plan for {model.spec} → {args.out}", ["", "parameters"], [
        ["selected layers, before", summary.selected_before],
        ["selected layers, after (expected)", summary.selected_after],
        ["removed of selected", f"{format_value(summary.removed_fraction)}"
                                + (" (estimated)" if summary.estimated else "")],
    ]))
    return 0
