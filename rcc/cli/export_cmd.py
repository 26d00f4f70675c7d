"""``rcc-tui export``: write a session node as a compressed or a dense model (recorded as an op)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "export", help="write a session node as a compressed (factors + packed masks) or dense model",
        description="compressed: safetensors with kept values, packed masks and low-rank factors + manifest; "
                    "load with rcc.load_compressed(DIR). dense: the original architecture, loadable by plain "
                    "open_clip or transformers.",
    )
    parser.add_argument("session", metavar="SESSION")
    parser.add_argument("--node", type=int, default=None, help="node id (default: the current node)")
    parser.add_argument("--format", choices=("compressed", "dense"), default="compressed")
    parser.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rcc.cli.common import stdout
    from rcc.output_paths import check_output_dir
    from rcc.services.export import export_node
    from rcc.session.session import Session

    check_output_dir(args.out, "--out")  # before the model loads
    with Session.open(args.session, device=args.device) as session:
        outcome = export_node(session, args.format, str(Path(args.out).resolve()), args.node)
    result = outcome.result
    stdout().print(f"exported node {result['node']} ({args.format}) to {result['out']}: "
                   f"{result['total_bytes'] / 2**20:.2f} MiB (dense weights {result['dense_bytes'] / 2**20:.2f} MiB)")
    return 0
