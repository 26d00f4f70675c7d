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
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    scopes = args.scopes.split(",")
    methods = args.methods.split(",")

    dense = load_model("rcc-mini", device="cpu")
    test = load_dataset("digits", "test")
    check = evaluator(load_dataset("digits", "calib"))
    top1 = evaluator(test)
    corpus = docstring_sentences("eval")
    dense_text = encode_texts(dense, corpus)
    dense_top1 = top1(dense)
    calibration, preserved = calibration_sets("digits")
    print(f"dense rcc-mini: test top-1 {dense_top1:.4f}; fidelity corpus {len(corpus)} sentences", flush=True)

    rows, tables = [], {}
    for budget in budgets:
        table = [["dense", "-", round(dense_top1, 4), 1.0, 1.0, 0.0, 0.0]]
        for scope in scopes:
            for method in methods:
                model = copy.deepcopy(dense)
                plan, config = method_setup(method, budget, TOWERS[scope], model.layers())
                began = time.perf_counter()
                result = run_cascade(model, plan, check, calibration, preserved, config)
                seconds = time.perf_counter() - began
                fidelity = embedding_fidelity(dense_text, encode_texts(model, corpus), k=10)
                row = [method, scope, round(top1(model), 4), round(fidelity.mean_cosine, 4),
                       round(fidelity.knn_overlap, 4), round(result.removed_fraction, 4), round(seconds, 1)]
                table.append(row)
                rows.append([budget, *row])
                print(f"budget {budget} {scope:5s} {method:9s} top1 {row[2]:.4f} cos {row[3]:.4f} "
                      f"nn@10 {row[4]:.4f} removed {row[5]:.3f} {seconds:.0f}s", flush=True)
        tables[budget] = table
    columns = ["method", "scope", "top-1", "mean cos", "NN@10 overlap", "removed", "seconds"]
    for budget, table in tables.items():
        report(f"quality_{int(budget * 100)}", columns, table, {"budget_removed": budget})
    report("quality", ["budget", *columns], rows, {"dense_top1": dense_top1, "corpus": len(corpus)})


if __name__ == "__main__":
    main()
