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
                        help="where the replayed session goes (default: a new directory next to the source)")
    parser.add_argument("--verify", action="store_true", help="exit 1 when any metric differs beyond --tolerance")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="allowed absolute difference (default 0: CPU replays are bit-identical)")
    parser.add_argument("--data-root", action="append", default=None, metavar="DIR",
                        help="a directory the recipe's paths may point into (repeatable; default: .)")
    parser.add_argument("--headless", action="store_true", help="no app (replay is always headless today)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", metavar="REPORT", help="also write the comparison as JSON")
    parser.set_defaults(run=run)


def _default_out(source: str) -> str:
    from pathlib import Path

    base = Path(source).resolve()
    stem = base.name if base.is_dir() else base.stem
    for i in range(1, 1000):
        candidate = base.parent / f"{stem}-replay{'' if i == 1 else i}"
        if not candidate.exists():
            return str(candidate)
    raise RuntimeError("no free replay directory name")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rcc.cli.common import stderr, stdout, table, write_json
    from rcc.errors import RccError
    from rcc.session.replay import load_recipe, replay

    if args.tolerance < 0:
        raise RccError(f"tolerance {args.tolerance} is negative; allowed: a number ≥ 0")
    from rcc.output_paths import check_output_dir

    recipe = load_recipe(args.source)
    out = args.out or _default_out(args.source)
    check_output_dir(out, "--out session directory")  # a new or empty directory, before any op runs
    roots = [Path(r) for r in (args.data_root or ["."])]
    console = stderr()

    def on_op(i: int, op) -> None:
        console.print(f"[{i + 1}/{len(recipe.ops)}] {op.kind}", highlight=False)

    report = replay(recipe, out, roots, device=args.device, on_op=on_op)
    bad = report.mismatches(args.tolerance)
    rows = [[row.node, row.key, row.recorded, row.replayed,
             "same" if row.difference == 0 else ("ok" if row.difference <= args.tolerance else "DIFFERS")]
            for row in report.rows]
    stdout().print(table(f"replay of {args.source} → {out}", ["node", "metric", "recorded", "replayed", ""], rows))
    stdout().print(f"{report.ops} ops replayed; {len(bad)} of {len(report.rows)} metrics differ beyond "
                   f"{args.tolerance:g}")
    write_json(args.json, {"source": args.source, "out": out, "tolerance": args.tolerance,
                           "rows": [{"node": r.node, "metric": r.key, "recorded": r.recorded, "replayed": r.replayed}
                                    for r in report.rows], "mismatches": len(bad)})
    return 1 if args.verify and bad else 0
