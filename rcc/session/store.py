"""A content-addressed tensor store: each tensor saved once, as a safetensors blob named by its hash.

hash = sha256(dtype | shape | raw bytes), so equal tensors share one blob whatever node or
layer they belong to. Writes are crash-safe: temporary file → fsync → rename → fsync of the
directory; a reader never sees a half-written blob under its final name. Every read checks
the hash again, so a corrupt or truncated blob is reported, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from rcc.errors import RccError

# safetensors dtype names (the format's spec) ↔ torch dtypes.
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
READ_THREADS = 4  # sha256 and file reads release the GIL: overlap them across blobs


class BlobError(RccError):
    """A blob that is missing or whose content does not match its hash."""


@dataclass(frozen=True)
class BlobInfo:
    hash: str
    nbytes: int


def _raw(tensor: torch.Tensor) -> memoryview:
    data = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(data.view(torch.uint8).numpy()) if data.numel() else memoryview(b"")


def _header(tensor_dtype: torch.dtype, shape: Iterable[int]) -> bytes:
    if tensor_dtype not in NAMES:
        raise RccError(f"tensor dtype {tensor_dtype} cannot be stored; allowed: {', '.join(map(str, NAMES))}")
    return f"{NAMES[tensor_dtype]}|{','.join(map(str, shape))}|".encode()


def tensor_hash(tensor: torch.Tensor) -> str:
    """sha256 over dtype, shape and raw bytes: the tensor's name in the store."""
    digest = hashlib.sha256(_header(tensor.dtype, tensor.shape))
    digest.update(_raw(tensor))
    return digest.hexdigest()


class TensorStore:
    """Blobs under ``root/blobs/ab/<hash>.safetensors``; temporary files under ``root/tmp``."""

    def __init__(self, root: str | Path, read_only: bool = False):
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        if not read_only:
            self.blobs.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.blobs / digest[:2] / f"{digest}.safetensors"

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put(self, tensor: torch.Tensor, digest: str | None = None) -> BlobInfo:
        """Store ``tensor`` unless an equal one is stored already; returns its hash."""
        digest = digest or tensor_hash(tensor)
        data = _raw(tensor)
        if not self.has(digest):
            self._write(digest, tensor.dtype, tuple(tensor.shape), data)
        return BlobInfo(digest, data.nbytes)

    def _write(self, digest: str, dtype: torch.dtype, shape: tuple[int, ...], data: memoryview) -> None:
        meta = {"t": {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [0, data.nbytes]}}
        header = json.dumps(meta, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)  # safetensors aligns the data to 8 bytes
        temporary = self.tmp / f"{digest}.{uuid.uuid4().hex}.part"
        with open(temporary, "wb") as out:
            out.write(struct.pack("<Q", len(header)))
            out.write(header)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        target = self.path(digest)
        target.parent.mkdir(exist_ok=True)
        os.replace(temporary, target)
        _fsync_dir(target.parent)

    def get(self, digest: str) -> torch.Tensor:
        """The stored tensor, after checking its content against its hash.

        The tensor is backed by a private (copy-on-write) memory map of the blob: checking
        the hash reads the page cache once, and copying into a model reads it once more,
        with no intermediate buffer.
        """
        path = self.path(digest)
        try:
            with open(path, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                mapped = mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_COPY) if size else b""
        except FileNotFoundError as exc:
            raise BlobError(f"blob {digest[:12]} is missing from {str(self.blobs)!r}") from exc
        try:
            (length,) = struct.unpack("<Q", mapped[:8])
            meta = json.loads(mapped[8:8 + length])["t"]
            start, stop = (8 + length + offset for offset in meta["data_offsets"])
            dtype, shape = DTYPES.get(meta["dtype"]), tuple(meta["shape"])
        except (struct.error, ValueError, KeyError, TypeError) as exc:
            raise BlobError(f"blob {digest[:12]} is corrupt (unreadable header)") from exc
        if dtype is None:
            raise BlobError(f"blob {digest[:12]} is corrupt (dtype {meta.get('dtype')!r})")
        if stop > size or stop < start:
            raise BlobError(f"blob {digest[:12]} is truncated")
        found = hashlib.sha256(_header(dtype, shape))
        with memoryview(mapped) as view:
            found.update(view[start:stop])
        if found.hexdigest() != digest:
            raise BlobError(f"blob {digest[:12]} is corrupt (its content does not match its hash)")
        if stop == start:
            return torch.empty(shape, dtype=dtype)
        count = (stop - start) // torch.empty((), dtype=dtype).element_size()
        return torch.frombuffer(mapped, dtype=dtype, count=count, offset=start).reshape(shape)

    def get_many(self, digests: Iterable[str]) -> dict[str, torch.Tensor]:
        """Several blobs, read and checked in parallel threads; raises on the first bad one."""
        unique = list(dict.fromkeys(digests))
        if len(unique) <= 1:
            return {d: self.get(d) for d in unique}
        return dict(zip(unique, _pool().map(self.get, unique)))

    def all_hashes(self) -> set[str]:
        return {p.stem for p in self.blobs.glob("*/*.safetensors")}

    def size_of(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def remove(self, digests: Iterable[str]) -> int:
        """Delete blobs (garbage collection decides which); returns the bytes freed."""
        freed = 0
        for digest in digests:
            path = self.path(digest)
            try:
                freed += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                pass
        return freed

    def clean_temporary(self) -> None:
        """Remove leftovers of writes a crash interrupted (they never got their final name)."""
        for leftover in self.tmp.glob("*.part"):
            leftover.unlink(missing_ok=True)


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    # One long-lived pool: starting threads per checkout costs more than small reads do.
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="rcc-store")
    return _POOL


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
