"""Bad input across every command: exit 2, one line naming the value, no traceback, the session unchanged.

Each case runs the CLI's ``main`` in this process (argparse errors raise SystemExit(2)) on a
private copy of one small session (the tiny OpenCLIP model; a plan and one stage: nodes 1 and
2). Before and after, the copy's fingerprint (its database's rows and every blob's bytes, and
the journal) must be equal: a refused input never changes what the user made.

Placeholders in a case: {S} the session, {F} a regular file, {B} a binary file, {E} an empty
directory, {N} a non-empty directory, {T} a fresh path in the test's folder, {C} the tiny
model's config, {W} its weights, {GS} / {GP} / {GJ} garbage .safetensors / .pt / .json,
{HG} a Hugging Face folder with garbage weights, {P} a valid plan file, {R} a valid recipe,
{D} the data root (the tiny model's folder).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from rcc_tui.main import main
from rcc.compression.plan import CompressionPlan, Rule, plan_to_dict
from rcc.session import ops as O
from rcc.session.replay import write_recipe
from rcc.session.session import Session

LAYER = "visual.transformer.resblocks.0.mlp.c_fc"
GOOD_PLAN = {"version": 1, "defaults": {"sparsity": 0.5, "method": "magnitude"}, "rules": [], "overrides": {},
             "seed": 0}


def _op(**fields) -> str:
    return json.dumps(fields)


def _plan(**changes) -> str:
    return _op(op="set_plan", plan={**GOOD_PLAN, **changes})


def _defaults(**changes) -> str:
    return _plan(defaults={**GOOD_PLAN["defaults"], **changes})


def _recipe(ops: list, **extra) -> str:
    return json.dumps({"format": "rcc-recipe", "version": 1, "ops": ops, **extra})


LOAD = {"op": "load_model", "model": "rcc-mini", "data": "digits"}

# (id, argv, words the one error line must contain)
APPLY_CASES = [
    ("op not json", ["{nope"], ["{nope", "not valid JSON"]),
    ("op binary file", ["{B}"], ["{B}", "binary"]),
    ("op missing file", ["{T}/none.json"], ["none.json", "neither JSON nor a readable file"]),
    ("op empty list", ["[]"], ["[]", "empty list"]),
    ("op number", ["[1]"], ["1", "not an object"]),
    ("op string", ['["checkout"]'], ["'checkout'", "not an object"]),
    ("op unknown kind", [_op(op="explode")], ["'explode'", "allowed"]),
    ("op no kind", [_op(node=1)], ["None", "allowed"]),
    ("op unknown field", [_op(op="checkout", node=1, force=True)], ["'force'", "allowed"]),
    ("checkout missing node", [_op(op="checkout")], ["'node'", "missing"]),
    ("checkout node 0", [_op(op="checkout", node=0)], ["node 0", "≥ 1"]),
    ("checkout node -3", [_op(op="checkout", node=-3)], ["node -3", "≥ 1"]),
    ("checkout node 1e30 as int", ['{"op": "checkout", "node": 1000000000000000000000000000000}'],
     ["1000000000000000000000000000000", "9223372036854775807"]),
    ("checkout node 2**63", [_op(op="checkout", node=2**63)], [str(2**63), "9223372036854775807"]),
    ("checkout node float", [_op(op="checkout", node=1.5)], ["1.5", "integer"]),
    ("checkout node 1e30 float", ['{"op": "checkout", "node": 1e30}'], ["1e+30", "integer"]),
    ("checkout node string", [_op(op="checkout", node="2")], ["'2'", "integer"]),
    ("checkout node bool", [_op(op="checkout", node=True)], ["True", "integer"]),
    ("checkout node null", [_op(op="checkout", node=None)], ["None", "integer"]),
    ("checkout node absent", [_op(op="checkout", node=99)], ["node 99", "from 1 to 2"]),
    ("label node absent", [_op(op="label", node=42, label="x")], ["node 42", "from 1 to 2"]),
    ("label too long", [_op(op="label", node=1, label="x" * 81)], ["label", "80 characters"]),
    ("label not text", [_op(op="label", node=1, label=5)], ["label 5", "string"]),
    ("label note not text", [_op(op="label", node=1, note=["a"])], ["note ['a']", "string"]),
    ("evaluate split unknown", [_op(op="evaluate", split="validation")], ["'validation'", "train, val, test"]),
    ("evaluate split empty", [_op(op="evaluate", split="")], ["split ''", "non-empty"]),
    ("evaluate split number", [_op(op="evaluate", split=3)], ["split 3", "string"]),
    ("run_stage unknown stage", [_op(op="run_stage", stage="quantize")], ["'quantize'", "dare, nullu, alphaedit"]),
    ("run_stage fraction 0", [_op(op="run_stage", stage="dare", fraction=0)], ["fraction 0", "0 < x ≤ 1"]),
    ("run_stage fraction 1.5", [_op(op="run_stage", stage="dare", fraction=1.5)], ["fraction 1.5", "0 < x ≤ 1"]),
    ("run_stage fraction nan", ['{"op": "run_stage", "stage": "dare", "fraction": NaN}'], ["nan", "0 < x ≤ 1"]),
    ("run_stage fraction inf", ['{"op": "run_stage", "stage": "dare", "fraction": Infinity}'], ["inf", "0 < x ≤ 1"]),
    ("run_stage fraction text", [_op(op="run_stage", stage="dare", fraction="half")], ["'half'", "0 < x ≤ 1"]),
    ("run_stage layers string", [_op(op="run_stage", stage="dare", layers=LAYER)], [LAYER, "list of layer names"]),
    ("run_stage layers numbers", [_op(op="run_stage", stage="dare", layers=[1, 2])], ["[1, 2]", "layer names"]),
    ("run_stage unknown layer", [_op(op="run_stage", stage="dare", layers=["visual.nope"])], ["visual.nope"]),
    ("run_stage calib 0", [_op(op="run_stage", stage="dare", calib_per_class=0)], ["calib_per_class 0", "≥ 1 and ≤ 10000"]),
    ("run_stage calib huge", [_op(op="run_stage", stage="dare", calib_per_class=10**9)], ["1000000000", "≥ 1 and ≤ 10000"]),
    ("run_stage whiten text", [_op(op="run_stage", stage="nullu", whiten="yes")], ["'yes'", "true or false"]),
    ("run_cascade no stages", [_op(op="run_cascade", stages=[])], ["[]", "non-empty list"]),
    ("run_cascade stage unknown", [_op(op="run_cascade", stages=["dare", "prune"])], ["'prune'", "dare, nullu"]),
    ("run_cascade stages string", [_op(op="run_cascade", stages="dare")], ["'dare'", "non-empty list"]),
    ("run_cascade threshold 2", [_op(op="run_cascade", threshold=2)], ["threshold 2", "0.0 ≤ x ≤ 1.0"]),
    ("run_cascade threshold -1", [_op(op="run_cascade", threshold=-1)], ["threshold -1", "0.0 ≤ x ≤ 1.0"]),
    ("run_cascade steps 0", [_op(op="run_cascade", steps=0)], ["steps 0", "≥ 1 and ≤ 100"]),
    ("run_cascade steps huge", [_op(op="run_cascade", steps=99999999999)], ["99999999999", "≥ 1 and ≤ 100"]),
    ("run_cascade attempts 0", [_op(op="run_cascade", max_attempts=0)], ["max_attempts 0", "≥ 1 and ≤ 20"]),
    ("run_cascade attempts 21", [_op(op="run_cascade", max_attempts=21)], ["max_attempts 21", "≥ 1 and ≤ 20"]),
    ("run_cascade schedule", [_op(op="run_cascade", schedule="random")], ["'random'", "linear, cosine"]),
    ("edit_layers no layers", [_op(op="edit_layers", layers=[], settings={"sparsity": 0.5})],
     ["[]", "non-empty list"]),
    ("edit_layers nothing to do", [_op(op="edit_layers", layers=[LAYER])], ["settings {}", "at least one"]),
    ("edit_layers sparsity 1", [_op(op="edit_layers", layers=[LAYER], settings={"sparsity": 1.0})],
     ["sparsity", "1.0"]),
    ("edit_layers sparsity -0.1", [_op(op="edit_layers", layers=[LAYER], settings={"sparsity": -0.1})],
     ["sparsity", "-0.1"]),
    ("edit_layers unknown setting", [_op(op="edit_layers", layers=[LAYER], settings={"nbits": 4})], ["'nbits'"]),
    ("edit_layers bits", [_op(op="edit_layers", layers=[LAYER], settings={"bits": 4})], ["bits 4", "8"]),
    ("edit_layers method", [_op(op="edit_layers", layers=[LAYER], settings={"method": "lottery"})],
     ["'lottery'", "dare, magnitude, wanda"]),
    ("edit_layers pattern", [_op(op="edit_layers", layers=[LAYER], settings={"pattern": "5:4"})], ["5:4"]),
    ("edit_layers rank 0", [_op(op="edit_layers", layers=[LAYER], settings={"rank": 0})], ["rank", "0"]),
    ("edit_layers rank energy 2", [_op(op="edit_layers", layers=[LAYER], settings={"rank": "energy:2"})],
     ["energy 2.0", "0 < energy ≤ 1"]),
    ("edit_layers budget 1", [_op(op="edit_layers", layers=[LAYER], budget=1)], ["budget 1", "0 < budget < 1"]),
    ("edit_layers budget text", [_op(op="edit_layers", layers=[LAYER], budget="most")], ["'most'", "budget"]),
    ("edit_layers unknown layer", [_op(op="edit_layers", layers=["nope.layer"], settings={"sparsity": 0.5})],
     ["nope.layer"]),
    ("set_plan not object", [_op(op="set_plan", plan=[1])], ["[1]", "plan object"]),
    ("set_plan version", [_plan(version=7)], ["version", "7"]),
    ("set_plan sparsity 1.5", [_defaults(sparsity=1.5)], ["sparsity", "1.5"]),
    ("set_plan method", [_defaults(method="svd")], ["'svd'", "dare, magnitude, wanda"]),
    ("set_plan pattern", [_defaults(pattern="row:col")], ["row:col"]),
    ("set_plan rank negative", [_defaults(rank=-4)], ["rank", "-4"]),
    ("set_plan rank energy 0", [_defaults(rank="energy:0")], ["energy 0.0", "0 < energy ≤ 1"]),
    ("set_plan budget 2", [_plan(budget=2)], ["budget", "2"]),
    ("set_plan rules not list", [_plan(rules={"a": 1})], ["rules"]),
    ("set_plan rule unknown kind", [_plan(rules=[{"kind": "conv", "settings": {"sparsity": 0.5}}])], ["'conv'"]),
    ("set_plan rule unknown tower", [_plan(rules=[{"tower": "audio", "settings": {"sparsity": 0.5}}])],
     ["'audio'"]),
    ("set_plan unknown key", [_plan(extra=1)], ["'extra'"]),
    ("set_plan seed text", [_plan(seed="zero")], ["seed", "'zero'"]),
    ("set_plan overrides not object", [_plan(overrides=[1])], ["overrides"]),
    ("export format", [_op(op="export", format="onnx2")], ["'onnx2'", "compressed, dense"]),
    ("export out empty", [_op(op="export", out="")], ["out ''", "non-empty"]),
    ("export node absent", [_op(op="export", out="x", node=9)], ["node 9", "from 1 to 2"]),
    ("export out under a file", [_op(op="export", out="{F}/x")], ["{F}", "which is a file"]),
    ("train steps 0", [_op(op="train", steps=0)], ["steps 0", "≥ 1 and ≤ 1000000"]),
    ("train lr 0", [_op(op="train", lr=0)], ["lr 0", "1e-12"]),
    ("train batch 1", [_op(op="train", batch_size=1)], ["batch_size 1", "≥ 2 and ≤ 65536"]),
    ("train weights all zero", [_op(op="train", kl_weight=0, cosine_weight=0)], ["not all zero"]),
    ("train precision", [_op(op="train", precision="int4")], ["'int4'", "fp32, bf16, fp16"]),
    ("train schedule", [_op(op="train", schedule="step")], ["'step'", "cosine, linear, constant"]),
    ("train warmup past steps", [_op(op="train", steps=10, warmup_steps=11)], ["warmup_steps 11", "≥ 0 and ≤ 10"]),
    ("train teacher absent", [_op(op="train", teacher=77, steps=1)], ["77"]),
    ("apply_trial trial -1", [_op(op="apply_trial", trial=-1)], ["trial -1"]),
    ("apply_trial password", [_op(op="apply_trial", storage="postgresql://u:secret@h/db")], ["password"]),
    ("apply_trial record list", [_op(op="apply_trial", record=[1])], ["[1]", "trial record"]),
    ("load_model again", [_op(op="load_model")], ["load_model"]),
    ("second op bad after good", [_op(op="label", node=1, label="ok"), _op(op="checkout", node=0)], ["node 0"]),
]

MODEL_CASES = [
    ("model empty", ["eval", "--model", ""], ["''", "accepted forms"]),
    ("model blank", ["eval", "--model", "   "], ["'   '", "accepted forms"]),
    ("model unknown scheme", ["eval", "--model", "torch:x"], ["torch:x", "accepted forms"]),
    ("model open_clip no name", ["eval", "--model", "open_clip:"], ["names no model"]),
    ("model open_clip unknown", ["eval", "--model", "open_clip:ViT-Z-99"], ["ViT-Z-99"]),
    ("model config missing", ["eval", "--model", "open_clip:{T}/none.json"], ["none.json", "not found"]),
    ("model config binary", ["eval", "--model", "open_clip:{GJ}"], ["{GJ}", "binary"]),
    ("model config not object", ["eval", "--model", "open_clip:{T}/list.json"], ["list.json", "list"]),
    ("model config lacks keys", ["eval", "--model", "open_clip:{T}/partial.json"], ["vision_cfg"]),
    ("model weights garbage safetensors", ["eval", "--model", "open_clip:{C}@{GS}"], ["{GS}", "safetensors"]),
    ("model weights garbage pt", ["eval", "--model", "open_clip:{C}@{GP}"], ["{GP}", "weights-only"]),
    ("model weights missing", ["eval", "--model", "open_clip:{C}@{T}/none.safetensors"], ["none.safetensors"]),
    ("model weights wrong model", ["eval", "--model", "open_clip:{T}/other.json@{W}"], ["do not match"]),
    ("model hf missing dir", ["eval", "--model", "hf:{T}/nodir"], ["nodir", "no such directory"]),
    ("model hf empty dir", ["eval", "--model", "hf:{E}"], ["{E}", "config.json"]),
    ("model hf garbage weights", ["eval", "--model", "hf:{HG}"], ["{HG}", "safetensors"]),
    ("model hf a file", ["eval", "--model", "hf:{F}"], ["{F}", "file"]),
    ("model hf-blip a clip", ["eval", "--model", "hf-blip:{HG}"], ["'clip'", "not 'blip'"]),
    ("layers model garbage", ["layers", "--model", "open_clip:{C}@{GS}"], ["{GS}"]),
    ("plan model garbage", ["plan", "--model", "open_clip:{GJ}", "--out", "{T}/p.json"], ["{GJ}"]),
    ("session new model garbage", ["session", "new", "{T}/new", "--model", "open_clip:{C}@{GP}", "--device", "cpu"],
     ["{GP}"]),
    ("session new model empty", ["session", "new", "{T}/new", "--model", ""], ["model ''"]),
    ("device unknown", ["eval", "--device", "tpu"], ["tpu", "allowed"]),
    ("device cuda absent", ["eval", "--device", "cuda:7"], ["cuda:7"]),
]

DATA_CASES = [
    ("data unknown kind", ["eval", "--data", "mnist"], ["mnist", "allowed"]),
    ("data missing path", ["eval", "--data", "imagefolder:"], ["needs a path"]),
    ("data path on digits", ["eval", "--data", "digits:/x"], ["takes no path"]),
    ("data unknown option", ["eval", "--data", "imagefolder:{E}?size=3"], ["'size'", "classnames"]),
    ("data malformed option", ["eval", "--data", "imagefolder:{E}?classnames"], ["'classnames'", "key=value"]),
    ("data option twice", ["eval", "--data", "coco-karpathy:{F}?root=a&root=b"], ["'root'", "twice"]),
    ("data imagefolder missing", ["eval", "--data", "imagefolder:{T}/nodir"], ["nodir"]),
    ("data imagefolder empty", ["eval", "--data", "imagefolder:{E}"], ["{E}"]),
    ("data cifar missing", ["eval", "--data", "cifar10:{T}/nodir"], ["nodir"]),
    ("data karpathy binary", ["eval", "--data", "coco-karpathy:{B}", "--task", "retrieval"], ["{B}"]),
    ("data karpathy not json", ["eval", "--data", "coco-karpathy:{F}", "--task", "retrieval"], ["{F}"]),
    ("data captions binary", ["eval", "--data", "captions-csv:{B}", "--task", "retrieval"], ["{B}"]),
    ("data split unknown", ["eval", "--split", "dev"], ["'dev'", "train, val, test"]),
    ("session new data unknown", ["session", "new", "{T}/new", "--data", "mnist"], ["mnist"]),
    ("session new split unknown", ["session", "new", "{T}/new", "--eval-split", "dev", "--model", "open_clip:{C}@{W}",
                                   "--device", "cpu"], ["'dev'"]),
    ("templates missing", ["eval", "--templates", "{T}/none.txt"], ["none.txt"]),
    ("templates binary", ["eval", "--templates", "{B}"], ["{B}"]),
]

PATH_CASES = [
    ("session missing", ["session", "show", "{T}/none"], ["none", "not a session"]),
    ("session is a file", ["session", "log", "{F}"], ["{F}", "not a session"]),
    ("session graph of empty dir", ["session", "graph", "{E}"], ["{E}", "not a session"]),
    ("session apply missing", ["session", "apply", "{T}/none", _op(op="checkout", node=1)], ["not a session"]),
    ("session gc missing", ["session", "gc", "{T}/none"], ["not a session"]),
    ("session new non-empty", ["session", "new", "{N}"], ["{N}", "not empty"]),
    ("session new a file", ["session", "new", "{F}"], ["{F}", "not empty"]),
    ("session new under a file", ["session", "new", "{F}/s"], ["{F}", "which is a file"]),
    ("export out under a file", ["export", "{S}", "--out", "{F}/x"], ["{F}", "which is a file"]),
    ("export out non-empty", ["export", "{S}", "--out", "{N}"], ["{N}", "not empty"]),
    ("export out a file", ["export", "{S}", "--out", "{F}"], ["{F}", "is a file"]),
    ("export node absent", ["export", "{S}", "--out", "{T}/x", "--node", "9"], ["node 9"]),
    ("export node 0", ["export", "{S}", "--out", "{T}/x", "--node", "0"], ["node 0"]),
    ("export node huge", ["export", "{S}", "--out", "{T}/x", "--node", "99999999999999999999999"],
     ["99999999999999999999999"]),
    ("export node text", ["export", "{S}", "--out", "{T}/x", "--node", "two"], ["'two'", "--node"]),
    ("export format", ["export", "{S}", "--out", "{T}/x", "--format", "tflite"], ["'tflite'", "--format"]),
    ("compress out under a file", ["compress", "--plan", "{P}", "--out", "{F}/x"], ["{F}", "which is a file"]),
    ("compress out non-empty", ["compress", "--plan", "{P}", "--out", "{N}"], ["{N}", "not empty", "--force"]),
    ("compress plan missing", ["compress", "--plan", "{T}/none.json", "--out", "{T}/x"], ["none.json"]),
    ("compress plan binary", ["compress", "--plan", "{B}", "--out", "{T}/x"], ["{B}"]),
    ("compress plan not json", ["compress", "--plan", "{F}", "--out", "{T}/x"], ["{F}", "not valid JSON"]),
    ("compress json under a file", ["compress", "--plan", "{P}", "--out", "{T}/x", "--json", "{F}/r.json"],
     ["{F}", "which is a file"]),
    ("eval json is a dir", ["eval", "--json", "{E}"], ["{E}", "is a directory"]),
    ("plan out under a file", ["plan", "--out", "{F}/p.json"], ["{F}", "which is a file"]),
    ("plan out is a dir", ["plan", "--out", "{E}"], ["{E}", "is a directory"]),
    ("export-recipe under a file", ["session", "export-recipe", "{S}", "{F}/r.json"], ["{F}", "which is a file"]),
    ("analyze out under a file", ["analyze", "profile", "--session", "{S}", "--out", "{F}/a"],
     ["{F}", "which is a file"]),
    ("replay out non-empty", ["replay", "{R}", "--out", "{N}", "--data-root", "{D}"], ["{N}", "not empty"]),
    ("replay json under a file", ["replay", "{R}", "--out", "{T}/r", "--json", "{F}/x.json"], ["{F}"]),
    ("train-demo out suffix", ["train-demo", "--out", "{T}/w.bin"], ["w.bin", ".safetensors"]),
    ("train-demo out under a file", ["train-demo", "--out", "{F}/w.safetensors"], ["{F}", "which is a file"]),
    ("open not a session", ["open", "{E}"], ["{E}", "not a session"]),
    ("new session non-empty", ["new", "--session", "{N}"], ["{N}", "not empty"]),
    ("serve session under a file", ["serve", "--session", "{F}/s"], ["{F}", "which is a file"]),
]

RECIPE_CASES = [
    ("recipe binary", ["replay", "{B}"], ["{B}", "cannot be read"]),
    ("recipe not json", ["replay", "{F}"], ["{F}", "cannot be read as JSON"]),
    ("recipe missing", ["replay", "{T}/none.json"], ["none.json", "neither a session"]),
    ("recipe wrong format", ["replay", "{T}/r1.json"], ["not an rcc recipe"]),
    ("recipe wrong version", ["replay", "{T}/r2.json"], ["version 9", "allowed: 1"]),
    ("recipe no ops", ["replay", "{T}/r3.json"], ["non-empty list"]),
    ("recipe first op not load", ["replay", "{T}/r4.json"], ["first op"]),
    ("recipe bad op", ["replay", "{T}/r5.json"], ["ops[1]", "node 0"]),
    ("recipe unknown key", ["replay", "{T}/r6.json"], ["'extras'"]),
    ("recipe bad metrics", ["replay", "{T}/r7.json"], ["nodes['1']"]),
    ("recipe config outside roots", ["replay", "{T}/r8.json", "--data-root", "{D}"], ["escapes the data roots"]),
    # ``afile`` exists in the working directory: it must be looked for under the data root only.
    ("recipe bare weights name", ["replay", "{T}/r9.json", "--data-root", "{D}"], ["'afile'", "{D}/afile",
                                                                                   "does not exist"]),
    ("recipe dotdot weights", ["replay", "{T}/r10.json", "--data-root", "{D}"], ["escapes the data roots"]),
    ("recipe data outside roots", ["replay", "{T}/r11.json", "--data-root", "{D}"], ["/etc", "escapes"]),
    ("recipe data option outside", ["replay", "{T}/r12.json", "--data-root", "{D}"], ["root", "escapes"]),
    ("recipe hf folder of cwd", ["replay", "{T}/r13.json", "--data-root", "{D}"], ["/", "escapes"]),
    ("recipe trial without record", ["replay", "{T}/r14.json", "--data-root", "{D}"], ["carries no trial record"]),
    ("recipe export name", ["replay", "{T}/r15.json", "--data-root", "{D}"], ["'..'", "no usable name"]),
    ("replay tolerance negative", ["replay", "{R}", "--tolerance", "-1"], ["-1", "≥ 0"]),
]

NUMBER_CASES = [
    ("compress steps huge", ["compress", "--plan", "{P}", "--out", "{T}/x", "--steps", "99999999999"],
     ["99999999999", "≥ 1 and ≤ 100"]),
    ("compress steps 0", ["compress", "--plan", "{P}", "--out", "{T}/x", "--steps", "0"], ["steps 0", "≥ 1 and ≤ 100"]),
    ("compress steps text", ["compress", "--plan", "{P}", "--out", "{T}/x", "--steps", "many"], ["'many'"]),
    ("compress threshold 1.5", ["compress", "--plan", "{P}", "--out", "{T}/x", "--threshold", "1.5"], ["1.5"]),
    ("compress threshold nan", ["compress", "--plan", "{P}", "--out", "{T}/x", "--threshold", "nan"], ["nan"]),
    ("compress attempts 0", ["compress", "--plan", "{P}", "--out", "{T}/x", "--max-attempts", "0"],
     ["max_attempts 0", "≥ 1 and ≤ 20"]),
    ("compress attempts huge", ["compress", "--plan", "{P}", "--out", "{T}/x", "--max-attempts", "10000"],
     ["10000", "≥ 1 and ≤ 20"]),
    ("compress schedule", ["compress", "--plan", "{P}", "--out", "{T}/x", "--schedule", "steep"], ["'steep'"]),
    ("compress stages", ["compress", "--plan", "{P}", "--out", "{T}/x", "--stages", "dare,prune"], ["prune"]),
    ("eval batch 0", ["eval", "--batch-size", "0"], ["--batch-size 0", "≥ 1"]),
    ("train steps 0", ["train", "{S}", "--steps", "0"], ["steps 0"]),
    ("train lr negative", ["train", "{S}", "--lr", "-1"], ["lr -1"]),
    ("train lr nan", ["train", "{S}", "--lr", "nan"], ["lr nan"]),
    ("train batch 1", ["train", "{S}", "--batch-size", "1"], ["batch_size 1"]),
    ("train temperature 0", ["train", "{S}", "--temperature", "0"], ["temperature 0"]),
    ("train teacher 0", ["train", "{S}", "--teacher", "0"], ["teacher 0"]),
    ("train precision", ["train", "{S}", "--precision", "int8"], ["'int8'"]),
    ("plan sparsity 1", ["plan", "--out", "{T}/p.json", "--sparsity", "1"], ["sparsity", "1"]),
    ("plan budget 0", ["plan", "--out", "{T}/p.json", "--rank", "auto", "--budget", "0"], ["budget", "0"]),
    ("plan rank bogus", ["plan", "--out", "{T}/p.json", "--rank", "lots"], ["'lots'"]),
    ("plan method bogus", ["plan", "--out", "{T}/p.json", "--method", "svd"], ["'svd'"]),
    ("plan tower bogus", ["plan", "--out", "{T}/p.json", "--tower", "audio"], ["'audio'"]),
    ("search workers 0", ["search", "{S}", "--workers", "0"], ["workers 0"]),
    ("search trials 0", ["search", "{S}", "--trials", "0"], ["trials 0"]),
    ("search sparsity range", ["search", "{S}", "--sparsity", "0.9:0.1"], ["(0.9, 0.1)", "0 ≤ low ≤ high < 1"]),
    ("search storage unreachable", ["search", "{S}", "--storage", "postgresql://u@127.0.0.1:9/db"],
     ["postgresql://u@127.0.0.1:9/db", "cannot be opened"]),
    ("search apply without trial", ["search", "apply", "{S}"], ["--trial"]),
    ("serve port 0", ["serve", "--port", "0"], ["port 0", "1 to 65535"]),
    ("serve port huge", ["serve", "--port", "70000"], ["port 70000"]),
    ("serve public host", ["serve", "--host", "0.0.0.0"], ["'0.0.0.0'", "--allow-remote"]),
    ("analyze compare confidence", ["analyze", "compare", "--session", "{S}", "--a", "1", "--b", "2", "--out",
                                    "{T}/a", "--confidence", "2"], ["confidence", "2"]),
    ("analyze compare node absent", ["analyze", "compare", "--session", "{S}", "--a", "1", "--b", "7", "--out",
                                     "{T}/a"], ["node 7"]),
    ("analyze sensitivity node absent", ["analyze", "sensitivity", "--session", "{S}", "--node", "9", "--sparsity",
                                         "0.5", "--out", "{T}/a"], ["node 9"]),
    ("train-demo epochs 0", ["train-demo", "--epochs", "0", "--out", "{T}/w.safetensors"], ["--epochs 0"]),
]

CASES = [*[(f"apply {name}", ["session", "apply", "{S}", *ops, "--device", "cpu"], words)
           for name, ops, words in APPLY_CASES],
         *MODEL_CASES, *DATA_CASES, *PATH_CASES, *RECIPE_CASES, *NUMBER_CASES]


def _fingerprint(session: Path) -> dict:
    """The session's rows (every table) and the bytes of its blobs and journal."""
    out = {}
    with sqlite3.connect(f"file:{session / 'session.db'}?mode=ro", uri=True) as connection:
        for (table,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            out[table] = sorted(connection.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
    for path in sorted((session / "store" / "blobs").glob("*/*")):
        out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    out["journal"] = hashlib.sha256((session / "session.journal").read_bytes()).hexdigest()
    out["files"] = sorted(str(p.relative_to(session)) for p in session.rglob("*")
                          if "tmp" not in p.parts and p.name not in ("verified.json", "session.lock")
                          and not p.name.startswith("session.db-"))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_spec):
    """The session template and every file the cases name."""
    from hf_tiny import save_tiny_clip
    from openclip_tiny import TINY_OPEN_CLIP_CONFIG

    root = tmp_path_factory.mktemp("bad-inputs")
    template = root / "template"
    config, weights = tiny_spec.split(":", 1)[1].split("@")
    with Session.create(template, model=tiny_spec, device="cpu") as session:
        session.apply(O.SetPlan(plan=plan_to_dict(CompressionPlan(
            rules=(Rule(kind="mlp_in", settings={"sparsity": 0.5}),)))))
        session.apply(O.RunStage(stage="dare", layers=(LAYER,)))
        write_recipe(session, root / "recipe.json")
    files = root / "files"
    files.mkdir()
    (files / "regular.txt").write_text("a regular file\n")
    (files / "binary.bin").write_bytes(bytes(range(256)) * 16)
    (files / "garbage.safetensors").write_bytes(b"\xff" * 16 + bytes(range(200)))
    (files / "garbage.pt").write_bytes(bytes(range(163, 255)) * 8)
    (files / "garbage.json").write_bytes(b"\x89\xa4\xff" * 50)
    (files / "plan.json").write_text(json.dumps(GOOD_PLAN))
    (files / "empty").mkdir()
    (files / "full").mkdir()
    (files / "full" / "keep.txt").write_text("mine")
    hf = save_tiny_clip(files / "hf-garbage")
    for weight in Path(hf).glob("*.safetensors"):
        weight.write_bytes(b"\x00\x00\x00\x00\x00\x00\xff\xff garbage")
    return {"template": template, "root": root, "S": None, "F": files / "regular.txt", "B": files / "binary.bin",
            "E": files / "empty", "N": files / "full", "C": config, "W": weights,
            "GS": files / "garbage.safetensors", "GP": files / "garbage.pt", "GJ": files / "garbage.json",
            "HG": Path(hf), "P": files / "plan.json", "R": root / "recipe.json", "D": Path(config).parent,
            "tiny_config": TINY_OPEN_CLIP_CONFIG}


def _case_files(world: dict, tmp: Path) -> None:
    """Per-test files: recipes with one fault each, odd model configs."""
    (tmp / "list.json").write_text("[1, 2]")
    (tmp / "partial.json").write_text(json.dumps({"embed_dim": 8}))
    other = {**world["tiny_config"], "embed_dim": 24}
    (tmp / "other.json").write_text(json.dumps(other))
    load = {**LOAD, "model": f"open_clip:{world['C']}@{world['W']}"}
    recipes = {
        "r1": {"format": "something-else", "version": 1, "ops": [load]},
        "r2": {"format": "rcc-recipe", "version": 9, "ops": [load]},
        "r3": {"format": "rcc-recipe", "version": 1, "ops": []},
        "r4": {"format": "rcc-recipe", "version": 1, "ops": [{"op": "checkout", "node": 1}]},
        "r5": {"format": "rcc-recipe", "version": 1, "ops": [load, {"op": "checkout", "node": 0}]},
        "r6": {"format": "rcc-recipe", "version": 1, "ops": [load], "extras": 1},
        "r7": {"format": "rcc-recipe", "version": 1, "ops": [load], "nodes": {"1": {"eval/primary": "high"}}},
        "r8": {"format": "rcc-recipe", "version": 1, "ops": [{**LOAD, "model": f"open_clip:{tmp}/other.json"}]},
        "r9": {"format": "rcc-recipe", "version": 1, "ops": [{**LOAD, "model": "open_clip:ViT-B-32@afile"}]},
        "r10": {"format": "rcc-recipe", "version": 1,
                "ops": [{**LOAD, "model": "open_clip:ViT-B-32@../../outside.safetensors"}]},
        "r11": {"format": "rcc-recipe", "version": 1, "ops": [{**load, "data": "imagefolder:/etc"}]},
        "r12": {"format": "rcc-recipe", "version": 1,
                "ops": [{**load, "data": f"coco-karpathy:{world['C']}?root=/etc"}]},
        "r13": {"format": "rcc-recipe", "version": 1, "ops": [{**LOAD, "model": "hf:/"}]},
        "r14": {"format": "rcc-recipe", "version": 1, "ops": [load, {"op": "apply_trial", "study": "s", "trial": 0}]},
        "r15": {"format": "rcc-recipe", "version": 1, "ops": [load, {"op": "export", "out": ".."}]},
    }
    for name, recipe in recipes.items():
        (tmp / f"{name}.json").write_text(json.dumps(recipe))
    (tmp / "afile").write_bytes(b"read me and you read outside the data roots")


def _fill(text: str, values: dict) -> str:
    for key in sorted(values, key=len, reverse=True):
        text = text.replace("{" + key + "}", str(values[key]))
    return text


@pytest.mark.parametrize("name, argv, words", CASES, ids=[case[0] for case in CASES])
def test_a_bad_input_exits_2_with_one_line_and_changes_nothing(name, argv, words, world, tmp_path, capsys,
                                                                 monkeypatch):
    session = tmp_path / "session"
    shutil.copytree(world["template"], session)
    _case_files(world, tmp_path)
    monkeypatch.chdir(tmp_path)  # bare names (open_clip:ViT-B-32@afile) resolve here, outside the data root
    values = {**{k: v for k, v in world.items() if isinstance(v, (str, Path))}, "S": session, "T": tmp_path}
    argv = [_fill(part, values) for part in argv]
    if "--device" not in argv and argv[0] in ("eval", "layers", "plan", "compress", "export", "train", "search"):
        argv += ["--device", "cpu"]
    before = _fingerprint(session)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, f"exit {code}; stderr: {err[-2000:]}"
    assert "Traceback" not in captured.err + captured.out
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("rcc-tui"), err
    for word in words:
        assert _fill(word, values) in err, err
    assert _fingerprint(session) == before


def test_the_suite_covers_at_least_150_bad_inputs():
    assert len(CASES) >= 150
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.slow
def test_a_few_bad_inputs_in_a_real_process(world, tmp_path):
    """The console entry point itself: one stderr line, exit 2, nothing from torch or the loaders."""
    import os
    import subprocess
    import sys

    session = tmp_path / "session"
    shutil.copytree(world["template"], session)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for argv, word in (
            (["eval", "--model", f"open_clip:{world['C']}@{world['GP']}", "--device", "cpu"], "weights-only"),
            (["session", "apply", str(session), str(world["B"])], "binary"),
            (["session", "apply", str(session), '{"op": "checkout", "node": 1000000000000000000000000000000}'],
             "9223372036854775807")):
        done = subprocess.run([sys.executable, "-m", "rcc_tui.main", *argv], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and word in done.stderr, done.stderr
    assert _fingerprint(session) == _fingerprint(world["template"])


def test_an_output_file_that_exists_is_overwritten_not_refused(tmp_path):
    from rcc.output_paths import OutputError, check_output_file

    existing = tmp_path / "plan.json"
    existing.write_text("{}")
    assert check_output_file(existing, "--out plan file") == existing  # a second `rcc-tui plan --out` rewrites it
    with pytest.raises(OutputError, match="which is a file"):
        check_output_file(existing / "x.json", "--out plan file")
