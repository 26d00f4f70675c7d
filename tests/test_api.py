"""The Python API (rcc.load / Cascade / evaluate / export): the README example, recording into a
session (replayed to the same metrics), equality with the unrecorded path, and its refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import rcc
from rcc.errors import RccError
from rcc.session.replay import load_recipe, replay, write_recipe
from rcc.session.session import Session

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_and_its_numbers_hold(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_readme_example(), "README.md (Python API)", "exec"), scope)  # noqa: S102 — our own README
    result = scope["result"]
    assert set(result.metrics) == {"val/dense", "val/primary"}
    assert result.final_metric >= result.threshold * result.dense_metric  # the cascade's guarantee
    assert result.sizes["size/bytes"] < 4 * scope["model"].num_parameters()  # below the float32 dense bytes
    assert result.removed_fraction > 0.3 and [a["stage"] for a in result.accepted] == ["dare", "nullu", "alphaedit"]
    test = rcc.evaluate(scope["model"], data="digits", split="test")
    assert set(test) >= {"test/top1", "test/primary"} and 0.5 < test["test/primary"] <= 1
    assert (tmp_path / "out" / "open_clip_model.safetensors").is_file()


def _cascade(**kwargs) -> rcc.Cascade:
    return rcc.Cascade(threshold=0.0, stages=[rcc.DARE(sparsity=0.5, method="wanda"), rcc.AlphaEdit()],
                       calib_per_class=2, **kwargs)


def test_a_session_records_the_calls_as_ops_and_replays_them_exactly(tiny_spec, tmp_path, one_thread):
    path = tmp_path / "nb"
    model = rcc.load(tiny_spec, session=path, data="digits", device="cpu")
    report = _cascade().run(model)
    assert report.node == 2 and report.eval_split == "val"
    metrics = rcc.evaluate(model, split="test")
    exported = rcc.export(model, tmp_path / "exported", format="compressed")
    assert exported.node == 2 and exported.total_bytes > 0 and (tmp_path / "exported" / "manifest.json").is_file()
    rcc.close(model)

    with Session.open(path, read_only=True) as session:
        assert [op.kind for op in session.ops()] == ["load_model", "set_plan", "run_cascade", "evaluate", "export"]
        node = session.graph.node(2)
        assert node.metrics["val/primary"] == report.final_metric
        assert all(node.metrics[key] == value for key, value in metrics.items())
        write_recipe(session, tmp_path / "recipe.json")
    again = replay(load_recipe(tmp_path / "recipe.json"), tmp_path / "again", [tmp_path, Path(tiny_spec.split("@")[1]).parent],
                   device="cpu")
    assert again.rows and again.mismatches(0.0) == []

    reopened = rcc.load(tiny_spec, session=path, device="cpu")  # back at the head node
    assert rcc.evaluate(reopened, split="test") == metrics
    rcc.close(reopened)


def test_recorded_and_unrecorded_runs_compute_the_same_model(tiny_spec, tmp_path, one_thread):
    recorded = rcc.load(tiny_spec, session=tmp_path / "s", device="cpu")
    free = rcc.load(tiny_spec, device="cpu")
    a, b = _cascade().run(recorded), _cascade().run(free, data="digits")
    assert (a.dense_metric, a.final_metric, a.sizes) == (b.dense_metric, b.final_metric, b.sizes)
    assert [x["metric"] for x in a.attempts] == [x["metric"] for x in b.attempts]
    state_a, state_b = recorded.module.state_dict(), free.module.state_dict()
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    rcc.close(recorded)


def test_stages_set_the_plan_for_the_towers_given(tiny_spec):
    model = rcc.load(tiny_spec, device="cpu")
    plan = rcc.Cascade(stages=[rcc.DARE(sparsity=0.25), rcc.Nullu(rank="auto", budget=0.5)],
                       towers="text", kinds=["mlp_in", "mlp_out"]).compression_plan(model)
    assert plan.budget == 0.5 and len(plan.rules) == 2
    assert {rule.kind for rule in plan.rules} == {"mlp_in", "mlp_out"} and all(r.tower == "text" for r in plan.rules)
    assert plan.rules[0].settings["sparsity"] == 0.25 and str(plan.rules[0].settings["rank"]) == "auto"
    base = {"version": 1, "overrides": {"text.transformer.resblocks.0.mlp.c_fc": {"locked": True}}}
    extended = rcc.Cascade(stages=[rcc.AlphaEdit()], plan=base).compression_plan(model)
    assert extended.overrides == base["overrides"] and extended.rules[0].settings == {"correction": True}


def test_a_channel_pattern_goes_to_the_mlp_leaders_and_narrows_them(tiny_spec, one_thread):
    model = rcc.load(tiny_spec, device="cpu")
    dense = {layer.name: layer.shape for layer in model.layers()}
    cascade = rcc.Cascade(stages=[rcc.DARE(sparsity=0.5, method="wanda", pattern="channel")], threshold=0.0,
                          towers="vision", allocation="global", calib_per_class=2)
    assert {rule.kind for rule in cascade.compression_plan(model).rules} == {"mlp_in"}  # no kinds needed
    assert cascade.op().allocation == "global"
    cascade.run(model, data="digits")
    narrowed = {layer.name: layer.shape for layer in model.layers() if layer.shape != dense[layer.name]}
    mlp = [name for name in dense if ".mlp." in name and name.startswith("visual.")]
    assert narrowed and set(narrowed) == set(mlp)  # every vision MLP pair, nothing else
    units = sum(dense[name][0] for name in mlp if name.endswith("c_fc"))
    assert sum(narrowed[name][0] for name in narrowed if name.endswith("c_fc")) == units // 2  # the tower's total


def test_quant_is_a_stage_and_export_writes_every_format(tiny_spec, tmp_path, one_thread):
    from rcc.compression.quantized_layers import is_quantized

    model = rcc.load(tiny_spec, device="cpu")
    report = rcc.Cascade(threshold=0.0, stages=[rcc.Quant(method="rtn")], calib_per_class=2).run(model, data="digits")
    assert [a["stage"] for a in report.accepted] == ["quant"]
    int8 = [path for path, child in model.module.named_modules() if is_quantized(child)]
    assert len(int8) == report.accepted[0]["changed"] > 0
    onnx = rcc.export(model, tmp_path / "onnx", format="onnx")  # through rcc.exports.export_model, as the op
    assert {"image_encoder.onnx", "text_encoder.onnx"} <= {p.name for p in (tmp_path / "onnx").iterdir()}
    assert onnx.details["text"]["min_cosine"] > 0.99 and onnx.details["image"]["min_cosine"] > 0.99
    compressed = rcc.export(model, tmp_path / "compressed")
    assert compressed.total_bytes < compressed.dense_bytes / 2  # int8 values: a quarter of float32, plus scales


@pytest.mark.parametrize("make, message", [
    (lambda: rcc.Cascade(stages=[rcc.DARE(sparsity=0.5), rcc.DARE(sparsity=0.2)]), "repeat a stage"),
    (lambda: rcc.Cascade(stages=[rcc.Quant(method="int4")]), "quant_method 'int4'"),
    (lambda: rcc.Cascade(stages=["dare"]), "is not a stage"),
    (lambda: rcc.Cascade(), "at least one stage"),
    (lambda: rcc.Cascade(stages=[rcc.AlphaEdit()], threshold=1.5), "threshold 1.5"),
    (lambda: rcc.Cascade(stages=[rcc.AlphaEdit()], steps=0), "steps 0"),
    (lambda: rcc.Cascade(stages=[rcc.AlphaEdit()], allocation="even"), "allocation 'even'"),
])
def test_bad_cascades_are_refused_in_one_line(make, message):
    with pytest.raises(RccError, match=re.escape(message)) as error:
        make()
    assert "\n" not in str(error.value)


def test_bad_calls_are_refused_in_one_line_and_leave_the_session_as_it_was(tiny_spec, tmp_path):
    model = rcc.load(tiny_spec, device="cpu")
    checks = [
        (lambda: rcc.Cascade(stages=[rcc.DARE(sparsity=1.5)]).run(model), "sparsity 1.5"),
        (lambda: rcc.Cascade(stages=[rcc.Nullu(rank="auto")]).run(model), "needs the plan's budget"),
        (lambda: rcc.evaluate(model, data="nope"), "unknown dataset"),
        (lambda: rcc.export(model, tmp_path / "x", format="zip"), "format 'zip'"),
        (lambda: rcc.load(tiny_spec, data="digits"), "without a session"),
    ]
    for call, message in checks:
        with pytest.raises(RccError, match=re.escape(message)) as error:
            call()
        assert "\n" not in str(error.value)
    recorded = rcc.load(tiny_spec, session=tmp_path / "s", device="cpu")
    with pytest.raises(RccError, match="is not the data of session"):
        rcc.evaluate(recorded, data="cifar10:/nowhere")
    rcc.close(recorded)
    with pytest.raises(RccError, match="is not the model of session"):
        rcc.load("rcc-mini", session=tmp_path / "s")
    with Session.open(tmp_path / "s", read_only=True) as session:
        assert [op.kind for op in session.ops()] == ["load_model"]
