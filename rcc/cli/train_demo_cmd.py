"""``rcc-tui train-demo``: train rcc-mini's image tower on the digits from a seed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "train-demo", help="train the built-in rcc-mini demo model from scratch",
        description="Train rcc-mini's ViT image tower (and both projections) on scikit-learn's digits with "
                    "the pretrained MiniLM text tower locked; deterministic from --seed. Writes safetensors "
                    "(image tower, projections, logit scale) and a model card JSON next to it.",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="default: the shipped recipe")
    parser.add_argument("--out", metavar="FILE.safetensors", default=None,
                        help="where to write the weights (default: the package's shipped weights file)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from safetensors.torch import save_file

    from rcc.cli.common import stderr, stdout, table
    from rcc.errors import RccError
    from rcc.models.quiet import quiet_libraries
    from rcc.output_paths import check_output_file
    from rcc.models.rcc_mini import CARD_FILE, shipped_state, weights_path
    from rcc.training.demo import DemoTrainConfig, train_demo

    if args.epochs is not None and args.epochs < 1:
        raise RccError(f"--epochs {args.epochs} is invalid; allowed: an integer ≥ 1")
    quiet_libraries()
    config = DemoTrainConfig(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
    out = Path(args.out) if args.out else weights_path()
    if out.suffix != ".safetensors":
        raise RccError(f"--out {str(out)!r} must end in .safetensors")
    check_output_file(out, "--out weights file")
    with Progress(TextColumn("training rcc-mini"), BarColumn(), TextColumn("loss {task.fields[loss]:.3f}"),
                  TimeRemainingColumn(), console=stderr()) as bar:
        task = bar.add_task("train", total=None, loss=float("nan"))

        def on_step(report):
            bar.update(task, completed=report.step + 1, total=report.total, loss=report.loss)

        result = train_demo(config, on_step=on_step)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(shipped_state(result.model.module), str(out))
    card = result.card()
    out.with_name(CARD_FILE if out == weights_path() else out.stem + ".json").write_text(json.dumps(card, indent=2) + "\n")
    stdout().print(table("rcc-mini trained", ["metric", "value"], [
        ["zero-shot top-1 (digits test)", result.test.top1],
        ["mean per-class recall", result.test.mean_per_class_recall],
        ["final loss", result.final_loss], ["seconds", f"{result.seconds:.1f}"], ["weights", str(out)],
    ]))
    return 0
