"""``rcc-tui eval``: evaluate a model on a dataset (zero-shot, retrieval or captioning)."""

from __future__ import annotations

import argparse

from rcc.cli.common import DATA_HELP, add_model_args


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "eval", help="evaluate a model on a dataset",
        description="Evaluate a model: zero-shot top-1/top-5/mean per-class recall, retrieval recall@1/5/10 "
                    "both ways (for BLIP also after ITM re-ranking), or captioning BLEU-4/CIDEr (greedy or beam "
                    "search). With no --model/--data: rcc-mini on the digits test split.",
    )
    add_model_args(parser)
    parser.add_argument("--data", default="digits", metavar="SPEC", help=DATA_HELP)
    parser.add_argument("--split", default="test",
                        help="dataset split: test (default), val or train; all for a single folder or captions file "
                             "that is a test set in itself")
    parser.add_argument("--task", choices=("zeroshot", "retrieval", "caption"), default=None,
                        help="default: zeroshot for labelled images, retrieval (or caption) for captions")
    parser.add_argument("--templates", default=None, metavar="NAME|FILE",
                        help="zero-shot prompt templates: digits, cifar, openai-imagenet, or a file with one "
                             "template per line using {c} (default: the dataset's usual set)")
    parser.add_argument("--itm-k", type=int, default=None, metavar="K",
                        help="retrieval with an image-text matching head (BLIP): re-rank each query's top K ITC "
                             "candidates with it, as BLIP does, and report both (default: 16; 0: ITC alone)")
    parser.add_argument("--num-beams", type=int, default=1, metavar="N",
                        help="captioning: beam search with N beams (default: 1, greedy)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--efficiency", action="store_true",
                        help="also measure FLOPs, latency and peak memory")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    parser.add_argument("--cache-dir", default=None, help="feature cache folder (default: $RCC_CACHE_DIR or "
                                                          "~/.cache/rcc-tui/features)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from rcc.cli.common import stderr, stdout, table, write_json
    from rcc.data.feature_cache import FeatureCache
    from rcc.data.registry import load_dataset, split_layout
    from rcc.errors import RccError
    from rcc.eval.suite import run_eval
    from rcc.eval.templates import load_templates
    from rcc.models.registry import load_model, resolve_device
    from rcc.session.metric_keys import metric_key

    if args.batch_size < 1:
        raise RccError(f"--batch-size {args.batch_size} is invalid; allowed: an integer ≥ 1")
    if args.itm_k is not None and args.itm_k < 0:
        raise RccError(f"--itm-k {args.itm_k} is invalid; allowed: an integer ≥ 1, or 0 for ITC alone")
    if args.num_beams < 1:
        raise RccError(f"--num-beams {args.num_beams} is invalid; allowed: an integer ≥ 1 (1: greedy)")
    device = resolve_device(args.device)
    templates = load_templates(args.templates) if args.templates else None
    dataset = load_dataset(args.data, split=args.split)
    model = load_model(args.model, device=device)
    cache = None if args.no_cache else FeatureCache(args.cache_dir)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=stderr(), transient=True) as bar:
        task = bar.add_task("encoding", total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=f"encoding {what}")

        report = run_eval(model, dataset, task=args.task, templates=templates, cache=cache,
                          precision=args.precision, batch_size=args.batch_size, progress=progress,
                          itm_k=args.itm_k, num_beams=args.num_beams)
    payload = {**report.as_dict(), "splits": split_layout(args.data)}
    # Each metric is named by the split it was measured on (rcc.session.metric_keys): test/top1.
    rows = [[metric_key(dataset.split, name), value] for name, value in report.metrics.items()]
    if args.efficiency:
        from rcc.eval.efficiency import measure_efficiency

        efficiency = measure_efficiency(model)
        payload["efficiency"] = efficiency.as_dict()
        rows += [[f"efficiency.{name}", value] for name, value in efficiency.as_dict().items()
                 if name not in ("image_shape",)]
    else:
        rows.append(["parameters", model.num_parameters()])
    title = f"{report.task}: {model.spec} on {dataset.spec} ({dataset.split}, {len(dataset)} items, {device})"
    if report.task == "caption":
        title += " — " + ("greedy" if args.num_beams == 1 else f"beam search, {args.num_beams} beams")
    stdout().print(table(title, ["metric", "value"], rows))
    write_json(args.json, payload)
    return 0
