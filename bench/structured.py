"""Structured pruning: physically smaller, faster encoders, against Torch-Pruning.

    python -m bench.structured [--repeats 15] [--vit-repeats 5] [--no-vit] [--no-tp]

rcc-mini's text tower (the pretrained all-MiniLM-L6-v2, 6 blocks, 12 heads of 32, MLP 1536):
MLP hidden units removed at 30 % and 50 %, attention heads at 25 % and 50 %, and one mixed plan
under a 30 % budget of the tower's Linear parameters (of three channel / head splits of that
budget, the one whose text embeddings stay closest to dense on validation sentences: the
calibration split's K₀ slice, never used to calibrate, never the sentences reported; global
allocation). Rows:

  rcc + reconstruction     activation-aware scores (FLAP fluctuation), consumer refitted in closed form,
                           every block loses the planned share
  rcc + reconstruction,    the same, with the tower's total spread over its blocks by measured cost
    global                 (StageOptions.allocation = "global"; same parameter count)
  rcc, no reconstruction   activation-aware scores (input norm × weight norm), plain removal
  TP magnitude             Torch-Pruning (DepGraph) MetaPruner, GroupMagnitudeImportance(p=2)
  TP activation            Torch-Pruning, ActivationImportance(p=2) on the calibration texts
  dense

all at the same parameter count. Quality as ``bench.quality`` measures it (zero-shot top-1 on the
digits test split; mean cosine and NN@10 overlap of the text embeddings of the 347 held-out
docstring sentences against dense); stored parameters (the text tower's block Linears, and
the whole model); encode_text latency at batch 1 and 32 with 1 and 2 threads: each model timed
alternately with dense, after every model was built (so load changes all rows alike), OpenMP
threads waiting passively (see below); speed-up = the median of the pair ratios dense ÷ model,
with the CPU-time ratio at batch 32, 2 threads and the FLOP ratio (``count_flops``) beside it.
Then the OpenCLIP ViT-B-32 architecture (random weights): encode_image latency at batch 32,
2 threads, at 50 % MLP channels and at 50 % heads, timed the same way.
Goals: mean cosine ≥ 0.95 at 30 % and ≥ 0.90 at 50 % MLP channels, rcc + reconstruction above
the best Torch-Pruning figure by ≥ 0.08 in every row; encode_text ≥ 1.3× dense at 50 % MLP
channels (batch 32, 2 threads); ViT-B-32 encode_image ≥ 1.35× at 50 % MLP channels.
JSON: bench/results/structured_text.json, structured_vit.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# On a shared machine spinning OpenMP threads fight the other processes for the cores: a 2-thread
# encode_text of rcc-mini ran 3× slower than a 1-thread one at load 5, and its speed-ups swung from
# 0.9× to 1.9× for one model. Waiting passively, both sides are timed as the work they do (set
# OMP_WAIT_POLICY yourself to override; it must be set before torch starts its threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.quality import quality_cells  # noqa: E402
from bench.report import paired_seconds, report  # noqa: E402
from rcc.compression.calibration import CalibrationData  # noqa: E402
from rcc.compression.calibration_sets import CORPUS_SENTENCES, calibration_sets  # noqa: E402
from rcc.compression.cascade import CascadeConfig, run_cascade  # noqa: E402
from rcc.compression.plan import CompressionPlan, Rule  # noqa: E402
from rcc.compression.stage_context import StageOptions  # noqa: E402
from rcc.data.images import ArrayImages  # noqa: E402
from rcc.data.registry import load_dataset  # noqa: E402
from rcc.data.text_corpus import docstring_sentences  # noqa: E402
from rcc.eval.efficiency import count_flops  # noqa: E402
from rcc.eval.encode import encode_texts  # noqa: E402
from rcc.eval.fidelity import embedding_fidelity  # noqa: E402
from rcc.eval.suite import evaluator  # noqa: E402
from rcc.models.registry import load_model  # noqa: E402

BUDGET = 0.3  # the mixed plan: fraction of the text tower's block Linear parameters removed
MIX_HEADS = (0.0, 0.25, 0.5)  # head fractions tried under that budget (channels make up the rest)
SETTINGS = [(1, 1), (1, 2), (32, 1), (32, 2)]  # (batch, threads) of the encode_text timings


@dataclass(frozen=True)
class Setting:
    name: str
    channels: float  # fraction of each MLP's hidden units removed
    heads: float  # fraction of each attention's heads removed


def plan_for(setting: Setting, correction: bool, tower: str = "text", method: str = "wanda") -> CompressionPlan:
    rules = []
    if setting.channels:
        rules.append(Rule(tower=tower, kind="mlp_in", settings={"sparsity": setting.channels, "pattern": "channel",
                                                               "method": method, "correction": correction}))
    if setting.heads:
        rules.append(Rule(tower=tower, kind="attn_q", settings={"sparsity": setting.heads, "pattern": "head",
                                                               "method": method, "correction": correction}))
    return CompressionPlan(rules=tuple(rules))


def rcc_structured(dense, setting: Setting, correction: bool, calibration, preserved, allocation: str = "uniform",
                   sequential: bool = False):
    """rcc's DARE stage with the structured patterns (threshold 0: the full amount, nothing backed off)."""
    model = copy.deepcopy(dense)
    options = StageOptions(sequential=sequential, allocation=allocation)
    run_cascade(model, plan_for(setting, correction), lambda m: 1.0, calibration, preserved,
                CascadeConfig(stages=("dare",), threshold=0.0, options=options))
    return model


