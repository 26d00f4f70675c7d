"""Session operations: JSON round trips and one-line validation errors (no model needed)."""

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcc.compression.plan import CompressionPlan, Rule, plan_to_dict, uniform_plan
from rcc.errors import RccError
from rcc.session import ops as O
from rcc.session.ops import OP_TYPES, OpError, op_from_dict, op_to_dict

HALF = plan_to_dict(CompressionPlan(rules=(Rule(tower="vision", settings={"sparsity": 0.5}),
                                           Rule(tower="vision", kind="mlp_in", settings={"rank": 8})),
                                    overrides={"visual.proj": {"locked": True}}, seed=7))

# One op of every type, with non-default values wherever the op has fields.
EXAMPLES = [
    O.LoadModel(model="open_clip:cfg.json@w.safetensors", data="imagefolder:pets", eval_split="val",
                test_split="test"),
    O.LoadModel(),
    O.SetPlan(plan=HALF),
    O.SetPlan(plan=plan_to_dict(uniform_plan(sparsity=0.3))),
    O.EditLayers(layers=("visual.proj", "text_projection"), settings={"sparsity": 0.25, "rank": 4}),
    O.EditLayers(layers=("visual.proj",), reset=True),
    O.RunStage(stage="nullu", fraction=0.375, layers=("a.b", "c"), calib_per_class=3, whiten=False,
               preserve=True),
    O.RunCascade(stages=("dare", "alphaedit"), threshold=0.9, max_attempts=5, schedule="cosine", steps=4,
                 layers=("x",), calib_per_class=2, whiten=False, preserve=True),
    O.Evaluate(split="calib"),
    O.Checkout(node=12),
    O.Label(node=3, label="best so far", note="dare ×0.5, then nullu\nsecond line"),
    O.Export(format="dense", out="exports/best", node=4),
    O.Export(),
]
# Op types added later round-trip at least with their defaults (every field of an op has one).
EXAMPLES += [cls() for cls in OP_TYPES.values() if cls not in {type(op) for op in EXAMPLES}]


def _through_json(op):
    return op_from_dict(json.loads(json.dumps(op_to_dict(op))))


def test_the_examples_cover_every_op_type():
    assert {type(op) for op in EXAMPLES} == set(OP_TYPES.values())
    assert {"load_model", "set_plan", "edit_layers", "run_stage", "run_cascade", "evaluate", "checkout", "label",
            "export"} <= set(OP_TYPES)
    assert all(cls.kind == kind for kind, cls in OP_TYPES.items())


@pytest.mark.parametrize("op", EXAMPLES, ids=lambda op: op.kind)
def test_every_op_round_trips_through_json_to_an_equal_op(op):
    data = op_to_dict(op)
    assert data["op"] == op.kind
    assert set(data) == {"op"} | {f.name for f in dataclasses.fields(op)}
    back = _through_json(op)
    assert type(back) is type(op)
    assert back == op
    assert op_to_dict(back) == data
    assert json.dumps(op_to_dict(back), sort_keys=True) == json.dumps(data, sort_keys=True)


def test_tuples_are_written_as_lists_and_lists_are_read_back_as_tuples():
    op = O.RunCascade(stages=["dare", "nullu"], layers=["a", "b"])
    assert op.stages == ("dare", "nullu") and op.layers == ("a", "b")
    data = op_to_dict(op)
    assert data["stages"] == ["dare", "nullu"] and data["layers"] == ["a", "b"]
    assert isinstance(_through_json(op).stages, tuple)


