"""``rcc-tui layers``: print a model's layer inventory (every compressible weight matrix)."""

from __future__ import annotations

import argparse

from rcc.cli.common import add_model_args, stdout, table, write_json


def add_parser(sub) -> None:
    parser = sub.add_parser("layers", help="print the layer inventory of a model",
                            description="Print every compressible weight matrix of a model: name, tower, "
                                        "block, kind, shape (and the dense shape where structured pruning "
                                        "narrowed it), heads, parameter count and what is stored. "
                                        "With --session, the model at a node of a session.")
    add_model_args(parser)
    parser.add_argument("--session", default=None, metavar="DIR", help="a session: list the model at its head")
    parser.add_argument("--node", type=int, default=None, help="with --session: this node instead of the head")
    parser.add_argument("--tower", choices=("vision", "text", "fusion", "decoder"), help="only this tower")
    parser.add_argument("--json", metavar="OUT", help="also write the inventory as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rcc.compression.layers import stored_parameters
    from rcc.errors import RccError
    from rcc.models.registry import load_model, resolve_device

    if args.session:
        if args.model:
            raise RccError("--model and --session were both given; allowed: one source of the model")
        from rcc.analysis.session_inputs import model_at_node

        model = model_at_node(args.session, args.node, resolve_device(args.device)).model
    elif args.node is not None:
        raise RccError("--node needs --session; allowed: --session DIR --node N, or --model SPEC")
    else:
        model = load_model(args.model, device="cpu")
    layers = [layer for layer in model.layers() if args.tower in (None, layer.tower)]
    stored = {layer.name: stored_parameters(model.module, layer) for layer in layers}
    rows = [[layer.name, layer.tower, layer.block, layer.kind, _shape(layer.shape),
             _shape(layer.dense_shape) if layer.dense_shape else "", layer.heads, layer.params, stored[layer.name]]
            for layer in layers]
    covered = sum(layer.params for layer in layers)
    total = model.num_parameters()
    narrowed = [layer for layer in layers if layer.dense_shape]
    console = stdout()
    console.print(table(f"{model.spec}: {len(layers)} layers",
                        ["name", "tower", "block", "kind", "shape", "dense shape", "heads", "params", "stored"], rows))
    console.print(f"{covered:,} of {total:,} parameters ({covered / total:.1%}) are in listed layers; "
                  f"{sum(stored.values()):,} stored")
    if narrowed:
        dense = sum(layer.original_shape[0] * layer.original_shape[1] for layer in narrowed)
        console.print(f"{len(narrowed)} layers narrowed by structured pruning: "
                      f"{sum(layer.params for layer in narrowed):,} of their {dense:,} dense weights kept")
    write_json(args.json, {"model": model.spec, "total_parameters": total,
                           "layers": [{**layer.as_dict(), "stored": stored[layer.name]} for layer in layers]})
    return 0


def _shape(shape) -> str:
    return f"{shape[0]}×{shape[1]}"
