"""Recovery training of BLIP: next-token KL on teacher-forced captions for a captioner, ITM KL
(plus the ITC terms) for a retriever, by hand, in ``distill`` and as the session's ``train`` op
(recorded, replayed bit for bit, and run by ``rcc-tui train``)."""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path

import pytest
import torch

from caption_data import save_tiny_karpathy
from hf_tiny import save_tiny_blip, sharpen_blip_heads
from rcc.cli.main import main
from rcc.compression.layers import dense_weight, get_mask, set_mask
from rcc.errors import RccError
from rcc.models.hf_blip import load_hf_blip
from rcc.session import ops as O
from rcc.session.replay import load_recipe, replay
from rcc.session.session import Session
from rcc.training.distill import DistillConfig, distill, distill_data, teacher_targets
from rcc.training.grounded_distill import grounded_kl, kl_rows

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTION_LAYERS = ("text_decoder.bert.encoder.layer.1.crossattention.self.value",
                  "text_decoder.cls.predictions.transform.dense")
FUSION_LAYERS = ("text_encoder.encoder.layer.0.crossattention.self.value",
                 "text_encoder.encoder.layer.1.crossattention.output.dense")


def test_kl_rows_by_hand():
    # p = softmax(teacher / 2) = (1/4, 3/4), q = softmax(student / 2) = (1/2, 1/2):
    # T² · Σ p log(p / q) = 4 · (¼ log ½ + ¾ log 1.5).
    teacher = torch.tensor([[0.0, 2 * math.log(3.0)]])
    student = torch.zeros(1, 2)
    expected = 4 * (0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert kl_rows(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-6)
    assert kl_rows(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-7)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One folder holding both tiny BLIPs (heads sharpened, saved) and a tiny Karpathy dataset."""
    base = tmp_path_factory.mktemp("blip_train")
    for task in ("caption", "retrieval"):
        path = save_tiny_blip(base / task, task)
        model = load_hf_blip(f"hf-blip:{path}", str(path))
        sharpen_blip_heads(model)
        model.module.save_pretrained(path)
    save_tiny_karpathy(base / "flickr", {"train": 8, "val": 4, "test": 2})
    return base


def _spec(root: Path) -> str:
    return f"flickr30k-karpathy:{root / 'flickr' / 'dataset_flickr30k.json'}"


def _damaged(teacher, names, seed: int = 0):
    """A copy with half of each named layer's entries pruned (masks that training keeps)."""
    student = copy.deepcopy(teacher)
    index = student.layer_index
    generator = torch.Generator().manual_seed(seed)
    for name in names:
        shape = dense_weight(student.module, index[name]).shape
        set_mask(student.module, index[name], torch.rand(shape, generator=generator) > 0.5)
    return student


def _train_only(model, names) -> set[str]:
    """Every parameter except those of ``names`` (frozen, as locked layers are)."""
    keep = {f"{name}.{p}" for name in names for p, _ in model.module.get_submodule(name).named_parameters()}
    return {name for name, _ in model.module.named_parameters() if name not in keep}


@pytest.mark.parametrize("task, names, lr", [("caption", CAPTION_LAYERS, 3e-3), ("retrieval", FUSION_LAYERS, 1e-3)])
def test_training_recovers_grounded_layers_towards_the_teacher(root, task, names, lr):
    teacher = load_hf_blip(f"hf-blip:{root / task}", str(root / task))
    data = distill_data(_spec(root))
    assert len(data.captions) == len(data.images) == 8 and all(len(c) == 2 for c in data.captions)
    student = _damaged(teacher, names)
    masks = {name: get_mask(student.module, student.layer_index[name]).clone() for name in names}
    pixels = student.preprocess_batch([data.images[i] for i in range(8)])
    captions = [texts[0] for texts in data.captions]

    def divergence() -> float:
        with torch.no_grad():
            return float(grounded_kl(student, teacher, student.image_states(pixels), pixels, captions, 1.0))

    before = divergence()
    result = distill(student, data, teacher_targets(teacher, data),
                     DistillConfig(steps=10, lr=lr, batch_size=4, warmup_steps=0),
                     frozen=_train_only(student, names), teacher=teacher)
    after = divergence()
    # Measured: caption 2.35 → 0.70, retrieval (ITM) 3.2e-3 → 2.0e-4.
    assert after < before / 3, (before, after)
    assert result.params_after == result.params_before
    for name in names:  # pruned entries stay pruned
        layer = student.layer_index[name]
        assert torch.equal(get_mask(student.module, layer), masks[name])
        assert not dense_weight(student.module, layer)[~masks[name]].any()


def test_a_captioner_trains_without_text_embeddings_and_needs_its_teacher(root):
    teacher = load_hf_blip(f"hf-blip:{root / 'caption'}", str(root / "caption"))
    data = distill_data(_spec(root))
    targets = teacher_targets(teacher, data)
    assert targets.texts is None and targets.images.shape[0] == 8
    config = DistillConfig(steps=1, batch_size=2, warmup_steps=0)
    with pytest.raises(RccError) as caught:
        distill(copy.deepcopy(teacher), data, targets, config)
    message = str(caught.value)
    assert "needs the teacher model itself" in message and "allowed" in message and "\n" not in message
    # Image cosine alone (no KL) needs no teacher model and trains the vision tower only.
    student = copy.deepcopy(teacher)
    distill(student, data, targets, DistillConfig(steps=1, batch_size=2, warmup_steps=0, kl_weight=0.0, lr=1e-2))
    changed = {name for name, p in student.module.named_parameters()
               if not torch.equal(p, teacher.module.get_parameter(name))}
    assert changed and all(name.startswith("vision_model.") for name in changed)


# -- the session op ---------------------------------------------------------------------------

TRAIN = O.Train(steps=2, batch_size=4, lr=1e-3, warmup_steps=0)


@pytest.fixture(scope="module")
def session_dir(root, tmp_path_factory):
    """A closed captioner session: root (1) → DARE at 50 % on two decoder layers (2) → train (3)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # replay compares exact numbers
    directory = tmp_path_factory.mktemp("session") / "s"
    try:
        with Session.create(directory, model=f"hf-blip:{root / 'caption'}", data=_spec(root), eval_split="val",
                            device="cpu") as session:
            session.apply(O.EditLayers(layers=CAPTION_LAYERS, settings={"sparsity": 0.5}))
            session.apply(O.RunStage(stage="dare", layers=CAPTION_LAYERS, calib_per_class=2))
            session.apply(TRAIN)
    finally:
        torch.set_num_threads(threads)
    return directory


def test_the_train_op_distils_a_captioner_into_a_node_of_the_same_size(session_dir):
    with Session.open(session_dir, read_only=True) as session:
        nodes = {node.id: node for node in session.nodes()}
        assert [node.op_kind for node in nodes.values()] == ["load_model", "run_stage", "train"]
        assert nodes[3].metrics["size/params"] == nodes[2].metrics["size/params"] < nodes[1].metrics["size/params"]
        record = session.ops()[-1]
        assert record.result["teacher"] == 1 and len(record.result["losses"]) == 2
        assert all(loss > 0 for loss in record.result["losses"])  # the decoder's KL to the dense teacher
        assert session.graph.state(3).tensors != session.graph.state(2).tensors


def test_the_captioner_train_node_replays_bit_for_bit(session_dir, root, tmp_path):
    report = replay(load_recipe(session_dir), tmp_path / "again", [root], device="cpu")
    assert report.mismatches(0.0) == []
    with Session.open(session_dir, read_only=True) as first, Session.open(tmp_path / "again", read_only=True) as second:
        assert first.graph.state(3).tensors == second.graph.state(3).tensors
        assert first.ops()[-1].result["losses"] == second.ops()[-1].result["losses"]


def test_rcc_tui_train_trains_a_blip_node(session_dir, tmp_path, capsys):
    directory = tmp_path / "copy"
    shutil.copytree(session_dir, directory, ignore=shutil.ignore_patterns("session.lock"))
    assert main(["train", str(directory), "--steps", "1", "--batch-size", "2", "--warmup-steps", "0",
                 "--device", "cpu"]) == 0
    assert "node 4 (from node 3, teacher node 1)" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_apps_train_tab_trains_a_blip_node(session_dir, tmp_path):
    from tui_pilot import make_app, ready, running, settle, type_into, wait_until

    directory = tmp_path / "app"
    shutil.copytree(session_dir, directory, ignore=shutil.ignore_patterns("session.lock"))
    app = make_app(directory)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        app.main.query_one("#layer-tree").focus()
        await pilot.press("4")  # the Train tab, the fourth
        await pilot.pause()
        for field, text in (("steps", "1"), ("batch", "2"), ("eval-every", "")):
            await type_into(pilot, f"#train-{field}", text)
        await pilot.click("#train")
        # One step may end between two polls: started means running now, or a node already made.
        await wait_until(pilot, lambda: running(app) or app.main.view.head != 3, 60, "training to start")
        await settle(pilot)
        session = app.session
        head = next(node for node in session.nodes() if node.id == session.head)
        assert head.op_kind == "train" and head.parent == 3
        assert session.ops()[-1].body["steps"] == 1 and session.ops()[-1].body["batch_size"] == 2
