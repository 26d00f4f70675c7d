"""Compression quality on rcc-mini: RCC against single-method baselines at equal budgets.

    python -m bench.quality [--budgets 0.3,0.5,0.7] [--scopes text,both] [--methods all]

For each budget (fraction of the selected layers' parameters removed) and scope (the text
tower — the real pretrained MiniLM — or both towers), every method compresses a fresh copy
of rcc-mini to exactly that budget (threshold 0: nothing is backed off, so sizes are equal):
  magnitude, wanda, dare        pruning alone (DARE stage)
  svd, aa-svd                   low rank alone (Nullu stage; plain / activation-aware, auto ranks)
  rcc                           the cascade: DARE (Wanda) → Nullu → AlphaEdit correction
  rcc-seq, rcc-preserve         variants (not in the default run): sequential correction, and
                                correction constrained to the null space of preserved inputs
With ``--recovery-steps N`` (default 100; 0 skips it) an extra row "RCC + recovery": both
towers pruned to 50 % by the cascade's DARE stage (random drop-and-rescale, the harshest
pruning), then recovery training (rcc.training.distill: KL + cosine distillation from the
dense model on the unlabelled digits training images and prompts, masks kept) for N steps,
keeping the best val-split checkpoint (the eval split).
Metrics: zero-shot top-1 on the digits test split, and text-embedding fidelity on the
``eval`` half of the stdlib docstring corpus (mean cosine to the dense embeddings, and
top-10 nearest-neighbour overlap). One table per budget; JSON in bench/results/quality.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.report import report  # noqa: E402
from rcc.compression.calibration_sets import calibration_sets  # noqa: E402
from rcc.compression.cascade import CascadeConfig, run_cascade  # noqa: E402
from rcc.compression.plan import uniform_plan  # noqa: E402
from rcc.compression.stage_context import StageOptions  # noqa: E402
from rcc.data.registry import load_dataset  # noqa: E402
from rcc.data.text_corpus import docstring_sentences  # noqa: E402
from rcc.eval.encode import encode_texts  # noqa: E402
from rcc.eval.fidelity import embedding_fidelity  # noqa: E402
from rcc.eval.suite import evaluator  # noqa: E402
from rcc.models.registry import load_model  # noqa: E402

TOWERS = {"text": ["text"], "both": None}


def quality_cells(model, top1, dense_text, corpus) -> list[float]:
    """[zero-shot top-1, mean cosine, NN@10 overlap] of ``model``: top-1 from ``top1``, fidelity of its text
    embeddings of ``corpus`` against the dense model's ``dense_text``."""
    fidelity = embedding_fidelity(dense_text, encode_texts(model, corpus), k=10)
    return [round(top1(model), 4), round(fidelity.mean_cosine, 4), round(fidelity.knn_overlap, 4)]


