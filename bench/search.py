"""Search vs uniform on rcc-mini's text tower: the best plan a fixed budget of trials finds, against
the best uniform plan storing as many values.

    python -m bench.search [--trials 24] [--method wanda] [--min-removed 0.8] [--seed 0]

One pareto study (rcc.search: TPE, global sparsity level × one multiplier per text block,
sparsity 70–95 %, pruning method ``--method``, DARE stage only) on a fresh rcc-mini session,
measured on the digits val split (the eval split). Every front trial removing at least ``--min-removed`` of
the text tower's parameters is compared with uniform plans (every text layer at one sparsity:
magnitude and Wanda) removing a hair less, so the uniform plan stores at least as many values;
"best uniform" is the one with the higher val accuracy. Side by side: val top-1 (what the
search saw), test top-1 (held out, 360 images) and text-embedding fidelity on the stdlib
docstring corpus (mean cosine to the dense model, top-10 nearest-neighbour overlap), as in
bench.quality. JSON in bench/results/search.json.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.report import report  # noqa: E402
from rcc.compression.calibration_sets import calibration_sets  # noqa: E402
from rcc.compression.plan import uniform_plan  # noqa: E402
from rcc.data.registry import load_dataset  # noqa: E402
from rcc.data.text_corpus import docstring_sentences  # noqa: E402
from rcc.eval.encode import encode_texts  # noqa: E402
from rcc.eval.fidelity import embedding_fidelity  # noqa: E402
from rcc.eval.suite import evaluator  # noqa: E402
from rcc.search.objective import ObjectiveConfig  # noqa: E402
from rcc.session.trial_compress import compress  # noqa: E402
from rcc.compression.trial_record import make_record, record_from_dict
from rcc.search.space import Bounds, SpaceConfig  # noqa: E402
from rcc.search.storage import default_url  # noqa: E402
from rcc.search.run import run_search  # noqa: E402
from rcc.search.study import Limits, StudySettings  # noqa: E402
from rcc.search.trials import load_study  # noqa: E402
from rcc.compression.stored_size import size_metrics  # noqa: E402
from rcc.session.session import Session  # noqa: E402

CALIB_PER_CLASS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--method", default="wanda", choices=("magnitude", "wanda"))
    parser.add_argument("--min-removed", type=float, default=0.8,
                        help="compare the front trials removing at least this fraction of the text tower")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    space = SpaceConfig(level="global", group_by=("block",), towers=("text",), sparsity=Bounds(0.7, 0.95, 0.05),
                        multiplier=Bounds(0.6, 1.2, 0.1), method=args.method)
    settings = StudySettings(space=space, objective=ObjectiveConfig(calib_per_class=CALIB_PER_CLASS), seed=args.seed)

    with tempfile.TemporaryDirectory(prefix="bench-search-") as folder:
        session_dir = os.path.join(folder, "session")
        Session.create(session_dir, device="cpu").close()
        began = time.perf_counter()
        search = run_search(session_dir, "bench", settings, Limits(trials=args.trials), device="cpu",
                            progress=lambda p: print(f"trial {p.done}/{p.total} #{p.row.number} {p.row.state}: "
                                                     f"{p.row.size or 0:,.0f} stored, accuracy "
                                                     f"{p.row.accuracy or 0:.4f} · {p.best}", flush=True))
        search_seconds = time.perf_counter() - began
        trials = {t.number: t for t in load_study(default_url(session_dir), "bench").trials}

        with Session.open(session_dir, read_only=True) as session:
            dense = session.model_at(1)
        calibration, preserved = calibration_sets("digits", per_class=CALIB_PER_CLASS, seed=0)
        val, test = evaluator(load_dataset("digits", "val")), evaluator(load_dataset("digits", "test"))
        corpus = docstring_sentences("eval")
        dense_text = encode_texts(dense, corpus)

        def measure(name: str, record) -> list:
            model = copy.deepcopy(dense)
            result = compress(model, record, calibration, preserved)
            fidelity = embedding_fidelity(dense_text, encode_texts(model, corpus), k=10)
            return [name, int(size_metrics(model)["size/params"]), round(result.removed_fraction, 4),
                    round(val(model), 4), round(test(model), 4), round(fidelity.mean_cosine, 4),
                    round(fidelity.knn_overlap, 4)]

        rows = [["dense", int(size_metrics(dense)["size/params"]), 0.0, round(val(dense), 4), round(test(dense), 4),
                 1.0, 1.0]]
        summary = []
        chosen = sorted((r for r in search.front if r.removed is not None and r.removed >= args.min_removed),
                        key=lambda r: r.size)
        if not chosen:
            print(f"no front trial removes ≥ {args.min_removed:.0%} of the text tower")
        for best in chosen:
            found = measure(f"search #{best.number}", record_from_dict(trials[best.number].user_attrs["record"]))
            sparsity = math.floor(best.removed * 1000) / 1000  # a hair less: stores at least as much
            uniform = [measure(f"uniform {method} {sparsity:.1%}",
                               make_record(uniform_plan(sparsity=sparsity, method=method, towers=["text"]),
                                           ("dare",), CALIB_PER_CLASS, True, False, 1))
                       for method in ("magnitude", "wanda")]
            best_uniform = max(uniform, key=lambda row: row[3])
            rows += [found, *uniform]
            summary.append({"trial": best.number, "params": trials[best.number].params, "search": found,
                            "best_uniform": best_uniform})
            print(f"trial #{best.number} ({best.removed:.1%} removed): val {found[3]} test {found[4]} cos {found[5]}"
                  f" | best uniform ({best_uniform[0]}) val {best_uniform[3]} test {best_uniform[4]} "
                  f"cos {best_uniform[5]}", flush=True)

    columns = ["plan", "stored values", "text removed", "val top-1", "test top-1", "mean cos", "NN@10"]
    complete = sum(r.state == "COMPLETE" for r in search.rows)
    pruned = sum(r.state == "PRUNED" for r in search.rows)
    report("search", columns, rows, {
        "trials": args.trials, "complete": complete, "pruned": pruned, "search_seconds": round(search_seconds, 1),
        "settings": settings.as_dict(), "front": [r.number for r in search.front], "summary": summary,
        "dense_val": search.dense_accuracy,
    })
    print(f"{args.trials} trials ({complete} complete, {pruned} pruned) in {search_seconds:.0f} s")


if __name__ == "__main__":
    main()
