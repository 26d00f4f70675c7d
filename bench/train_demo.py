"""The shipped rcc-mini recipe, reproduced: train it from its seed and compare with what ships.

    python -m bench.train_demo [--seed 0] [--epochs 20]

Trains rcc-mini's image tower as `rcc-tui train-demo` does (about 85 s on 2 idle cores) and
reports its zero-shot test top-1 beside the shipped weights' card, and whether the trained
tensors equal the shipped ones bit for bit (a torch build other than the card's may differ in the
last bits, which the top-1 shows is harmless). Goal: test top-1 ≥ 0.90.

Why a benchmark and not a test: the full recipe is the suite's single most expensive item. The
suite keeps its proof in two cheap parts (tests/test_training_demo.py): one epoch from the same
seed is bit-identical twice with the text tower locked, and the shipped weights measure the
card's top-1 (≥ 0.90).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.report import report  # noqa: E402
from rcc.models.rcc_mini import build_rcc_mini, shipped_state, weights_path  # noqa: E402
from rcc.training.demo import DemoTrainConfig, train_demo  # noqa: E402

GOAL_TOP1 = 0.90


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_demo", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)

    result = train_demo(DemoTrainConfig(seed=args.seed, epochs=args.epochs))
    card = json.loads(weights_path().with_suffix(".json").read_text())
    trained = shipped_state(result.model.module)
    shipped = shipped_state(build_rcc_mini(trained=True).module)
    identical = trained.keys() == shipped.keys() and all(torch.equal(trained[k], shipped[k]) for k in trained)
    rows = [
        ["trained now", result.config.seed, result.config.epochs, round(result.test.top1, 4),
         round(result.final_loss, 4), round(result.seconds, 1)],
        ["shipped card", card["config"]["seed"], card["config"]["epochs"], card["test_top1"], card["final_loss"],
         card["seconds"]],
    ]
    met = result.test.top1 >= GOAL_TOP1
    report("train_demo", ["weights", "seed", "epochs", "test top1", "final loss", "seconds"], rows,
           {"bit_identical_to_shipped": identical, "goal_top1": GOAL_TOP1, "goal_met": met,
            "card_torch": card["torch"]})
    print(f"bit-identical to the shipped weights: {identical} (card made with torch {card['torch']})")
    print(f"goal test top1 >= {GOAL_TOP1}: {'met' if met else 'MISSED'} ({result.test.top1:.4f})")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
