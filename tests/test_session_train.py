"""The session op ``train`` (recovery training by distillation) on the tiny OpenCLIP model:
a new node with the parent's size, the op recorded, the root as default teacher, cancellation
that leaves the session as it was, exact replay, and the ``rcc-tui train`` command."""

import shutil
from pathlib import Path

import pytest
import torch

from rcc.cli.main import main
from rcc.compression.plan import plan_to_dict, uniform_plan
from rcc.errors import Cancelled
from rcc.session import ops as O
from rcc.session.replay import load_recipe, replay
from rcc.session.session import Session

pytestmark = pytest.mark.slow

# warmup_steps is given: with the op's default (10) a 5-step Train is refused (see
# test_training_distill.py::test_a_short_train_op_with_default_warmup_is_accepted).
TRAIN = O.Train(steps=5, batch_size=8, lr=1e-3, eval_every=5, warmup_steps=1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread_for_the_module(one_thread_module):
    """Module-wide (the recorded session is built once): replay compares exact numbers."""


@pytest.fixture(scope="module")
def model_root(tiny_spec) -> Path:
    return Path(tiny_spec.split("@")[1]).parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_spec):
    """A closed session: root (1) → dare at 50 % magnitude on every layer (2) → train (3)."""
    directory = tmp_path_factory.mktemp("train") / "s"
    with Session.create(directory, model=tiny_spec, data="digits", device="cpu") as session:
        session.apply(O.SetPlan(plan=plan_to_dict(uniform_plan(sparsity=0.5, method="magnitude"))))
        session.apply(O.RunStage(stage="dare", calib_per_class=2))
        outcome = session.apply(TRAIN)
    return directory, outcome