def torch_pruning(dense, setting: Setting, importance: str, texts):
    """Torch-Pruning's MetaPruner on the MiniLM inside the model, as its HF BERT example does it."""
    import torch_pruning as tp
    from transformers.models.bert.modeling_bert import BertSelfAttention

    model = copy.deepcopy(dense)
    bert = model.module.text.transformer
    tokens = model.tokenize(list(texts))
    mask = (tokens["input_ids"] != model.module.text.config.pad_token_id).long()
    example = {"input_ids": tokens["input_ids"][:2], "attention_mask": mask[:2]}
    attentions = [m for m in bert.modules() if isinstance(m, BertSelfAttention)]
    blocks = list(bert.encoder.layer)
    roots = ([b.intermediate.dense for b in blocks] if setting.channels else []) + (
        [p for a in attentions for p in (a.query, a.key, a.value)] if setting.heads else [])
    ignored = [m for m in bert.modules() if isinstance(m, nn.Linear) and m not in roots]
    scorer = (tp.importance.GroupMagnitudeImportance(p=2) if importance == "magnitude"
              else tp.importance.ActivationImportance(p=2))
    # The same unit counts as rcc, round(s · U): TP removes U − int(U · (1 − ratio)) channels and
    # ceil(ratio · h) heads. A q / k / v width ratio > 0 only opens the head step (head dims are kept).
    removed = round(setting.channels * 1536)
    ratios = {b.intermediate.dense: (removed - 0.5) / 1536 for b in blocks} if setting.channels else {}
    ratios.update({p: 0.5 for a in attentions for p in (a.query, a.key, a.value)} if setting.heads else {})
    pruner = tp.pruner.MetaPruner(
        bert, example, importance=scorer, pruning_ratio=0.0, pruning_ratio_dict=ratios, ignored_layers=ignored,
        num_heads={p: a.num_attention_heads for a in attentions for p in (a.query, a.key, a.value)},
        prune_num_heads=bool(setting.heads), prune_head_dims=False,
        head_pruning_ratio=round(setting.heads * 12) / 12,
        output_transform=lambda out: out.last_hidden_state.sum())
    with torch.no_grad():
        if importance == "activation":
            with scorer.compute_importance(bert):  # one forward over every calibration text
                bert(input_ids=tokens["input_ids"], attention_mask=mask)
        for group in pruner.step(interactive=True):
            group.prune()
    for attention in attentions:  # as Torch-Pruning's example: the module's own head count follows
        attention.num_attention_heads = pruner.num_heads[attention.query]
        attention.all_head_size = attention.query.out_features
    return model


def block_linear_params(model) -> int:
    return sum(layer.params for layer in model.layers() if layer.tower == "text" and layer.block is not None)


def timings(model, dense, tokens: dict[int, dict], repeats: int) -> tuple[list[float], list[float], float]:
    """Per (batch, threads) setting: encode_text ms (median) and dense ÷ model (median of the pair
    ratios); and the CPU-time ratio at batch 32 with 2 threads."""
    threads = torch.get_num_threads()
    ms, ratios = [], []
    try:
        for batch, n in SETTINGS:
            torch.set_num_threads(n)
            with torch.inference_mode():
                timing = paired_seconds(lambda t=tokens[batch]: dense.encode_text(t),
                                        lambda t=tokens[batch]: model.encode_text(t), repeats)
            ms.append(round(timing.second * 1000, 2))
            ratios.append(round(timing.wall_ratio, 3))
    finally:
        torch.set_num_threads(threads)
    return ms, ratios, round(timing.cpu_ratio, 3)


