"""``rcc-tui replay``: re-execute a session's op log (or a recipe) into a new session and compare."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "replay", help="re-run a session or recipe from scratch and compare every node's metrics",
        description="Re-executes the op log of SESSION_OR_RECIPE into a new session and prints, per node, the "
                    "recorded and replayed metrics side by side. Paths in the recipe must lie under the data "
                    "roots (--data-root, default: the current directory).",
    )
    parser.add_argument("source", metavar="SESSION_OR_RECIPE")
    parser.add_argument("--out", metavar="NEW_SESSION", default=None,
                        help="keep the replayed session in this new directory (default: a temporary directory, "
                             "removed when the replay ends, exports included)")
    parser.add_argument("--verify", action="store_true", help="exit 1 when any metric differs beyond --tolerance")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="allowed absolute difference (default 0: CPU replays are bit-identical)")
    parser.add_argument("--data-root", action="append", default=None, metavar="DIR",
                        help="a directory the recipe's paths may point into (repeatable; default: .)")
    parser.add_argument("--headless", action="store_true", help="no app (replay is always headless today)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", metavar="REPORT", help="also write the comparison as JSON")
    parser.set_defaults(run=run)


def metric_text(key: str, value: float | None) -> str:
    """A size as an integer with thousands separators, any other metric with four decimals."""
    if value is None:
        return "–"
    return f"{value:,.0f}" if key.startswith("size/") else f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from rcc.cli.common import stderr, stdout, table, write_json
    from rcc.errors import RccError
    from rcc.output_paths import check_output_dir
    from rcc.session.replay import load_recipe, replay

    if args.tolerance < 0:
        raise RccError(f"tolerance {args.tolerance} is negative; allowed: a number ≥ 0")
    recipe = load_recipe(args.source)
    if args.out:
        check_output_dir(args.out, "--out session directory")  # a new or empty directory, before any op runs
    roots = [Path(r) for r in (args.data_root or ["."])]
    console = stderr()

    def on_op(i: int, op) -> None:
        console.print(f"[{i + 1}/{len(recipe.ops)}] {op.kind}", highlight=False)

    # Without --out the replayed session is a throwaway: a temporary directory, gone afterwards.
    scratch = None if args.out else tempfile.TemporaryDirectory(prefix="rcc-replay-")
    out = args.out or str(Path(scratch.name) / "session")
    try:
        report = replay(recipe, out, roots, device=args.device, on_op=on_op)
    finally:
        if scratch is not None:
            scratch.cleanup()
    where = out if args.out else "a temporary session (removed; --out keeps it)"
    bad = report.mismatches(args.tolerance)
    rows = [[row.node, row.key, metric_text(row.key, row.recorded), metric_text(row.key, row.replayed),
             "same" if row.difference == 0 else ("ok" if row.difference <= args.tolerance else "DIFFERS")]
            for row in report.rows]
    stdout().print(table(f"replay of {args.source} → {where}", ["node", "metric", "recorded", "replayed", ""],
                         rows))
    stdout().print(f"{report.ops} ops replayed; {len(bad)} of {len(report.rows)} metrics differ beyond "
                   f"{args.tolerance:g}")
    write_json(args.json, {"source": args.source, "out": args.out, "tolerance": args.tolerance,
                           "rows": [{"node": r.node, "metric": r.key, "recorded": r.recorded, "replayed": r.replayed}
                                    for r in report.rows], "mismatches": len(bad)})
    return 1 if args.verify and bad else 0
