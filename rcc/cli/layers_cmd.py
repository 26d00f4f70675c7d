"""``rcc-tui layers``: print a model's layer inventory (every compressible weight matrix)."""

from __future__ import annotations

import argparse

from rcc.cli.common import add_model_args, stdout, table, write_json


def add_parser(sub) -> None:
    parser = sub.add_parser("layers", help="print the layer inventory of a model",
                            description="Print every compressible weight matrix of a model: name, tower, "
                                        "block, kind, shape and parameter count.")
    add_model_args(parser)
    parser.add_argument("--tower", choices=("vision", "text", "fusion", "decoder"), help="only this tower")
    parser.add_argument("--json", metavar="OUT", help="also write the inventory as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rcc.models.registry import load_model

    model = load_model(args.model, device="cpu")
    layers = [layer for layer in model.layers() if args.tower in (None, layer.tower)]
    rows = [[layer.name, layer.tower, layer.block, layer.kind, f"{layer.shape[0]}×{layer.shape[1]}", layer.params]
            for layer in layers]
    covered = sum(layer.params for layer in layers)
    total = model.num_parameters()
    console = stdout()
    console.print(table(f"{model.spec}: {len(layers)} layers", ["name", "tower", "block", "kind", "shape", "params"], rows))
    console.print(f"{covered:,} of {total:,} parameters ({covered / total:.1%}) are in listed layers")
    write_json(args.json, {"model": model.spec, "total_parameters": total,
                           "layers": [layer.as_dict() for layer in layers]})
    return 0