def _copy(directory: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(directory, out, ignore=shutil.ignore_patterns("session.lock"))
    return out


def test_train_makes_a_node_of_the_same_size_from_the_root_teacher(trained):
    directory, outcome = trained
    assert (outcome.node_before, outcome.new_node, outcome.node_after) == (2, 3, 3)
    assert outcome.result["teacher"] == 1
    losses = outcome.result["losses"]
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert outcome.result["best_step"] == 5 and [step for step, _ in outcome.result["evals"]] == [5]
    with Session.open(directory, read_only=True) as session:
        nodes = {node.id: node for node in session.nodes()}
        assert sorted(nodes) == [1, 2, 3] and nodes[3].parent == 2 and nodes[3].op_kind == "train"
        assert nodes[3].metrics["size/params"] == nodes[2].metrics["size/params"] < nodes[1].metrics["size/params"]
        assert nodes[3].metrics["size/bytes"] == nodes[2].metrics["size/bytes"]
        assert nodes[3].params == nodes[2].params
        assert 0.0 <= nodes[3].metrics["val/primary"] <= 1.0
        assert nodes[3].metrics["val/primary"] == outcome.metrics["val/primary"]
        # Training changed weights (different blobs) but not the structure (same masks).
        before, after = session.graph.state(2), session.graph.state(3)
        assert before.structure == after.structure and before.tensors.keys() == after.tensors.keys()
        changed = {name for name in after.tensors if after.tensors[name] != before.tensors[name]}
        assert changed and not any(name.endswith("_mask") for name in changed)
        op = session.ops()[-1]
        assert op.kind == "train" and (op.node_before, op.node_after) == (2, 3)
        assert op.body == O.op_to_dict(TRAIN)
        assert O.op_from_dict(op.body) == TRAIN
        assert op.result["teacher"] == 1 and op.result["losses"] == losses


def test_pruned_entries_stay_zero_in_the_trained_node(trained):
    from rcc.compression.layers import masked_parameter

    directory, _ = trained
    with Session.open(directory, device="cpu") as session:
        assert session.head == 3
        module = session.model.module
        checked = 0
        for holder in module.modules():
            for buffer, mask in holder.named_buffers(recurse=False):
                target = masked_parameter(holder, buffer)
                if target is not None:
                    assert torch.count_nonzero(getattr(holder, target).detach()[~mask]) == 0
                    checked += 1
        assert checked >= 20  # every layer of the tiny model is masked


def test_cancelling_training_leaves_the_session_as_it_was(trained, tmp_path):
    directory = _copy(trained[0], tmp_path)
    with Session.open(directory, device="cpu") as session:
        nodes, ops = session.nodes(), session.ops()
        before = {k: v.clone() for k, v in session.model.module.state_dict().items()}
        with pytest.raises(Cancelled):
            session.apply(TRAIN, cancel=lambda: True)
        steps = []

        def progress(event) -> None:
            if event.phase == "train":
                steps.append(event.done)

        with pytest.raises(Cancelled):  # mid-training, after weights have moved
            session.apply(O.Train(steps=5, batch_size=8, lr=1e-1, warmup_steps=0), progress=progress,
                          cancel=lambda: len(steps) >= 2)
        assert steps == [1, 2]
        assert session.nodes() == nodes and session.ops() == ops and session.head == 3
        after = session.model.module.state_dict()
        assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
        assert all(p.requires_grad for p in session.model.module.parameters())


def test_an_explicit_teacher_is_used_and_an_unknown_one_refused(trained, tmp_path, capsys):
    directory = _copy(trained[0], tmp_path)
    assert main(["train", str(directory), "--steps", "2", "--batch-size", "8", "--warmup-steps", "0",
                 "--teacher", "99", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "node 99 does not exist" in err and "\n" not in err
    with Session.open(directory, device="cpu") as session:
        assert len(session.nodes()) == 3
        outcome = session.apply(O.Train(teacher=2, steps=2, batch_size=8, warmup_steps=0))
        assert outcome.result["teacher"] == 2 and outcome.new_node == 4


def test_layers_locked_in_the_plan_are_not_trained(trained, tmp_path):
    directory = _copy(trained[0], tmp_path)
    locked = "visual.transformer.resblocks.0.mlp.c_fc"
    with Session.open(directory, device="cpu") as session:
        session.apply(O.EditLayers(layers=(locked,), settings={"locked": True}))
        outcome = session.apply(O.Train(steps=2, batch_size=8, lr=1e-2, warmup_steps=0))
        before, after = session.graph.state(3).tensors, session.graph.state(outcome.new_node).tensors
    for name in (f"{locked}.weight", f"{locked}.bias", f"{locked}.weight_mask"):
        assert after[name] == before[name], name
    for name in ("visual.transformer.resblocks.0.mlp.c_proj.weight", "visual.transformer.resblocks.1.mlp.c_fc.weight"):
        assert after[name] != before[name], name


def test_replay_reproduces_the_train_node_exactly(trained, model_root, tmp_path):
    directory, _ = trained
    recipe = load_recipe(directory)
    assert [op.kind for op in recipe.ops] == ["load_model", "set_plan", "run_stage", "train"]
    report = replay(recipe, tmp_path / "again", [model_root], device="cpu")
    rows = [row for row in report.rows if row.node == 3]
    assert {row.key for row in rows} >= {"val/primary", "size/params", "size/bytes"}
    assert all(row.difference == 0 for row in rows)
    assert report.mismatches(0.0) == []
    with Session.open(directory, read_only=True) as first, Session.open(tmp_path / "again", read_only=True) as second:
        assert first.graph.state(3).tensors == second.graph.state(3).tensors  # bit-identical weights
        assert first.ops()[-1].result["losses"] == second.ops()[-1].result["losses"]


def test_the_cli_trains_the_current_node(trained, tmp_path, capsys):
    directory = _copy(trained[0], tmp_path)
    assert main(["train", str(directory), "--steps", "3", "--batch-size", "8", "--warmup-steps", "0",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "node 4 (from node 3, teacher node 1)" in out and "→" in out and "loss" in out
    with Session.open(directory, read_only=True) as session:
        assert [node.id for node in session.nodes()] == [1, 2, 3, 4]
        assert session.ops()[-1].body["steps"] == 3 and session.ops()[-1].body["batch_size"] == 8
    assert main(["train", str(directory), "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "steps 0" in err and "\n" not in err


def test_the_cli_trains_for_three_steps_with_default_warmup(trained, tmp_path, capsys):
    # `rcc-tui train S --steps 3` (the documented short run) must work without --warmup-steps.
    directory = _copy(trained[0], tmp_path)
    code = main(["train", str(directory), "--steps", "3", "--batch-size", "8"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "→" in captured.out


def test_a_train_op_with_attention_transfer_is_recorded_and_replays_exactly(trained, model_root, tmp_path, capsys):
    directory = _copy(trained[0], tmp_path)
    assert main(["train", str(directory), "--steps", "3", "--batch-size", "8", "--warmup-steps", "0",
                 "--lr", "1e-3", "--attention-weight", "1.0", "--device", "cpu"]) == 0
    assert "node 4 (from node 3, teacher node 1)" in capsys.readouterr().out
    for bad in ("-1", "nan"):
        assert main(["train", str(directory), "--attention-weight", bad, "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert "attention_weight" in err and "allowed" in err and "\n" not in err
    with Session.open(directory, read_only=True) as session:
        op = session.ops()[-1]
        assert op.kind == "train" and op.body["attention_weight"] == 1.0 and op.node_after == 4
        losses = op.result["losses"]
        assert len(losses) == 3 and all(loss > 0 for loss in losses)
    recipe = load_recipe(directory)
    assert recipe.ops[-1] == O.Train(steps=3, batch_size=8, warmup_steps=0, lr=1e-3, attention_weight=1.0)
    report = replay(recipe, tmp_path / "again", [model_root], device="cpu")
    rows = [row for row in report.rows if row.node == 4]
    assert {row.key for row in rows} >= {"val/primary", "size/params"} and report.mismatches(0.0) == []
    with Session.open(directory, read_only=True) as first, Session.open(tmp_path / "again", read_only=True) as second:
        assert first.graph.state(4).tensors == second.graph.state(4).tensors
        assert first.ops()[-1].result["losses"] == second.ops()[-1].result["losses"] == losses
