"""Deployment: size on disk per export format, CPU latency in torch eager and onnxruntime, fidelity, top-1.

    python -m bench.deploy [--models rcc-mini,vit-b-32] [--recovery-steps 200] [--reps 3]
    python -m bench.deploy --rows "channels 50 %,combination" --update   # those rows again, the rest kept
    python -m bench.deploy --markdown                                      # the last results as README tables

For each model, every variant is compressed from the same dense model, exported in every format
and timed next to the dense model in the same loop (a shared machine drifts between minutes):
  dense            fp32, nothing compressed
  masks 50 %       unstructured pruning of every Linear (rcc-mini: Wanda + AlphaEdit correction;
                   ViT-B-32: magnitude), stored as masks
  channels 50 %    MLP hidden units removed with the consumer refit (pattern ``channel``)  \\ need the
  heads 25 %       attention heads removed (pattern ``head``)                               / structured patterns
  low rank         Nullu, auto ranks keeping half of the parameters (+ AlphaEdit on rcc-mini)
  int8 rtn         every Linear and embedding table int8, round to nearest
  int8 gptq        the same with GPTQ error feedback on the calibration Gram
  int8 gptq+sq     GPTQ after SmoothQuant scaling (α = 0.7)
  masks + int8     the cascade under threshold 0.99 on a plan of unstructured 50 % (masks) + correction
                   + int8 (GPTQ + SmoothQuant)
  combination      the same with structured pruning instead (channels 50 % + heads 25 %; needs the
                   structured patterns)
  + recovery       the last of those two after recovery training (rcc-mini only: ViT-B-32 has random weights)
Models: rcc-mini (the real MiniLM text tower; latency of encode_text on docstring sentences of at
most 20 tokens; fidelity and top-1 as bench.quality: mean cosine to dense text embeddings on the
held-out corpus, zero-shot top-1 on the digits test split, the cascade checks the val split) and
the OpenCLIP ViT-B-32 architecture (random weights: latency of encode_image on 224² images and sizes;
its cascade checks the mean cosine to the dense image embeddings of 16 fixed images).
Sizes are the weight files each export writes (compressed: model.safetensors + manifest.json;
dense: the safetensors file; onnx: image + text encoder files; tokenizer files excluded);
hf-compressed exists for Hugging Face CLIP / BLIP only, so it is n/a for these OpenCLIP models.
Latency: median ms of ``--reps`` calls after a warm-up, batch 1 and 32, 1 and 2 threads
(torch.set_num_threads; onnxruntime intra_op_num_threads), ratios against the dense model's eager
time in the same loop; each row records when it ran and the load average then. JSON in
bench/results/deploy_<model>_sizes.json and _latency.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.report import RESULTS_DIR, report  # noqa: E402
from rcc.compression.cascade import CascadeConfig, run_cascade  # noqa: E402
from rcc.compression.plan import CompressionPlan, Rule, uniform_plan  # noqa: E402
from rcc.compression.plan_rules import PlanError, check_pattern  # noqa: E402
from rcc.compression.stage_context import StageOptions  # noqa: E402

SETTINGS = ((1, 1), (1, 2), (32, 1), (32, 2))  # (batch, threads)
SMOOTH = 0.7  # SmoothQuant α of the calibrated int8 rows (0.5 and 0.3 measured worse on MiniLM)
MAX_TOKENS = 20


def structured_patterns() -> bool:
    """Whether this rcc has the ``channel`` / ``head`` patterns (issue 14)."""
    try:
        check_pattern("channel")
        check_pattern("head")
    except PlanError:
        return False
    return True


@dataclass
class Bench:
    """One model under test: the dense model, its data, what is timed and how a cascade is checked."""

    name: str
    dense: object
    calibration: object
    preserved: object
    check: Callable  # model → metric the cascade keeps ≥ threshold × dense
    inputs: dict  # batch size → inputs of the timed encoder
    timed: str  # "text" or "image"
    quality: Callable | None = None  # model → {"mean cos": .., "top-1": ..}
    correction: bool = True
    recovery: bool = True
    extra: dict = field(default_factory=dict)


def _options(**changes) -> StageOptions:
    return replace(StageOptions(), **changes)


def _cascade(bench: Bench, plan: CompressionPlan, stages, threshold: float = 0.0, **options):
    model = copy.deepcopy(bench.dense)
    config = CascadeConfig(stages=tuple(stages), threshold=threshold, options=_options(**options))
    result = run_cascade(model, plan, bench.check, bench.calibration, bench.preserved, config)
    return model, result


def _int8(bench: Bench, method: str, smooth: float = 0.0):
    plan = uniform_plan(bits=8, layers=bench.dense.layers())
    return _cascade(bench, plan, ("quant",), quant_method=method, smooth_alpha=smooth)


def _structured_rules(bench: Bench, channels: float, heads: float) -> tuple[Rule, ...]:
    """Channel / head removal on the groups' leaders; with correction, scored by Wanda and refitted."""
    method = "wanda" if bench.correction else "magnitude"
    rules = []
    for kind, pattern, amount in (("mlp_in", "channel", channels), ("attn_q", "head", heads)):
        if amount:
            rules.append(Rule(kind=kind, settings={"pattern": pattern, "sparsity": amount, "method": method,
                                                   "correction": bench.correction}))
    return tuple(rules)