def method_setup(method: str, budget: float, towers, layers):
    """(plan, cascade config) that removes ``budget`` of the selected parameters with ``method``."""
    prune = {"magnitude": "magnitude", "wanda": "wanda", "dare": "dare"}
    if method in prune:
        plan = uniform_plan(sparsity=budget, method=prune[method], towers=towers, layers=layers)
        return plan, CascadeConfig(stages=("dare",), threshold=0.0)
    if method in ("svd", "aa-svd"):
        plan = uniform_plan(rank="auto", budget=1 - budget, towers=towers, layers=layers)
        options = replace(StageOptions(), whiten=method == "aa-svd")
        return plan, CascadeConfig(stages=("nullu",), threshold=0.0, options=options)
    if method in ("rcc", "rcc-seq", "rcc-preserve"):
        plan = uniform_plan(sparsity=budget, method="wanda", correction=True, towers=towers, layers=layers)
        options = replace(StageOptions(), preserve=method == "rcc-preserve", sequential=method == "rcc-seq")
        return plan, CascadeConfig(stages=("dare", "nullu", "alphaedit"), threshold=0.0, options=options)
    raise SystemExit(f"unknown method {method!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="0.3,0.5,0.7")
    parser.add_argument("--scopes", default="text,both")
    parser.add_argument("--methods", default="magnitude,wanda,dare,svd,aa-svd,rcc")
    parser.add_argument("--recovery-steps", type=int, default=100)
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",") if b]  # "" runs only the recovery row
    scopes = args.scopes.split(",")
    methods = args.methods.split(",")

    dense = load_model("rcc-mini", device="cpu")
    test = load_dataset("digits", "test")
    check = evaluator(load_dataset("digits", "val"))
    top1 = evaluator(test)
    corpus = docstring_sentences("eval")
    dense_text = encode_texts(dense, corpus)
    dense_top1 = top1(dense)
    calibration, preserved = calibration_sets("digits")
    print(f"dense rcc-mini: test top-1 {dense_top1:.4f}; fidelity corpus {len(corpus)} sentences", flush=True)

    rows, tables = [], {}
    if args.recovery_steps:
        recovery = recovery_rows(dense, check, top1, calibration, preserved, dense_text, corpus, args.recovery_steps)
        report("quality_recovery", ["method", "scope", "top-1", "mean cos", "NN@10 overlap", "removed", "seconds"],
               [["dense", "-", round(dense_top1, 4), 1.0, 1.0, 0.0, 0.0], *recovery],
               {"steps": args.recovery_steps})
    for budget in budgets:
        table = [["dense", "-", round(dense_top1, 4), 1.0, 1.0, 0.0, 0.0]]
        for scope in scopes:
            for method in methods:
                model = copy.deepcopy(dense)
                plan, config = method_setup(method, budget, TOWERS[scope], model.layers())
                began = time.perf_counter()
                result = run_cascade(model, plan, check, calibration, preserved, config)
                seconds = time.perf_counter() - began
                row = [method, scope, *quality_cells(model, top1, dense_text, corpus),
                       round(result.removed_fraction, 4), round(seconds, 1)]
                table.append(row)
                rows.append([budget, *row])
                print(f"budget {budget} {scope:5s} {method:9s} top1 {row[2]:.4f} cos {row[3]:.4f} "
                      f"nn@10 {row[4]:.4f} removed {row[5]:.3f} {seconds:.0f}s", flush=True)
        tables[budget] = table
    columns = ["method", "scope", "top-1", "mean cos", "NN@10 overlap", "removed", "seconds"]
    for budget, table in tables.items():
        report(f"quality_{int(budget * 100)}", columns, table, {"budget_removed": budget})
    if rows:
        report("quality", ["budget", *columns], rows, {"dense_top1": dense_top1, "corpus": len(corpus)})


def recovery_rows(dense, check, top1, calibration, preserved, dense_text, corpus, steps: int) -> list[list]:
    """Both towers at 50 % by DARE (random drop + rescale), before and after recovery training."""
    from rcc.training.distill import DistillConfig, distill, distill_data, teacher_targets

    model = copy.deepcopy(dense)
    plan = uniform_plan(sparsity=0.5, method="dare", layers=model.layers())
    began = time.perf_counter()
    result = run_cascade(model, plan, check, calibration, preserved, CascadeConfig(stages=("dare",), threshold=0.0))
    compress_seconds = time.perf_counter() - began

    def row(name: str, seconds: float) -> list:
        return [name, "both", *quality_cells(model, top1, dense_text, corpus), round(result.removed_fraction, 4),
                round(seconds, 1)]

    rows = [row("RCC (DARE 50 %)", compress_seconds)]
    print(f"recovery: before {rows[0]}", flush=True)
    data = distill_data("digits")
    targets = teacher_targets(dense, data)
    config = DistillConfig(steps=steps, lr=1e-4, batch_size=32, eval_every=max(1, steps // 4), seed=0)
    began = time.perf_counter()
    distill(model, data, targets, config, evaluate=lambda: check(model))
    rows.append(row(f"RCC + recovery ({steps} steps)", compress_seconds + time.perf_counter() - began))
    print(f"recovery: after {rows[1]}", flush=True)
    return rows


if __name__ == "__main__":
    main()