def mixed_setting(dense, calibration, preserved, validation, dense_validation) -> tuple[Setting, list]:
    """Of the channel / head splits of the budget, the one closest to dense on validation sentences."""
    per_block = [layer for layer in dense.layers() if layer.tower == "text" and layer.block == 0]
    mlp = sum(layer.params for layer in per_block if layer.kind.startswith("mlp"))
    attention = sum(layer.params for layer in per_block if layer.kind.startswith("attn"))
    tried = []
    for heads in MIX_HEADS:
        channels = round((BUDGET * (mlp + attention) - heads * attention) / mlp, 4)
        setting = Setting(f"mixed: {channels:.0%} channels + {heads:.0%} heads", channels, heads)
        model = rcc_structured(dense, setting, True, calibration, preserved, "global")
        cosine = embedding_fidelity(dense_validation, encode_texts(model, validation), k=10).mean_cosine
        tried.append((cosine, setting))
        print(f"  mixed candidate {setting.name}: validation mean cos {cosine:.4f}", flush=True)
    best = max(tried, key=lambda pair: pair[0])[1]
    return Setting(f"mixed, {BUDGET:.0%} of parameters ({best.channels:.0%} ch + {best.heads:.0%} heads)",
                   best.channels, best.heads), [[s.name, round(c, 4)] for c, s in tried]


def text_benchmark(args) -> None:
    dense = load_model("rcc-mini", device="cpu")
    calibration, preserved = calibration_sets("digits")
    top1 = evaluator(load_dataset("digits", "test"))
    corpus = docstring_sentences("eval")
    dense_text = encode_texts(dense, corpus)
    validation = docstring_sentences("calib")[CORPUS_SENTENCES:]  # K₀'s slice: never calibrated on
    dense_validation = encode_texts(dense, validation)
    tokens = {batch: dense.tokenize(corpus[:batch]) for batch in {b for b, _ in SETTINGS}}
    settings = [Setting("MLP channels 30 %", 0.3, 0.0), Setting("MLP channels 50 %", 0.5, 0.0),
                Setting("heads 25 %", 0.0, 0.25), Setting("heads 50 %", 0.0, 0.5)]
    mixed, candidates = mixed_setting(dense, calibration, preserved, validation, dense_validation)
    settings.append(mixed)
    columns = ["setting", "method", "top-1", "mean cos", "NN@10", "block Linear params", "model params",
               *[f"ms b{b} t{t}" for b, t in SETTINGS], *[f"× b{b} t{t}" for b, t in SETTINGS],
               "cpu× b32 t2", "GFLOPs b32", "FLOPs ×", "seconds"]
    methods = [("rcc + reconstruction", lambda s: rcc_structured(dense, s, True, calibration, preserved)),
               ("rcc + reconstruction, global", lambda s: rcc_structured(dense, s, True, calibration, preserved,
                                                                         "global")),
               ("rcc, no reconstruction", lambda s: rcc_structured(dense, s, False, calibration, preserved))]
    if not args.no_tp:
        methods += [("TP magnitude", lambda s: torch_pruning(dense, s, "magnitude", calibration.texts)),
                    ("TP activation", lambda s: torch_pruning(dense, s, "activation", calibration.texts))]
    # Quality first, every model kept; then all timings together, so the machine's load changes
    # the speed figures of every row alike.
    built = [("dense", "dense", dense, 0.0)]
    for setting in settings:
        for name, make in methods:
            began = time.perf_counter()
            built.append((setting.name, name, make(setting), round(time.perf_counter() - began, 1)))
    quality = {}
    for setting_name, name, model, seconds in built:
        quality[(setting_name, name)] = [*quality_cells(model, top1, dense_text, corpus), block_linear_params(model),
                                         model.num_parameters()]
        cells = quality[(setting_name, name)]
        print(f"{setting_name:48s} {name:30s} top1 {cells[0]:.4f} cos {cells[1]:.4f} nn {cells[2]:.4f} "
              f"params {cells[3]:,} ({seconds}s)", flush=True)
    rows, load = [], [round(x, 2) for x in os.getloadavg()]
    dense_flops = count_flops(lambda: dense.encode_text(tokens[32]))
    for setting_name, name, model, seconds in built:
        ms, ratios, cpu = timings(model, dense, tokens, args.repeats)
        flops = count_flops(lambda: model.encode_text(tokens[32]))  # noqa: B023 (called at once)
        rows.append([setting_name, name, *quality[(setting_name, name)], *ms, *ratios, cpu,
                     round(flops / 1e9, 3), round(dense_flops / flops, 3), seconds])
        print(f"{setting_name:48s} {name:30s} b32t2 ×{ratios[3]:.2f} (CPU time ×{cpu:.2f}, FLOPs "
              f"×{dense_flops / flops:.2f})", flush=True)
    load += [round(x, 2) for x in os.getloadavg()]
    report("structured_text", columns, rows, {"goals": text_goals(rows), "mixed_candidates": candidates,
                                              "load_average_before_and_after_timing": load,
                                              "calibration_texts": len(calibration.texts),
                                              "corpus": len(corpus), "validation": len(validation)})