def variants(bench: Bench, recovery_steps: int) -> list[tuple[str, Callable[[], tuple]]]:
    """(name, build) of every row; build returns (model, note) or (None, why the row is missing)."""
    layers = bench.dense.layers()
    method = "wanda" if bench.correction else "magnitude"
    rows: list[tuple[str, Callable[[], tuple]]] = [("dense", lambda: (bench.dense, "fp32"))]

    def masks():
        plan = uniform_plan(sparsity=0.5, method=method, correction=bench.correction, layers=layers)
        model, _ = _cascade(bench, plan, ("dare", "alphaedit") if bench.correction else ("dare",))
        return model, f"{method}{' + AlphaEdit' if bench.correction else ''}, masks"

    def structured(channels: float, heads: float):
        def build():
            if not structured_patterns():
                return None, "needs the channel / head patterns (issue 14)"
            plan = CompressionPlan(rules=_structured_rules(bench, channels, heads))
            model, _ = _cascade(bench, plan, ("dare", "alphaedit"))
            return model, f"{'wanda, consumer refit' if bench.correction else 'magnitude, no refit'}"
        return build

    def low_rank():
        plan = uniform_plan(rank="auto", budget=0.5, correction=bench.correction, layers=layers)
        stages = ("nullu", "alphaedit") if bench.correction else ("nullu",)
        model, _ = _cascade(bench, plan, stages, whiten=bench.correction)
        return model, f"auto ranks, budget 0.5{', whitened + AlphaEdit' if bench.correction else ', plain SVD'}"

    rows += [("masks 50 %", masks), ("channels 50 %", structured(0.5, 0.0)), ("heads 25 %", structured(0.0, 0.25)),
             ("low rank", low_rank),
             ("int8 rtn", lambda: (_int8(bench, "rtn")[0], "round to nearest")),
             ("int8 gptq", lambda: (_int8(bench, "gptq")[0], "GPTQ")),
             ("int8 gptq+sq", lambda: (_int8(bench, "gptq", SMOOTH)[0], f"GPTQ + SmoothQuant α={SMOOTH}"))]
    combined: dict = {}

    def cascade_with_int8(rules: tuple[Rule, ...], what: str):
        plan = CompressionPlan(rules=rules, overrides={layer.name: {"bits": None}
                                                       for layer in layers if layer.transposed})
        model, result = _cascade(bench, plan, ("dare", "nullu", "alphaedit", "quant"), threshold=0.99,
                                 quant_method="gptq", smooth_alpha=SMOOTH)
        kept = [f"{a.stage} ×{a.fraction:g}" for a in result.attempts if a.accepted and a.changed]
        combined["model"] = model  # the last combination built is the one recovery training starts from
        return model, f"{what} + int8 (gptq+sq), cascade ≥ 0.99: {', '.join(kept) or 'nothing kept'}"

    def masks_int8():
        rules = (Rule(settings={"sparsity": 0.5, "method": method, "bits": 8, "correction": bench.correction}),)
        return cascade_with_int8(rules, f"{method} 50 % (masks)")

    def combination():
        if not structured_patterns():
            return None, "needs the channel / head patterns (issue 14)"
        rules = _structured_rules(bench, 0.5, 0.25) + (Rule(settings={"bits": 8, "correction": bench.correction}),)
        return cascade_with_int8(rules, "channels 50 % + heads 25 %")

    rows += [("masks + int8", masks_int8), ("combination", combination)]
    if bench.recovery and recovery_steps:
        rows.append((f"+ recovery {recovery_steps}", lambda: _recovered(bench, combined.get("model"), recovery_steps)))
    return rows


