"""Calibration, eval and test never share an item, on every dataset kind, whoever reads them.

Every image read is recorded where it happens (``ArrayImages.__getitem__`` with the index into
the whole array, ``read_image`` with the file's path), labelled with the role of the code that
asked: a session made on the dataset (load_model reads eval), its calibration sets, a cascade
stage (optimisation: train and eval only), then the ``evaluate`` op on the test split. On CIFAR
(val held out of train, the subtlest layout) recovery training with model selection, a
sensitivity scan (``rcc-tui analyze sensitivity``) and a one-trial search (``rcc-tui search``)
run as well: their choice of split does not depend on the kind, and each costs seconds. The test fails if
calibration or any optimisation ever touched a test item, or calibration an eval item.
"""

import contextlib
import json

import numpy as np
import pytest
from PIL import Image

from rcc.cli.main import main
from rcc.compression.plan import plan_to_dict, uniform_plan
from rcc.data import images as image_module
from rcc.data.registry import load_dataset
from rcc.session import ops as O
from rcc.session.session import Session

pytestmark = pytest.mark.usefixtures("one_thread")


class ReadLog:
    """Which source items each role read: (array identity, index) or a file path."""

    def __init__(self):
        self.role = None
        self.reads: dict[str, set] = {}

    @contextlib.contextmanager
    def reading_as(self, role: str):
        self.role = role
        try:
            yield
        finally:
            self.role = None

    def add(self, item) -> None:
        if self.role is not None:
            self.reads.setdefault(self.role, set()).add(item)

    def __getitem__(self, role: str) -> set:
        return self.reads.get(role, set())


@pytest.fixture
def read_log(monkeypatch):
    log = ReadLog()
    array_getitem, read_file = image_module.ArrayImages.__getitem__, image_module.read_image

    def array_read(self, index):
        log.add((self.identity, int(index) % len(self)))
        return array_getitem(self, index)

    def file_read(path):
        log.add(str(path))
        return read_file(path)

    monkeypatch.setattr(image_module.ArrayImages, "__getitem__", array_read)
    monkeypatch.setattr(image_module, "read_image", file_read)
    return log


# -- tiny datasets of every kind: every item a distinct image ----------------------------------------