def text_goals(rows: list[list]) -> dict:
    by = {(row[0], row[1]): row for row in rows}
    goals = {}
    for setting in sorted({row[0] for row in rows if row[0] != "dense"}):
        theirs = [by[(setting, m)][3] for m in ("TP magnitude", "TP activation") if (setting, m) in by]
        for ours in ("rcc + reconstruction", "rcc + reconstruction, global"):
            if (setting, ours) in by and theirs:
                goals[f"{setting}, {ours}: margin over best TP (≥ 0.08)"] = round(by[(setting, ours)][3] - max(theirs), 4)
    for setting, floor in (("MLP channels 30 %", 0.95), ("MLP channels 50 %", 0.90)):
        if (setting, "rcc + reconstruction") in by:
            goals[f"{setting}: mean cos (≥ {floor})"] = by[(setting, "rcc + reconstruction")][3]
    if ("MLP channels 50 %", "rcc + reconstruction") in by:
        row = by[("MLP channels 50 %", "rcc + reconstruction")]
        goals["MLP channels 50 %: encode_text b32 t2 speed-up (≥ 1.3)"] = row[14]
        goals["MLP channels 50 %: encode_text b32 t2 speed-up, CPU time"] = row[15]
        goals["MLP channels 50 %: encode_text b32 FLOPs, dense ÷ pruned"] = row[17]
    return goals


def vit_row(dense, setting: Setting, pixels: torch.Tensor, repeats: int) -> list:
    """ViT-B-32 narrowed by ``setting`` (group magnitude: random weights, no refit) timed against dense."""
    model = copy.deepcopy(dense)
    nothing = CalibrationData(images=None, texts=())
    run_cascade(model, plan_for(setting, False, tower="vision", method="magnitude"), lambda m: 1.0, nothing,
                config=CascadeConfig(stages=("dare",), threshold=0.0))
    with torch.inference_mode():
        timing = paired_seconds(lambda: dense.encode_image(pixels), lambda: model.encode_image(pixels), repeats)
    flops = count_flops(lambda: dense.encode_image(pixels)) / count_flops(lambda: model.encode_image(pixels))
    print(f"ViT-B-32 {setting.name}: {timing.first * 1000:.0f} ms → {timing.second * 1000:.0f} ms = "
          f"×{timing.wall_ratio:.2f} (CPU time ×{timing.cpu_ratio:.2f}, FLOPs ×{flops:.2f})", flush=True)
    return [setting.name, dense.num_parameters(), model.num_parameters(), round(timing.first * 1000, 1),
            round(timing.second * 1000, 1), round(timing.wall_ratio, 3), round(timing.cpu_ratio, 3), round(flops, 3)]


def vit_benchmark(args) -> None:
    torch.manual_seed(0)
    dense = load_model("open_clip:ViT-B-32", device="cpu")
    rng = np.random.default_rng(0)
    images = ArrayImages(rng.integers(0, 256, size=(32, 224, 224, 3), dtype=np.uint8))
    pixels = dense.preprocess_batch([images[i] for i in range(32)])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    rows, load = [], [round(x, 2) for x in os.getloadavg()]
    try:
        for setting in (Setting("MLP channels 50 %", 0.5, 0.0), Setting("heads 50 %", 0.0, 0.5)):
            rows.append(vit_row(dense, setting, pixels, args.vit_repeats))  # each pruned copy freed after its row
    finally:
        torch.set_num_threads(threads)
    report("structured_vit", ["setting", "dense params", "params", "dense ms", "ms", "speed-up", "CPU-time speed-up",
                              "FLOPs ×"],
           rows,
           {"batch": 32, "threads": 2, "load_average_before_and_after": load + [round(x, 2) for x in os.getloadavg()],
            "goals": {"MLP channels 50 %: encode_image speed-up (≥ 1.35)": rows[0][5]}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="encode_text timing pairs")
    parser.add_argument("--vit-repeats", type=int, default=7, help="ViT-B-32 encode_image timing pairs")
    parser.add_argument("--no-vit", action="store_true", help="skip the ViT-B-32 latency table")
    parser.add_argument("--no-text", action="store_true", help="skip the rcc-mini table")
    parser.add_argument("--no-tp", action="store_true", help="skip the Torch-Pruning rows")
    args = parser.parse_args()
    if not args.no_text:
        text_benchmark(args)
    if not args.no_vit:
        vit_benchmark(args)


if __name__ == "__main__":
    main()