def _recovered(bench: Bench, model, steps: int):
    from rcc.training.distill import DistillConfig, distill, distill_data, teacher_targets

    if model is None:
        return None, "the combination row failed"
    model = copy.deepcopy(model)
    data = distill_data("digits")
    targets = teacher_targets(bench.dense, data)
    config = DistillConfig(steps=steps, lr=1e-4, batch_size=32, eval_every=max(1, steps // 4), seed=0)
    result = distill(model, data, targets, config, evaluate=lambda: bench.check(model))
    return model, f"distilled {steps} steps (best step {result.best_step}), int8 layers frozen"


# -- measuring ------------------------------------------------------------------------------------

WEIGHT_FILES = {"compressed": ("model.safetensors", "manifest.json"),
                "dense": ("open_clip_model.safetensors", "model.safetensors"),
                "onnx": ("image_encoder.onnx", "text_encoder.onnx")}


def export_sizes(model, work: Path) -> tuple[dict[str, float | None], dict[str, str], Path]:
    """MB of the weight files of each export format (None: refused), why a format refused, the ONNX directory."""
    from rcc.errors import RccError
    from rcc.exports import export_model

    sizes: dict[str, float | None] = {}
    refused: dict[str, str] = {}
    for fmt in ("compressed", "dense", "onnx"):
        out = work / fmt
        try:
            export_model(model, fmt, out)
        except RccError as exc:  # e.g. dense after head removal: a plain config cannot say so
            sizes[fmt], refused[fmt] = None, str(exc)
            continue
        sizes[fmt] = sum((out / name).stat().st_size for name in WEIGHT_FILES[fmt] if (out / name).is_file()) / 2**20
    sizes["hf-compressed"] = None  # OpenCLIP models: only Hugging Face CLIP / BLIP have this format
    refused["hf-compressed"] = "OpenCLIP model: the format is for Hugging Face CLIP / BLIP"
    return sizes, refused, work / "onnx"


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _eager_call(model, timed: str, inputs) -> Callable[[], object]:
    def run():
        with torch.inference_mode():
            return model.encode_text(inputs) if timed == "text" else model.encode_image(inputs)
    return run


def _ort_call(session, timed: str, inputs) -> Callable[[], object]:
    feeds = ({key: value.numpy() for key, value in inputs.items()} if timed == "text"
             else {"pixels": inputs.numpy()})
    return lambda: session.run(None, feeds)


def latencies(bench: Bench, model, onnx_dir: Path, reps: int) -> dict:
    """ms of eager and onnxruntime for every (batch, threads), and dense eager timed in the same loop."""
    out = {}
    file = onnx_dir / ("text_encoder.onnx" if bench.timed == "text" else "image_encoder.onnx")
    for batch, threads in SETTINGS:
        torch.set_num_threads(threads)
        inputs = bench.inputs[batch]
        calls = {"dense": _eager_call(bench.dense, bench.timed, inputs),
                 "eager": _eager_call(model, bench.timed, inputs),
                 "ort": _ort_call(_ort_session(file, threads), bench.timed, inputs)}
        times: dict[str, list[float]] = {key: [] for key in calls}
        for call in calls.values():
            call()  # warm-up (packing int8 weights, onnxruntime's first run)
        keys = list(calls)
        for rep in range(reps):
            # Interleaved, so drift hits all three alike, and rotated, so none always runs first
            # (in a fixed order the dense model timed 1.6× slower than itself in the dense row).
            for key in keys[rep % len(keys):] + keys[:rep % len(keys)]:
                call = calls[key]
                began = time.perf_counter()
                call()
                times[key].append(time.perf_counter() - began)
                # Idle threads of either runtime spin for a while after a call (OpenMP, onnxruntime's
                # pool) and would slow the next call on 2 cores: let them settle first.
                time.sleep(0.25)
        out[f"b{batch}t{threads}"] = {key: statistics.median(values) * 1e3 for key, values in times.items()}
    torch.set_num_threads(2)
    return out


# -- the two models -------------------------------------------------------------------------------

def rcc_mini_bench() -> Bench:
    from rcc.compression.calibration_sets import calibration_sets
    from rcc.data.registry import load_dataset
    from rcc.data.text_corpus import docstring_sentences
    from rcc.eval.encode import encode_texts
    from rcc.eval.fidelity import embedding_fidelity
    from rcc.eval.suite import evaluator
    from rcc.models.registry import load_model

    dense = load_model("rcc-mini", device="cpu")
    corpus = docstring_sentences("eval")
    dense_text = encode_texts(dense, corpus)
    top1 = evaluator(load_dataset("digits", "test"))
    short = [s for s, ids in zip(corpus, dense.tokenize(corpus)["input_ids"]) if int((ids != 0).sum()) <= MAX_TOKENS]
    inputs = {n: dense.trim_text_padding(dense.tokenize(short[:n])) for n in (1, 32)}
    calibration, preserved = calibration_sets("digits")

    def quality(model) -> dict:
        fidelity = embedding_fidelity(dense_text, encode_texts(model, corpus), k=10)
        return {"mean cos": fidelity.mean_cosine, "NN@10": fidelity.knn_overlap, "top-1": top1(model)}

    return Bench("rcc-mini", dense, calibration, preserved, evaluator(load_dataset("digits", "val")), inputs,
                 "text", quality, extra={"tokens_b32": list(inputs[32]["input_ids"].shape), "corpus": len(corpus)})


def vit_b32_bench() -> Bench:
    import numpy as np
    from PIL import Image

    from rcc.compression.calibration import CalibrationData
    from rcc.models.registry import load_model

    torch.manual_seed(0)
    dense = load_model("open_clip:ViT-B-32", device="cpu")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(48)]
    pixels = dense.preprocess_batch(images[:32])
    probe = dense.preprocess_batch(images[32:48])
    with torch.inference_mode():
        reference = dense.encode_image(probe)

    def check(model) -> float:  # random weights: top-1 means nothing, the embeddings' drift does
        with torch.inference_mode():
            return float(torch.nn.functional.cosine_similarity(model.encode_image(probe), reference).mean())

    texts = ("a photo of a cat", "a red car on the street", "two birds", "a handwritten seven")
    calibration = CalibrationData(images=images[:16], texts=texts)
    return Bench("vit-b-32", dense, calibration, None, check, {1: pixels[:1], 32: pixels}, "image",
                 correction=False, recovery=False)


MODELS = {"rcc-mini": rcc_mini_bench, "vit-b-32": vit_b32_bench}


def run_model(name: str, recovery_steps: int, reps: int, only: set[str] | None, update: bool = False) -> list[dict]:
    """Run the rows of one model; with ``update`` the rows run replace those of the same name in the
    model's last results (each record says when it ran and the load then), the others are kept."""
    bench = MODELS[name]()
    bench.extra["load_at_start"] = os.getloadavg()  # shared machine: the 1/5/15-minute load averages
    records = []
    for row, build in variants(bench, recovery_steps):
        if only and row not in only:
            continue
        began = time.perf_counter()
        model, note = build()
        record = {"row": row, "note": note, "compress_seconds": round(time.perf_counter() - began, 1)}
        if model is None:
            print(f"{name} {row}: skipped: {note}", flush=True)
            records.append(record)
            continue
        with tempfile.TemporaryDirectory(prefix="rcc-deploy-") as work:
            record["size_mb"], record["refused"], onnx_dir = export_sizes(model, Path(work))
            record["latency_ms"] = latencies(bench, model, onnx_dir, reps)
            if bench.quality is not None:
                record["quality"] = bench.quality(model)
                if bench.timed == "text":
                    record["quality"]["ort mean cos"] = _ort_fidelity(bench, model, onnx_dir)
        record["ran"] = {"at": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg()}
        print(f"{name} {row}: {_summary(record)}", flush=True)
        records.append(record)
    bench.extra["load_at_end"] = os.getloadavg()
    if update:
        records = _updated(name, records, [row for row, _ in variants(bench, recovery_steps)])
    print(f"{name}: load average at start {_load(bench.extra['load_at_start'])}, "
          f"at end {_load(bench.extra['load_at_end'])}", flush=True)
    _report(name, bench, records)
    return records


def _updated(name: str, records: list[dict], order: list[str]) -> list[dict]:
    """The model's last records with ``records`` put in their place (by row name), in ``order``."""
    path = RESULTS_DIR / f"deploy_{name}_sizes.json"
    kept = {r["row"]: r for r in json.loads(path.read_text())["records"]} if path.is_file() else {}
    kept.update({r["row"]: r for r in records if "size_mb" in r or r["row"] not in kept})
    return [kept[row] for row in order if row in kept]


def _load(averages) -> str:
    return " / ".join(f"{value:.2f}" for value in averages)


def _ort_fidelity(bench: Bench, model, onnx_dir: Path) -> float:
    """Mean cosine of the onnxruntime text encoder's embeddings to the dense model's (as bench.quality)."""
    from rcc.data.text_corpus import docstring_sentences
    from rcc.eval.encode import encode_texts
    from rcc.eval.fidelity import embedding_fidelity

    corpus = docstring_sentences("eval")
    session = _ort_session(onnx_dir / "text_encoder.onnx", 2)
    outputs = []
    for start in range(0, len(corpus), 64):
        tokens = model.trim_text_padding(model.tokenize(corpus[start:start + 64]))
        outputs.append(torch.from_numpy(session.run(None, {k: v.numpy() for k, v in tokens.items()})[0]))
    return embedding_fidelity(encode_texts(bench.dense, corpus), torch.cat(outputs), k=10).mean_cosine


def _summary(record: dict) -> str:
    sizes = ", ".join(f"{k} {v:.1f} MB" for k, v in record["size_mb"].items() if v is not None)
    b32 = record["latency_ms"]["b32t2"]
    quality = record.get("quality", {})
    return (f"{sizes}; b32t2 eager {b32['eager']:.0f} ms, ort {b32['ort']:.0f} ms (dense {b32['dense']:.0f}); "
            + ", ".join(f"{k} {v:.4f}" for k, v in quality.items()))


def _report(name: str, bench: Bench, records: list[dict]) -> None:
    dense = next(r for r in records if r["row"] == "dense")
    columns = ["variant", "compressed MB", "dense MB", "onnx MB", "× smaller", "cos", "ort cos", "top-1"]
    rows = []
    for r in records:
        if "size_mb" not in r:
            rows.append([f"{r['row']} (skipped)", "-", "-", "-", "-", "-", "-", "-"])
            continue
        s, q = r["size_mb"], r.get("quality", {})
        smallest = min(v for v in s.values() if v is not None)
        rows.append([r["row"], *(round(s[k], 1) if s[k] is not None else "refused"
                                 for k in ("compressed", "dense", "onnx")),
                     round(dense["size_mb"]["dense"] / smallest, 2),
                     *(round(q[k], 4) if k in q else "-" for k in ("mean cos", "ort mean cos", "top-1"))])
    report(f"deploy_{name}_sizes", columns, rows, {"timed": bench.timed, "records": records, **bench.extra})
    columns = ["variant", "runtime"] + [f"b{b} t{t}" for b, t in SETTINGS]
    rows = []
    for r in records:
        if "latency_ms" not in r:
            continue
        for runtime in ("eager", "ort"):
            cells = []
            for b, t in SETTINGS:
                timing = r["latency_ms"][f"b{b}t{t}"]
                cells.append(f"{timing[runtime]:.1f} ({timing['dense'] / timing[runtime]:.2f}×)")
            rows.append([r["row"], runtime, *cells])
    report(f"deploy_{name}_latency", columns, rows,
           {"timed": bench.timed, "unit": "ms, and × against dense eager timed in the same loop"})


def goals(records: list[dict]) -> list[str]:
    """The issue's goals, each with its measured figure (b32t2 for speed; smallest export vs dense fp32)."""
    by_row = {r["row"]: r for r in records if "size_mb" in r}
    dense = by_row["dense"]
    dense_mb = dense["size_mb"]["dense"]

    def smaller(r) -> float:
        return dense_mb / min(v for v in r["size_mb"].values() if v is not None)

    def faster(r) -> float:
        b32 = r["latency_ms"]["b32t2"]
        return b32["dense"] / min(b32["eager"], b32["ort"])

    # The dense row times the same model as "dense" and as "eager": their ratio is the noise floor.
    noise = {key: t["dense"] / t["eager"] for key, t in dense["latency_ms"].items()}
    lines = ["noise floor (dense vs itself, ×): " + ", ".join(f"{key} {value:.2f}" for key, value in noise.items())]
    int8 = [r for name, r in by_row.items() if name.startswith("int8")]
    if int8:
        best = max(int8, key=lambda r: (r.get("quality", {}).get("mean cos", 0), faster(r)))
        cos = best.get("quality", {}).get("mean cos")
        lines.append(f"int8 alone ({best['row']}): {smaller(best):.2f}× smaller (goal ≥ 3.5), {faster(best):.2f}× "
                     f"faster (goal ≥ 2.2)" + (f", mean cos {cos:.4f} (goal ≥ 0.99)" if cos is not None else ""))
    for name in [n for n in by_row if n in ("masks + int8", "combination") or n.startswith("+ recovery")]:
        r = by_row[name]
        q, d = r.get("quality", {}), dense.get("quality", {})
        line = f"{name}: {faster(r):.2f}× faster (goal ≥ 3), {smaller(r):.2f}× smaller (goal ≥ 4)"
        if q:
            line += (f", mean cos {q['mean cos']:.4f} (goal ≥ 0.95), top-1 {q['top-1']:.4f} vs dense "
                     f"{d['top-1']:.4f} (goal: within 0.01)")
        lines.append(line)
    slower = [f"{name} {key} ({t['ort']:.1f} vs {t['eager']:.1f} ms)" for name, r in by_row.items()
              for key, t in r["latency_ms"].items() if t["ort"] > t["eager"]]
    lines.append("onnxruntime at least as fast as eager in every cell (goal): "
                 + ("yes" if not slower else f"no, slower in {len(slower)}: " + "; ".join(slower)))
    return lines


def markdown(name: str) -> str:
    """The last results of one model as two Markdown tables (sizes and quality; latency) and its goals."""
    records = json.loads((RESULTS_DIR / f"deploy_{name}_sizes.json").read_text())["records"]
    dense = next(r for r in records if r["row"] == "dense")
    mb = lambda v: "refused" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [f"**{name}**", "", "| variant | compressed MB | dense MB | onnx MB | × smaller | mean cos | ort mean cos "
             "| top-1 | ran (load) |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in records:
        if "size_mb" not in r:
            lines.append(f"| {r['row']} | — | — | — | — | — | — | — | not run: {r['note']} |")
            continue
        s, q = r["size_mb"], r.get("quality", {})
        smallest = min(v for v in s.values() if v is not None)
        ran = r.get("ran", {})
        when = f"{ran['at'][11:]} ({ran['load'][0]:.1f})" if ran else ""
        lines.append(f"| {r['row']} | {mb(s['compressed'])} | {mb(s['dense'])} | {mb(s['onnx'])} | "
                     f"{dense['size_mb']['dense'] / smallest:.2f} | "
                     + " | ".join(f"{q[k]:.4f}" if k in q else "—" for k in ("mean cos", "ort mean cos", "top-1"))
                     + f" | {when} |")
    lines += ["", "| variant | runtime | " + " | ".join(f"b{b} t{t}" for b, t in SETTINGS) + " |",
              "|---|---|" + "---:|" * len(SETTINGS)]
    for r in records:
        for runtime in ("eager", "ort") if "latency_ms" in r else ():
            timings = [r["latency_ms"][f"b{b}t{t}"] for b, t in SETTINGS]
            cells = [f"{t[runtime]:.1f} ms ({t['dense'] / t[runtime]:.2f}×)" for t in timings]
            lines.append(f"| {r['row']} | {runtime} | " + " | ".join(cells) + " |")
    lines += [""] + [f"- {line}" for line in goals(records)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="rcc-mini,vit-b-32")
    parser.add_argument("--recovery-steps", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rows", default="", help="comma list of rows to run (default: all)")
    parser.add_argument("--update", action="store_true",
                        help="the rows run replace those of the same name in the last results; the others stay")
    parser.add_argument("--markdown", action="store_true",
                        help="print the last results as Markdown tables, run nothing")
    args = parser.parse_args()
    if args.markdown:
        for name in args.models.split(","):
            print(markdown(name.strip()))
        return
    torch.set_num_threads(2)
    only = {r.strip() for r in args.rows.split(",") if r.strip()} or None
    for name in args.models.split(","):
        records = run_model(name.strip(), args.recovery_steps, args.reps, only, args.update)
        if any(r["row"] == "dense" and "size_mb" in r for r in records):
            for line in goals(records):
                print(f"{name}: {line}", flush=True)


if __name__ == "__main__":
    main()