def test_ops_are_frozen():
    op = O.RunStage(fraction=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.fraction = 1.0


def test_integral_numbers_for_float_fields_load_as_floats():
    op = op_from_dict({"op": "run_cascade", "threshold": 1})
    assert op.threshold == 1.0 and isinstance(op.threshold, float)
    assert op_from_dict({"op": "run_stage", "fraction": 1}) == O.RunStage(fraction=1.0)


def _message(data) -> str:
    with pytest.raises(OpError) as info:
        op_from_dict(data)
    assert isinstance(info.value, RccError)
    text = str(info.value)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("data, words", [
    ({"op": "frobnicate"}, ["'frobnicate'", "unknown", "load_model", "run_cascade", "export"]),
    ({"fraction": 0.5}, ["None", "unknown", "run_stage"]),
    ({"op": "run_stage", "bogus": 1}, ["'bogus'", "unknown", "stage", "fraction", "calib_per_class"]),
    ({"op": "checkout", "kind": "evaluate"}, ["'kind'", "unknown", "node"]),
    ({"op": "run_stage", "calib_per_class": True}, ["calib_per_class True", "integer", "≥ 1", "10000"]),
    ({"op": "run_stage", "calib_per_class": "16"}, ["calib_per_class '16'", "integer"]),
    ({"op": "run_stage", "calib_per_class": 16.0}, ["calib_per_class 16.0", "integer"]),
    ({"op": "run_stage", "calib_per_class": 0}, ["calib_per_class 0", "≥ 1"]),
    ({"op": "run_stage", "layers": "visual.proj"}, ["layers 'visual.proj'", "list of layer names"]),
    ({"op": "run_stage", "layers": ["a", 3]}, ["['a', 3]", "list of layer names"]),
    ({"op": "run_stage", "whiten": 1}, ["whiten 1", "true or false"]),
    ({"op": "run_stage", "stage": "svd"}, ["stage 'svd'", "dare, nullu, alphaedit"]),
    ({"op": "run_stage", "fraction": 0}, ["fraction 0", "0 < x ≤ 1"]),
    ({"op": "run_stage", "fraction": 1.5}, ["fraction 1.5", "≤ 1"]),
    ({"op": "run_stage", "fraction": float("nan")}, ["fraction nan", "≤ 1"]),
    ({"op": "run_stage", "fraction": "0.5"}, ["fraction '0.5'", "number"]),
    ({"op": "run_cascade", "threshold": 2}, ["threshold 2", "0.0 ≤ x ≤ 1.0"]),
    ({"op": "run_cascade", "threshold": -0.1}, ["threshold -0.1", "0.0 ≤ x ≤ 1.0"]),
    ({"op": "run_cascade", "stages": ["dare", "prune"]}, ["'prune'", "dare, nullu, alphaedit"]),
    ({"op": "run_cascade", "max_attempts": 21}, ["max_attempts 21", "≤ 20"]),
    ({"op": "run_cascade", "steps": 0}, ["steps 0", "≥ 1"]),
    ({"op": "run_cascade", "schedule": "cubic"}, ["'cubic'", "linear, cosine, exponential, adaptive"]),
    ({"op": "edit_layers", "layers": [], "settings": {"sparsity": 0.5}}, ["layers []", "non-empty list"]),
    ({"op": "edit_layers", "layers": ["a"]}, ["settings {}", "at least one setting", "reset"]),
    ({"op": "edit_layers", "layers": ["a"], "settings": {"sparsity": 1.0}}, ["sparsity 1.0", "< 1"]),
    ({"op": "edit_layers", "layers": ["a"], "settings": {"speed": 2}}, ["'speed'", "sparsity", "rank"]),
    ({"op": "set_plan", "plan": {"rules": [{"settings": {"sparsity": 1.0}}]}},
     ["set_plan", "rules[0]", "sparsity 1.0", "< 1"]),
    ({"op": "set_plan", "plan": {"colour": 1}}, ["set_plan", "'colour'", "defaults"]),
    ({"op": "set_plan", "plan": []}, ["plan []", "plan object"]),
    ({"op": "label", "node": 1, "label": "x" * 81}, ["label 'xxx", "at most 80 characters"]),
    ({"op": "label", "node": 0}, ["node 0", "≥ 1"]),
    ({"op": "checkout", "node": "3"}, ["node '3'", "integer"]),
    ({"op": "checkout", "node": True}, ["node True", "integer"]),
    ({"op": "evaluate", "split": ""}, ["split ''", "non-empty string"]),
    ({"op": "load_model", "model": ""}, ["model ''", "non-empty string"]),
    ({"op": "load_model", "eval_split": 3}, ["eval_split 3", "string"]),
    ({"op": "export", "format": "tflite"}, ["'tflite'", "compressed, dense, onnx, hf-compressed"]),
    ({"op": "run_cascade", "quant_method": "awq"}, ["quant_method 'awq'", "rtn, gptq"]),
    ({"op": "run_stage", "smooth_alpha": 1.0}, ["smooth_alpha 1.0", "0.0 ≤ x < 1.0"]),
    ({"op": "run_stage", "quant_embeddings": "yes"}, ["quant_embeddings 'yes'", "true or false"]),
    ({"op": "edit_layers", "layers": ["a"], "settings": {"bits": 4}}, ["bits 4", "8, or null"]),
    ({"op": "run_cascade", "stages": ["dare", "int4"]}, ["'int4'", "dare, nullu, alphaedit, quant"]),
    ([1, 2], ["[1, 2]", "not an object"]),
])
def test_bad_ops_are_refused_with_one_line_naming_the_value_and_what_is_allowed(data, words):
    text = _message(data)
    for word in words:
        assert word in text, (word, text)


def test_a_label_of_exactly_80_characters_is_fine():
    assert O.Label(node=1, label="y" * 80).label == "y" * 80


def test_a_fraction_out_of_range_above_and_at_zero_names_the_same_allowed_range():
    # 0 is refused, so the allowed range printed for 1.5 must not include 0 either.
    at_zero = _message({"op": "run_stage", "fraction": 0}).split("allowed: ")[1]
    above = _message({"op": "run_stage", "fraction": 1.5}).split("allowed: ")[1]
    below = _message({"op": "run_stage", "fraction": -0.5}).split("allowed: ")[1]
    assert above == at_zero == below


def test_an_empty_or_wrong_stage_list_names_the_stages_not_layer_names():
    for stages in ([], "dare", [1]):
        text = _message({"op": "run_cascade", "stages": stages})
        assert "dare, nullu, alphaedit" in text, text
        assert "layer" not in text, text


def test_ops_built_in_python_are_validated_too():
    with pytest.raises(OpError, match="fraction 0"):
        O.RunStage(fraction=0.0)
    with pytest.raises(OpError, match="threshold 1.01"):
        O.RunCascade(threshold=1.01)
    with pytest.raises(OpError, match="sparsity 1.0"):
        O.SetPlan(plan={"defaults": {"sparsity": 1.0}})


_names = st.lists(st.text(min_size=1, max_size=12), max_size=4)
_compress = dict(layers=_names, calib_per_class=st.integers(1, 10_000), whiten=st.booleans(),
                 preserve=st.booleans(), allocation=st.sampled_from(O.ALLOCATIONS),
                 quant_method=st.sampled_from(O.QUANT_METHODS), smooth_alpha=st.floats(0.0, 1.0, exclude_max=True),
                 quant_embeddings=st.booleans())


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({**_compress, "stage": st.sampled_from(O.STAGE_NAMES),
                              "fraction": st.floats(0.0, 1.0, exclude_min=True)}))
