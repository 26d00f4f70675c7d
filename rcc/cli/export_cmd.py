"""``rcc-tui export``: write a session node in one of the export formats (recorded as an op)."""

from __future__ import annotations

import argparse

from rcc.session.ops import EXPORT_FORMATS


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "export", help="write a session node as a compressed, dense, ONNX or compressed-tensors model",
        description="compressed: safetensors with kept values, packed masks, low-rank factors and int8 values + "
                    "manifest; load with rcc.load_compressed(DIR). dense: the original architecture, loadable by "
                    "plain open_clip or transformers. onnx: image and text encoders for onnxruntime (int8 as "
                    "MatMulInteger, low rank as two MatMuls). hf-compressed: a compressed-tensors checkpoint "
                    "(int8) that transformers loads (Hugging Face CLIP and BLIP).",
    )
    parser.add_argument("session", metavar="SESSION")
    parser.add_argument("--node", type=int, default=None, help="node id (default: the current node)")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="compressed")
    parser.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rcc.cli.common import stdout
    from rcc.output_paths import check_output_dir
    from rcc.services.export import export_node
    from rcc.services.outcomes import export_notes
    from rcc.session.session import Session

    check_output_dir(args.out, "--out")  # before the model loads
    with Session.open(args.session, device=args.device) as session:
        outcome = export_node(session, args.format, str(Path(args.out).resolve()), args.node)
    result = outcome.result
    console = stdout()
    console.print(f"exported node {result['node']} ({args.format}) to {result['out']}: "
                  f"{result['total_bytes'] / 2**20:.2f} MiB (dense weights {result['dense_bytes'] / 2**20:.2f} MiB)")
    for line in export_notes(result):
        console.print(line)
    return 0
