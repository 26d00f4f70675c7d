"""The content-addressed tensor store: round trips, dedupe, hashes, corruption, crash leftovers."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file

from rcc.errors import RccError
from rcc.session.store import BlobError, TensorStore, tensor_hash


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "f64": torch.randn(4, generator=g, dtype=torch.float64),
        "f16": torch.randn(2, 3, generator=g).half(),
        "bf16": torch.randn(7, 3, generator=g).bfloat16(),
        "bool": torch.rand(5, 6, generator=g) > 0.5,
        "i64": torch.randint(-(2**40), 2**40, (6,), generator=g),
        "i32": torch.randint(-1000, 1000, (2, 2), generator=g, dtype=torch.int32),
        "i16": torch.randint(-1000, 1000, (3,), generator=g, dtype=torch.int16),
        "i8": torch.randint(-128, 127, (9,), generator=g, dtype=torch.int8),
        "u8": torch.randint(0, 255, (4, 1), generator=g, dtype=torch.uint8),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 4),
    }


@pytest.fixture
def store(tmp_path):
    return TensorStore(tmp_path / "store")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_put_and_get_round_trip_every_dtype_bit_for_bit(store):
    for name, tensor in _tensors().items():
        info = store.put(tensor)
        assert info.hash == tensor_hash(tensor)
        assert info.nbytes == tensor.numel() * tensor.element_size()
        assert store.has(info.hash)
        back = store.get(info.hash)
        assert _same(back, tensor), name
    assert store.get(tensor_hash(torch.tensor(3.25))).shape == ()


def test_written_blobs_are_valid_safetensors_files(store):
    for name, tensor in _tensors().items():
        path = store.path(store.put(tensor).hash)
        assert path.parent.name == path.stem[:2] and path.suffix == ".safetensors"
        loaded = load_file(str(path))
        assert list(loaded) == ["t"]
        assert _same(loaded["t"], tensor), name
        (length,) = struct.unpack("<Q", path.read_bytes()[:8])
        assert length % 8 == 0  # the data starts 8-byte aligned
        assert path.stat().st_size == 8 + length + tensor.numel() * tensor.element_size()


def test_equal_tensors_share_one_blob(store):
    a = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    first = store.put(a)
    second = store.put(a.clone())
    third = store.put(a.t().contiguous().t())  # same values, different memory layout
    assert first.hash == second.hash == third.hash
    assert store.all_hashes() == {first.hash}
    assert len(list(store.blobs.rglob("*.safetensors"))) == 1


def test_a_non_contiguous_tensor_hashes_and_stores_as_its_values(store):
    a = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    view = a.t()
    assert not view.is_contiguous()
    info = store.put(view)
    assert info.hash == tensor_hash(view.contiguous())
    assert _same(store.get(info.hash), view.contiguous())


def test_the_same_bytes_with_another_dtype_or_shape_hash_differently(store):
    values = torch.arange(6, dtype=torch.int32)
    as_float = values.view(torch.float32)  # identical bytes
    assert bytes(values.numpy().tobytes()) == bytes(as_float.numpy().tobytes())
    digests = {tensor_hash(values), tensor_hash(as_float), tensor_hash(values.reshape(2, 3)),
               tensor_hash(values.reshape(3, 2)), tensor_hash(values.reshape(6, 1))}
    assert len(digests) == 5
    scalar, vector = torch.tensor(1.5), torch.tensor([1.5])
    assert tensor_hash(scalar) != tensor_hash(vector)
    assert tensor_hash(torch.zeros(0, 3)) != tensor_hash(torch.zeros(3, 0))
    for t in (values, as_float, values.reshape(2, 3), scalar, vector):
        assert _same(store.get(store.put(t).hash), t)
    assert len(store.all_hashes()) == 5


def test_an_unsupported_dtype_is_refused_naming_it(store):
    with pytest.raises(RccError, match="complex64"):
        store.put(torch.zeros(2, dtype=torch.complex64))
    assert store.all_hashes() == set()


def _stored(store) -> tuple[str, bytes]:
    tensor = torch.linspace(-1, 1, 64).reshape(8, 8)
    digest = store.put(tensor).hash
    return digest, store.path(digest).read_bytes()


def test_a_flipped_byte_in_the_data_is_reported_naming_the_blob(store):
    digest, raw = _stored(store)
    corrupt = bytearray(raw)
    corrupt[-5] ^= 0x01  # one bit of one float
    store.path(digest).write_bytes(bytes(corrupt))
    with pytest.raises(BlobError) as info:
        store.get(digest)
    assert digest[:12] in str(info.value) and "corrupt" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_rewritten_header_is_reported(store):
    digest, raw = _stored(store)
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    header["t"]["shape"] = [4, 16]  # same bytes, other shape: not the tensor that was stored
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    store.path(digest).write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length:])
    with pytest.raises(BlobError, match=digest[:12]):
        store.get(digest)
    store.path(digest).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + raw[8 + length:])
    with pytest.raises(BlobError, match=f"{digest[:12]}.*corrupt"):
        store.get(digest)


def test_a_truncated_blob_is_reported_naming_the_blob(store):
    digest, raw = _stored(store)
    store.path(digest).write_bytes(raw[:-10])
    with pytest.raises(BlobError, match=f"{digest[:12]}.*truncated"):
        store.get(digest)
    store.path(digest).write_bytes(raw[:5])  # not even the header length
    with pytest.raises(BlobError, match=digest[:12]):
        store.get(digest)


def test_a_missing_blob_is_reported_naming_the_blob(store):
    digest, _ = _stored(store)
    store.path(digest).unlink()
    assert not store.has(digest)
    with pytest.raises(BlobError, match=f"{digest[:12]}.*missing"):
        store.get(digest)
    with pytest.raises(BlobError, match="0123456789ab"):
        store.get("0123456789ab" + "0" * 52)


def test_get_many_returns_every_blob_and_raises_on_a_bad_one(store):
    tensors = _tensors()
    digests = {name: store.put(t).hash for name, t in tensors.items()}
    got = store.get_many(list(digests.values()) + [digests["f32"]])  # duplicates are fine
    assert set(got) == set(digests.values())
    for name, digest in digests.items():
        assert _same(got[digest], tensors[name]), name
    assert store.get_many([]) == {}
    assert _same(store.get_many([digests["bool"]])[digests["bool"]], tensors["bool"])
    store.path(digests["bf16"]).write_bytes(store.path(digests["bf16"]).read_bytes()[:-1])
    with pytest.raises(BlobError, match=digests["bf16"][:12]):
        store.get_many(digests.values())


def test_clean_temporary_removes_part_files_only(store):
    digest, _ = _stored(store)
    leftovers = [store.tmp / f"{'a' * 64}.{i}.part" for i in range(3)]
    for path in leftovers:
        path.write_bytes(b"half a blob")
    keep = store.tmp / "notes.txt"
    keep.write_text("not ours")
    assert store.all_hashes() == {digest}  # a temporary file is never a blob
    store.clean_temporary()
    assert not any(path.exists() for path in leftovers)
    assert keep.exists()
    assert store.all_hashes() == {digest} and store.has(digest)


def test_writes_leave_no_temporary_files_and_remove_frees_bytes(store):
    digests = [store.put(t).hash for t in _tensors().values()]
    assert list(store.tmp.iterdir()) == []
    sizes = sum(store.size_of(d) for d in digests[:3])
    assert store.remove(digests[:3] + ["f" * 64]) == sizes
    assert store.all_hashes() == set(digests[3:])


def test_a_read_only_store_creates_nothing(tmp_path):
    TensorStore(tmp_path / "absent", read_only=True)
    assert not (tmp_path / "absent").exists()


def test_changing_a_tensor_read_from_the_store_changes_neither_the_blob_nor_later_reads(store):
    tensor = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    digest = store.put(tensor).hash
    raw = store.path(digest).read_bytes()
    got = store.get(digest)
    got.mul_(-1)  # e.g. a model layer that was loaded from the blob and then pruned in place
    assert store.path(digest).read_bytes() == raw
    assert _same(store.get(digest), tensor)


def test_a_tensor_read_from_the_store_survives_the_blob_being_removed(store):
    tensor = torch.arange(8, dtype=torch.int64)
    digest = store.put(tensor).hash
    got = store.get(digest)
    store.remove([digest])
    assert _same(got.clone(), tensor)
