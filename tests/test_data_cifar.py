"""CIFAR binary readers on synthetic batch files with known labels and pixels."""

import numpy as np
import pytest

from rcc.data.cifar import load_cifar
from rcc.errors import DataError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _records(labels, seed, label_prefix=()):
    """Bytes of len(labels) records plus their (N, 3, 32, 32) R/G/B planes."""
    rng = np.random.default_rng(seed)
    planes = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    rows = []
    for i, label in enumerate(labels):
        head = bytes([*(p[i] for p in label_prefix), label])
        rows.append(head + planes[i].tobytes())
    return b"".join(rows), planes


@pytest.fixture
def cifar10(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    pixels = {}
    for b in range(1, 6):
        data, pixels[b] = _records([b, (b + 3) % 10], seed=b)
        (folder / f"data_batch_{b}.bin").write_bytes(data)
    data, pixels["test"] = _records([9, 0, 7], seed=99)
    (folder / "test_batch.bin").write_bytes(data)
    # The official meta file ends with blank lines.
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n")
    return tmp_path, folder, pixels


def test_cifar10_test_split_round_trips_pixels_and_labels(cifar10):
    parent, _, pixels = cifar10
    data = load_cifar("cifar10", parent, "test")
    assert data.labels == (9, 0, 7)
    assert data.classnames == tuple(CIFAR10_NAMES)
    image = data.images[2]
    assert image.size == (32, 32) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), pixels["test"][2].transpose(1, 2, 0))
    # One exact pixel: row 5, column 17 of record 2, channel by channel from the R, G, B planes.
    planes = pixels["test"][2]
    assert image.getpixel((17, 5)) == (int(planes[0, 5, 17]), int(planes[1, 5, 17]), int(planes[2, 5, 17]))
    assert data.images[0].getpixel((0, 0)) == tuple(int(v) for v in pixels["test"][0][:, 0, 0])


def test_cifar10_train_concatenates_batches_in_order_and_val_is_held_out_of_it(cifar10):
    _, folder, pixels = cifar10
    batches = (1, 4, 2, 5, 3, 6, 4, 7, 5, 8)  # labels of the five batches, in order
    train = load_cifar("cifar10", folder, "train", val=3)  # the batches folder itself also works
    val = load_cifar("cifar10", folder, "val", val=3)
    # Views of the concatenated batches: val holds 3 records, train the other 7, never one twice.
    assert len(val) == 3 and len(train) == 7
    assert sorted(train.images.indices + val.images.indices) == list(range(10))
    assert train.labels == tuple(batches[i] for i in train.images.indices)
    assert val.labels == tuple(batches[i] for i in val.images.indices)
    # Record 7 is batch 4's second; wherever it landed, its pixels are that record's.
    part = train if 7 in train.images.indices else val
    k = part.images.indices.index(7)
    assert np.array_equal(np.asarray(part.images[k]), pixels[4][1].transpose(1, 2, 0))
    # A fraction works as well (0.1 of 10 → 1), and the draw is fixed by the seed.
    assert len(load_cifar("cifar10", folder, "val")) == 1
    assert load_cifar("cifar10", folder, "val", val=3, seed=0).labels == val.labels


def test_cifar100_uses_fine_labels_and_names(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    coarse = [3, 19]
    data, pixels = _records([42, 99], seed=5, label_prefix=(coarse,))
    (folder / "test.bin").write_bytes(data)
    (folder / "train.bin").write_bytes(_records([0, 7, 0, 7], seed=6, label_prefix=([0, 1, 0, 1],))[0])
    names = [f"class_{i}" for i in range(100)]
    names[42] = "maple_tree"
    (folder / "fine_label_names.txt").write_text("\n".join(names) + "\n")
    dataset = load_cifar("cifar100", tmp_path, "test")
    assert dataset.labels == (42, 99)
    assert dataset.classnames[42] == "maple tree" and len(dataset.classnames) == 100
    assert np.array_equal(np.asarray(dataset.images[1]), pixels[1].transpose(1, 2, 0))
    # val=2 of 4 train records, class-balanced: one of each fine label; train keeps the others.
    assert sorted(load_cifar("cifar100", folder, "val", val=2).labels) == [0, 7]
    assert sorted(load_cifar("cifar100", folder, "train", val=2).labels) == [0, 7]


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"cifar10 folder '.*/nowhere' does not exist"):
        load_cifar("cifar10", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"no cifar100 binary files in '.*'; expected cifar-100-binary/"):
        load_cifar("cifar100", tmp_path)


def test_missing_file_is_named(cifar10):
    parent, folder, _ = cifar10
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match=r"cifar10 file '.*data_batch_3\.bin' does not exist"):
        load_cifar("cifar10", parent, "train")
    (folder / "batches.meta.txt").unlink()
    with pytest.raises(DataError, match=r"cifar10 file '.*batches\.meta\.txt' does not exist"):
        load_cifar("cifar10", parent, "test")


def test_truncated_file_is_named(cifar10):
    parent, folder, _ = cifar10
    path = folder / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"cifar10 file '.*test_batch\.bin' has 9218 bytes, not a positive multiple of the 3073-byte record"):
        load_cifar("cifar10", parent, "test")


def test_label_out_of_range_and_wrong_names_count(cifar10):
    parent, folder, _ = cifar10
    (folder / "test_batch.bin").write_bytes(_records([3, 10], seed=1)[0])
    with pytest.raises(DataError, match=r"test_batch\.bin' record 1 has label 10; allowed: 0-9"):
        load_cifar("cifar10", parent, "test")
    (folder / "batches.meta.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError, match=r"batches\.meta\.txt' has 2 class names; expected 10"):
        load_cifar("cifar10", parent, "test")


def test_bad_split(cifar10):
    with pytest.raises(DataError, match=r"unknown split 'calib' for cifar10; allowed: train, val, test"):
        load_cifar("cifar10", cifar10[0], "calib")


def test_val_larger_than_train_is_refused_in_one_line(cifar10):
    with pytest.raises(DataError, match=r"^cifar10 '.*' has 10 train items: val=10 would hold out 10; "
                                        r"allowed: between 1 and 9 \(\?val=\)$"):
        load_cifar("cifar10", cifar10[0], "val", val=10)