def _png(path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value % 251, value // 251, 90)).save(path)


def _cifar_records(labels, start: int, label_bytes: int) -> bytes:
    rows = []
    for i, label in enumerate(labels):
        pixels = np.full(3 * 32 * 32, (start + i) % 256, dtype=np.uint8)
        rows.append(bytes([0] * (label_bytes - 1) + [label]) + pixels.tobytes())
    return b"".join(rows)


def _karpathy(root, kind: str) -> str:
    splits = ["train"] * 8 + ["restval"] * 2 + ["val"] * 4 + ["test"] * 4
    records = []
    for i, split in enumerate(splits):
        folder = ("val2014" if split != "train" else "train2014") if kind == "coco" else ""
        _png(root / folder / f"{i}.png", i)
        record = {"filename": f"{i}.png", "split": split,
                  "sentences": [{"raw": f"picture number {i}"}, {"raw": f"another view of {i}"}]}
        records.append({**record, "filepath": folder} if kind == "coco" else record)
    (root / "dataset.json").write_text(json.dumps({"images": records}))
    return f"{kind}-karpathy:{root / 'dataset.json'}"


def make_spec(kind: str, root) -> str:
    root.mkdir(parents=True, exist_ok=True)
    if kind == "digits":
        return "digits"
    if kind == "imagefolder":
        for c in range(3):
            for i in range(10):
                _png(root / f"class_{c}" / f"{i}.png", 10 * c + i)
        return f"imagefolder:{root}"
    if kind in ("cifar10", "cifar100"):
        ten = kind == "cifar10"
        labels = [i % 3 for i in range(30)]
        if ten:
            for b in range(5):
                (root / f"data_batch_{b + 1}.bin").write_bytes(_cifar_records(labels[6 * b:6 * b + 6], 6 * b, 1))
            (root / "test_batch.bin").write_bytes(_cifar_records([0, 1, 2, 0, 1, 2], 200, 1))
            (root / "batches.meta.txt").write_text("\n".join(f"class {i}" for i in range(10)))
        else:
            (root / "train.bin").write_bytes(_cifar_records(labels, 0, 2))
            (root / "test.bin").write_bytes(_cifar_records([0, 1, 2, 0, 1, 2], 200, 2))
            (root / "fine_label_names.txt").write_text("\n".join(f"class_{i}" for i in range(100)))
        return f"{kind}:{root}?val=6"
    if kind in ("coco", "flickr30k"):
        return _karpathy(root, kind)
    rows = []
    for i in range(20):
        _png(root / "images" / f"{i}.png", i)
        rows += [f"images/{i}.png,a picture of thing {i}", f"images/{i}.png,thing {i} again"]
    (root / "pairs.csv").write_text("image,caption\n" + "\n".join(rows) + "\n")
    return f"captions-csv:{root / 'pairs.csv'}"


KINDS = ("digits", "imagefolder", "cifar10", "cifar100", "coco", "flickr30k", "captions-csv")
EVERY_CONSUMER = ("cifar10",)  # also train, scan and search on this one


def _every_item(spec: str, split: str, log: ReadLog) -> set:
    """The source items of a whole split, by reading each of its images once."""
    data = load_dataset(spec, split)
    with log.reading_as(f"all {split}"):
        for i in range(len(data)):
            data.images[i]
    return log[f"all {split}"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_calibration_and_eval_never_read_a_test_item(kind, tmp_path, tiny_spec, read_log):
    spec = make_spec(kind, tmp_path / "data")
    directory = tmp_path / "session"
    plan = plan_to_dict(uniform_plan(sparsity=0.5, method="wanda"))
    with read_log.reading_as("eval"):  # load_model measures the root node on the eval split
        session = Session.create(directory, model=tiny_spec, data=spec, device="cpu")
    try:
        assert (session.eval_split, session.test_split) == ("val", "test")
        with read_log.reading_as("calibration"):
            x, k0 = session.workspace.calibration(per_class=2, seed=0)
            for images in (x.images, k0.images):
                for i in range(len(images)):
                    images[i]
        with read_log.reading_as("optimisation"):
            session.apply(O.SetPlan(plan=plan))
            session.apply(O.RunStage(stage="dare", calib_per_class=2))  # Wanda reads calibration, then eval
        if kind in EVERY_CONSUMER:
            with read_log.reading_as("optimisation"):
                session.apply(O.Train(steps=2, batch_size=4, eval_every=1))  # train split, best step on eval
                assert main(["analyze", "sensitivity", "--session", str(directory), "--tower", "text",
                             "--kind", "mlp_in", "--rank", "0.5", "--calib-per-class", "2",
                             "--out", str(tmp_path / "scan")]) == 0
                assert main(["search", str(directory), "--study", "roles", "--trials", "1", "--device", "cpu",
                             "--calib-per-class", "2", "--startup", "2"]) == 0
        with read_log.reading_as("test"):
            session.apply(O.Evaluate(split="test"))
    finally:
        session.close()

    train, val, test = (_every_item(spec, split, read_log) for split in ("train", "val", "test"))
    calibration, evaluated, optimised, reported = (read_log[r] for r in ("calibration", "eval", "optimisation",
                                                                         "test"))
    assert train and val and test and not (train & val or train & test or val & test)  # three disjoint splits
    assert calibration and calibration <= train
    assert evaluated == val  # load_model read the whole eval split and nothing else
    assert optimised and optimised <= train | val and optimised & val and optimised & train
    assert not (calibration | evaluated | optimised) & test, "calibration or eval read a test item"
    assert reported == test  # evaluate read every test item and nothing else
