"""``rcc-tui train``: recovery training of a session's current node by distillation (a session op)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "train", help="recover accuracy: distil the dense (teacher) node into the current compressed node",
        description="Distils the teacher node (default: the root, i.e. the dense model) into the current node on "
                    "the dataset's unlabelled training images and prompts (or captions), keeping pruned entries at "
                    "zero, low-rank layers low-rank and locked layers frozen. BLIP captioners learn the teacher's "
                    "next-token distributions on teacher-forced captions. Records a train op and a new node.",
    )
    parser.add_argument("session", metavar="SESSION")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--teacher", type=int, default=None, metavar="NODE", help="default: the root node")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--kl-weight", type=float, default=1.0,
                        help="KL to the teacher's predictions: image-text similarity logits; for BLIP also its "
                             "ITM distributions (fusion layers) or, for a captioner, its next-token distributions "
                             "on teacher-forced captions (decoder)")
    parser.add_argument("--cosine-weight", type=float, default=1.0,
                        help="1 − cosine between embeddings (a captioner's image embeddings only)")
    parser.add_argument("--mse-weight", type=float, default=0.0, help="squared error between embeddings")
    parser.add_argument("--attention-weight", type=float, default=0.0,
                        help="attention transfer: KL between the teacher's and the student's head-averaged "
                             "attention maps of each vision block (OpenCLIP ViTs only; 0: off)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="default: min(10, steps / 10)")
    parser.add_argument("--schedule", default="cosine", help="cosine, linear or constant")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 (CPU or CUDA) or fp16 (CUDA)")
    parser.add_argument("--eval-every", type=int, default=None, help="evaluate every K steps and keep the best")
    parser.add_argument("--patience", type=int, default=None, help="stop after this many evaluations without gain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from rcc.cli.common import stderr, stdout
    from rcc.session.ops import Train
    from rcc.session.session import Session

    op = Train(teacher=args.teacher, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
               temperature=args.temperature, kl_weight=args.kl_weight, cosine_weight=args.cosine_weight,
               mse_weight=args.mse_weight, attention_weight=args.attention_weight, warmup_steps=args.warmup_steps,
               schedule=args.schedule, precision=args.precision, eval_every=args.eval_every, patience=args.patience, seed=args.seed)
    with Session.open(args.session, device=args.device) as session:
        before = next(node for node in session.nodes() if node.id == session.head)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=stderr(), transient=True) as bar:
            task = bar.add_task("preparing", total=None)

            def progress(event) -> None:
                bar.update(task, completed=event.done, total=event.total, description=f"{event.phase} {event.detail}")

            outcome = session.apply(op, progress=progress)
        split, key = session.eval_split, session.eval_key
    result = outcome.result
    stdout().print(f"node {outcome.new_node} (from node {before.id}, teacher node {result['teacher']}): "
                   f"eval on {split} {before.metrics.get(key, float('nan')):.4f} → "
                   f"{outcome.metrics[key]:.4f}; loss {result['losses'][0]:.4f} → {result['losses'][-1]:.4f}; "
                   f"non-zero parameters {result['params_before']:,} → {result['params_after']:,}; "
                   f"{result['seconds']:.1f} s")
    return 0
