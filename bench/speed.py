"""Compression speed and the speed of the result, on the OpenCLIP ViT-B-32 architecture.

    python -m bench.speed [--runs 3] [--repeats 5]

Random weights (speed does not depend on them). Every linear layer of both towers (146
matrices, q/k/v of the fused attention split) is compressed by the cascade
DARE (random drop 10 %) → Nullu (plain SVD, auto ranks keeping 50 % of the parameters) →
AlphaEdit (closed-form correction of the factors, or of the kept entries where a layer stays
masked), with calibration statistics from 16
random images and 64 sentences and an evaluator that costs nothing, so the table shows the
stages' own time. Reference: plain ``torch.linalg.svd(full_matrices=False)`` of the same 146
matrices. Then CPU latency of encode_image / encode_text, dense vs the factorised model.
Goals: the cascade within 2× the plain SVD time; the factorised model faster than dense.
A shared 2-core machine drifts by ±20 % between minutes, so each of ``--runs`` runs times the
plain SVD right before its cascade; the table gives medians and the ratio's range over the runs.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.report import median_seconds, report  # noqa: E402
from rcc.compression.calibration import CalibrationData  # noqa: E402
from rcc.compression.cascade import CascadeConfig, run_cascade  # noqa: E402
from rcc.compression.layers import dense_weight  # noqa: E402
from rcc.compression.plan import uniform_plan  # noqa: E402
from rcc.compression.stage_context import StageOptions  # noqa: E402
from rcc.data.images import ArrayImages  # noqa: E402
from rcc.data.text_corpus import docstring_sentences  # noqa: E402
from rcc.models.registry import load_model  # noqa: E402


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_svd_seconds(model) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for layer in model.layers():
            torch.linalg.svd(dense_weight(model.module, layer).float(), full_matrices=False)
    return time.perf_counter() - start


def timed_cascade(dense, calibration: CalibrationData, whiten: bool):
    """A fresh copy of ``dense`` compressed by the cascade, its result, and seconds per stage, calibration and whole."""
    model = copy.deepcopy(dense)
    plan = uniform_plan(sparsity=0.1, method="dare", rank="auto", budget=0.5, correction=True,
                        layers=model.layers())
    config = CascadeConfig(threshold=0.0, options=replace(StageOptions(), whiten=whiten, preserve=False))
    seconds: dict[str, float] = {}

    def on_attempt(attempt) -> None:
        seconds[attempt.stage] = attempt.seconds

    began = time.perf_counter()
    result = run_cascade(model, plan, lambda m: 1.0, calibration, None, config, on_attempt=on_attempt)
    seconds["whole"] = time.perf_counter() - began
    seconds["calibration"] = seconds["whole"] - sum(v for k, v in seconds.items() if k != "whole")
    return model, result, seconds


def latency(model, pixels, tokens, repeats: int) -> tuple[float, float]:
    with torch.inference_mode():
        image = median_seconds(lambda: model.encode_image(pixels), repeats)
        text = median_seconds(lambda: model.encode_text(tokens), repeats)
    return image, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="cascade runs, each with its own plain-SVD reference")
    parser.add_argument("--repeats", type=int, default=5, help="latency repeats")
    parser.add_argument("--whiten", action="store_true", help="also time the activation-aware SVD variant")
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = load_model("open_clip:ViT-B-32", device="cpu")
    rng = np.random.default_rng(0)
    images = ArrayImages(rng.integers(0, 256, size=(16, 224, 224, 3), dtype=np.uint8))
    texts = tuple(docstring_sentences("calib", limit=64))
    calibration = CalibrationData(images=images, texts=texts)

    rows = []
    extra_runs: dict[str, dict[str, list[float]]] = {}
    for whiten in (False, True) if args.whiten else (False,):
        label = "activation-aware" if whiten else "plain"
        timings: dict[str, list[float]] = {}
        for run in range(args.runs):
            svd_s = plain_svd_seconds(dense)
            model, result, seconds = timed_cascade(dense, calibration, whiten)
            print(f"run {run + 1}/{args.runs} ({label}): plain SVD {svd_s:.1f} s, cascade {seconds['whole']:.1f} s "
                  f"= {seconds['whole'] / svd_s:.2f}×", flush=True)
            for key, value in {"svd": svd_s, **seconds}.items():
                timings.setdefault(key, []).append(value)
            timings.setdefault("ratio", []).append(seconds["whole"] / svd_s)
        svd_s = statistics.median(timings["svd"])
        if not rows:
            rows.append([f"plain torch.linalg.svd, 146 matrices (median of {args.runs})", round(svd_s, 2), 1.0])
        for key in [k for k in timings if k not in ("svd", "whole", "ratio")]:
            seconds = statistics.median(timings[key])
            name = f"  {key} stage ({label} SVD)" if key != "calibration" else f"  calibration + bookkeeping ({label})"
            rows.append([name, round(seconds, 2), round(seconds / svd_s, 2)])
        ratios = timings["ratio"]
        rows.append([f"whole cascade ({label} SVD), ratio range {min(ratios):.2f}–{max(ratios):.2f}×",
                     round(statistics.median(timings["whole"]), 2), round(statistics.median(ratios), 2)])
        extra_runs[label] = {key: [round(v, 3) for v in values] for key, values in timings.items()}
        if not whiten:
            compressed, removed, plain_ratio = model, result.removed_fraction, statistics.median(ratios)
    pixels = dense.preprocess_batch([images[i] for i in range(8)])
    tokens = dense.tokenize(list(texts[:8]))
    dense_img, dense_txt = latency(dense, pixels, tokens, args.repeats)
    comp_img, comp_txt = latency(compressed, pixels, tokens, args.repeats)
    latency_rows = [
        ["encode_image, batch 8", round(dense_img * 1000, 1), round(comp_img * 1000, 1), round(dense_img / comp_img, 2)],
        ["encode_text, batch 8", round(dense_txt * 1000, 1), round(comp_txt * 1000, 1), round(dense_txt / comp_txt, 2)],
    ]
    extra = {
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "parameters_dense": dense.num_parameters(), "parameters_compressed": compressed.num_parameters(),
        "linear_removed_fraction": removed, "runs": extra_runs,
        "goals": {"cascade_within_2x_svd": plain_ratio <= 2.0,
                  "factorised_faster": dense_img > comp_img and dense_txt > comp_txt},
    }
    report("speed_stages", ["step", "seconds", "× plain SVD"], rows, extra)
    report("speed_latency", ["forward (CPU)", "dense ms", "50% params ms", "speed-up"], latency_rows, extra)
    print(f"peak RSS {extra['peak_rss_mb']} MB; parameters {extra['parameters_dense']:,} → "
          f"{extra['parameters_compressed']:,}")


if __name__ == "__main__":
    main()