def test_random_valid_run_stage_ops_round_trip(values):
    op = O.RunStage(**values)
    back = _through_json(op)
    assert back == op
    assert back.fraction == values["fraction"] and back.layers == tuple(values["layers"])


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({**_compress,
                              "stages": st.lists(st.sampled_from(O.STAGE_NAMES), min_size=1, max_size=5),
                              "threshold": st.floats(0.0, 1.0), "max_attempts": st.integers(1, 20),
                              "schedule": st.sampled_from(O.SCHEDULES), "steps": st.integers(1, 100)}))
def test_random_valid_run_cascade_ops_round_trip(values):
    op = O.RunCascade(**values)
    back = _through_json(op)
    assert back == op
    assert back.stages == tuple(values["stages"]) and back.threshold == values["threshold"]
    assert op_to_dict(back) == {"op": "run_cascade", **values}


def test_every_op_kind_has_one_handler_and_no_kind_is_registered_twice():
    from rcc.session.handlers import HANDLERS, handles

    assert set(HANDLERS) == set(OP_TYPES)
    with pytest.raises(ValueError, match="'label' has a handler already"):
        handles(O.Label)(lambda *args: None)
    with pytest.raises(ValueError, match="'label' is taken by Label"):
        O.op_type(O.Label)
    assert set(HANDLERS) == set(OP_TYPES)  # nothing half-registered


def test_what_the_session_must_know_about_an_op_is_on_its_class():
    assert [kind for kind, cls in OP_TYPES.items() if cls.starts_session] == ["load_model"]
    assert {kind for kind, cls in OP_TYPES.items() if not cls.needs_model} == {"label"}
    assert {kind for kind, cls in OP_TYPES.items() if cls.moves_head} == {"checkout"}
    assert {kind for kind, cls in OP_TYPES.items() if cls.visits_nodes} == {"checkout", "export"}


def test_load_model_logs_a_new_op_with_the_data_spec_filled_in_and_leaves_the_callers_op_alone():
    """A handler sees only its OpContext; what it fills in goes into a new op (ops are frozen), the one logged."""
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    from rcc.data.registry import canonical_spec
    from rcc.session.handlers import HANDLERS

    class Workspace:
        eval_split = "val"

        def dataset(self, split):
            return [0] * {"train": 7, "val": 2, "test": 3}[split]

        def evaluator(self, cancel, progress=None):
            return lambda model: 0.5

    class Context:  # the OpContext protocol and nothing else
        directory, graph, plan, workspace, head = Path("/nowhere"), None, CompressionPlan(), None, None
        module = torch.nn.Linear(2, 3, bias=False)

        def load_workspace(self, model, data, eval_split, test_split, progress=None):
            self.loaded = (model, data, eval_split, test_split)
            self.workspace = Workspace()

        @property
        def model(self):
            return SimpleNamespace(module=self.module)

    context, op = Context(), O.LoadModel(model="rcc-mini", data="imagefolder:/pets")
    effect = HANDLERS["load_model"](context, op, None, None)
    canonical = canonical_spec("imagefolder:/pets")
    assert canonical == "imagefolder:/pets?split=0.7,0.1,0.2&seed=0"
    assert op.data == "imagefolder:/pets" and effect.op == dataclasses.replace(op, data=canonical)
    assert context.loaded == ("rcc-mini", canonical, "val", "test")
    assert effect.settings == {"model": "rcc-mini", "data": canonical, "eval_split": "val", "test_split": "test",
                               "splits": json.dumps(effect.result["splits"])}
    assert effect.result["splits"]["items"] == {"train": 7, "val": 2, "test": 3}
    assert effect.metrics == {"val/primary": 0.5, "size/params": 6, "size/total": 6, "size/bytes": 24}
