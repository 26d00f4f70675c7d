"""A content-addressed tensor store: each tensor saved once, as a safetensors blob named by its hash.

hash = sha256(dtype | shape | raw bytes), so equal tensors share one blob whatever node or
layer they belong to. Writes are crash-safe: temporary file → fsync → rename → fsync of the
directory; a reader never sees a half-written blob under its final name. A blob is never
changed in place (a rewrite is a new file renamed over the old name).

Integrity: a read checks the blob's hash unless the blob was verified since it last changed:
the store remembers, per blob, the file's (inode, size, mtime, ctime) when its content last
hashed right (``verified.json``, kept by the session's writer). Any write to the file changes
its ctime, which no program can set back, so a flipped byte is always caught; a signature
recorded within ``RACY_SECONDS`` of the file's last change is not trusted (file times are
coarser than the clock, as git's "racily clean" index entries are).

Sharing: with a ``shared`` store (the data home's, rcc.session.home), every blob is also a
hard link in it. A blob the shared store has is linked in instead of written (after its
content is checked), so sessions of one base model store its tensors once; the kernel's
link count is the blob's reference count, so deleting a session or collecting its garbage
never removes a blob another session links, and the shared store drops a blob only when no
session links it any more (``collect_shared``). Where a link cannot be made (another file
system), the blob is written as before: a session directory always holds all its blobs.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import time
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
RACY_SECONDS = 2.0  # file times tick coarser than the clock: a change this recent may not show in them
VERIFIED_FILE = "verified.json"


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


Signature = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


def _signature(stat: os.stat_result) -> Signature:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class TensorStore:
    """Blobs under ``root/blobs/ab/<hash>.safetensors``; temporary files under ``root/tmp``."""

    def __init__(self, root: str | Path, read_only: bool = False, shared: str | Path | None = None):
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.read_only = read_only
        self.shared = None
        self._verified: dict[str, tuple[Signature, float]] = {}  # hash → (signature, when it hashed right)
        self._verified_changed = False
        if not read_only:
            self.blobs.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir(parents=True, exist_ok=True)
            if shared is not None and Path(shared).resolve() != self.root.resolve():
                try:
                    self.shared = TensorStore(shared)
                except OSError:  # an unwritable data home: this session stores its own blobs
                    self.shared = None
        self._load_verified()

    def path(self, digest: str) -> Path:
        return self.blobs / digest[:2] / f"{digest}.safetensors"

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    # -- writing ---------------------------------------------------------------------------
    def put(self, tensor: torch.Tensor, digest: str | None = None) -> BlobInfo:
        """Store ``tensor`` unless an equal one is stored already; returns its hash.

        From the shared store when it has the blob (a link, after checking its content), else
        written here and linked into the shared store.
        """
        digest = digest or tensor_hash(tensor)
        data = _raw(tensor)
        if not self.has(digest):
            linked = self._link_from_shared(digest)
            if not linked:
                self._write(digest, tensor.dtype, tuple(tensor.shape), data)
                self._share(digest, replace=linked is False)  # False: the shared copy was corrupt
        return BlobInfo(digest, data.nbytes)

    def ensure(self, tensor: torch.Tensor, digest: str) -> bool:
        """Make sure the stored blob ``digest`` holds ``tensor`` (whose hash it is); True if it was rewritten.

        A blob a new node refers to is checked (unless verified since it last changed): a
        corrupt one is rewritten from ``tensor``, so no new node ever points at bad bytes.
        """
        if not self.has(digest):
            self.put(tensor, digest)
            return False
        try:
            self.verify(digest)
            return False
        except BlobError:
            self._write(digest, tensor.dtype, tuple(tensor.shape), _raw(tensor))
            self._share(digest, replace=True)
            return True

    def _link_from_shared(self, digest: str) -> bool | None:
        """Link the shared store's blob in: True if done, None if it has none, False if it cannot be used."""
        if self.shared is None or not self.shared.has(digest):
            return None
        try:
            self.shared.verify(digest)
        except BlobError:
            return False  # written here instead, then linked over the shared one (``_share``)
        except OSError:  # unreadable shared store: write it here
            return None
        target = self.path(digest)
        target.parent.mkdir(exist_ok=True)
        try:
            os.link(self.shared.path(digest), target)
        except FileExistsError:
            return True
        except OSError:  # another file system, a collected blob, links not allowed: write it
            return False
        fsync_dir(target.parent)
        self._remember(digest, _signature(target.stat()))  # its content hashed right just above
        return True

    def _share(self, digest: str, replace: bool = False) -> None:
        """Link a blob of this store into the shared store (if any; best effort)."""
        if self.shared is None:
            return
        source, target = self.path(digest), self.shared.path(digest)
        if target.exists() and not replace:
            return
        try:
            target.parent.mkdir(exist_ok=True)
            temporary = self.shared.tmp / f"{digest}.{uuid.uuid4().hex}.link"
            os.link(source, temporary)
            os.replace(temporary, target)
            fsync_dir(target.parent)
        except OSError:  # another file system, no permission, no space: sharing is only a saving
            return

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
            written = _signature(os.fstat(out.fileno()))
        target = self.path(digest)
        target.parent.mkdir(exist_ok=True)
        os.replace(temporary, target)
        fsync_dir(target.parent)
        self._remember(digest, written)  # its bytes came from the tensor that has this hash

    # -- reading and checking --------------------------------------------------------------
    def get(self, digest: str) -> torch.Tensor:
        """The stored tensor, after checking its content against its hash (unless verified since it changed).

        The tensor is backed by a private (copy-on-write) memory map of the blob: checking
        the hash reads the page cache once, and copying into a model reads it once more,
        with no intermediate buffer.
        """
        mapped, size, signature = self._map(digest)
        dtype, shape, start, stop = self._layout(digest, mapped, size)
        if not self._trusted(digest, signature):
            self._check(digest, mapped, dtype, shape, start, stop, signature)
        if stop == start:
            return torch.empty(shape, dtype=dtype)
        count = (stop - start) // torch.empty((), dtype=dtype).element_size()
        return torch.frombuffer(mapped, dtype=dtype, count=count, offset=start).reshape(shape)

    def verify(self, digest: str, force: bool = False) -> None:
        """Raise ``BlobError`` unless the blob's content matches its hash (``force``: hash it even if trusted)."""
        mapped, size, signature = self._map(digest)
        dtype, shape, start, stop = self._layout(digest, mapped, size)
        if force or not self._trusted(digest, signature):
            self._check(digest, mapped, dtype, shape, start, stop, signature)

    def _map(self, digest: str):
        path = self.path(digest)
        try:
            with open(path, "rb") as source:
                stat = os.fstat(source.fileno())
                mapped = mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_COPY) if stat.st_size else b""
        except FileNotFoundError as exc:
            raise BlobError(f"blob {digest[:12]} is missing from {str(self.blobs)!r}") from exc
        return mapped, stat.st_size, _signature(stat)

    @staticmethod
    def _layout(digest: str, mapped, size: int):
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
        return dtype, shape, start, stop

    def _check(self, digest: str, mapped, dtype, shape, start: int, stop: int, signature: Signature) -> None:
        found = hashlib.sha256(_header(dtype, shape))
        with memoryview(mapped) as view:
            found.update(view[start:stop])
        if found.hexdigest() != digest:
            self._verified.pop(digest, None)
            raise BlobError(f"blob {digest[:12]} is corrupt (its content does not match its hash)")
        self._remember(digest, signature)

    def _remember(self, digest: str, signature: Signature) -> None:
        self._verified[digest] = (signature, time.time())
        self._verified_changed = True

    def _trusted(self, digest: str, signature: Signature) -> bool:
        known = self._verified.get(digest)
        if known is None or known[0] != signature:
            return False
        changed = max(signature[2], signature[3]) / 1e9
        return known[1] - changed > RACY_SECONDS  # verified well after its last change

    def _load_verified(self) -> None:
        try:
            data = json.loads((self.root / VERIFIED_FILE).read_text())
            self._verified = {digest: (tuple(entry[0]), float(entry[1])) for digest, entry in data.items()
                              if isinstance(entry, list) and len(entry) == 2 and len(entry[0]) == 4}
        except (OSError, ValueError, TypeError, AttributeError):
            self._verified = {}  # only a cache: a missing or broken one means hashing again

    def save_verified(self) -> None:
        """Keep the verification records for the next opening (the session's writer calls this)."""
        if self.read_only or not self._verified_changed:
            return
        temporary = self.tmp / f"{VERIFIED_FILE}.{uuid.uuid4().hex}.part"
        try:
            temporary.write_text(json.dumps({d: [list(sig), when] for d, (sig, when) in self._verified.items()}))
            os.replace(temporary, self.root / VERIFIED_FILE)
            self._verified_changed = False
        except OSError:
            temporary.unlink(missing_ok=True)

    def get_many(self, digests: Iterable[str]) -> dict[str, torch.Tensor]:
        """Several blobs, read and checked in parallel threads; raises on the first bad one."""
        unique = list(dict.fromkeys(digests))
        if len(unique) <= 1:
            return {d: self.get(d) for d in unique}
        return dict(zip(unique, _pool().map(self.get, unique)))

    def verify_all(self, digests: Iterable[str]) -> dict[str, str]:
        """Hash every given blob (trusted or not); returns hash → what is wrong, for the bad ones."""
        def check(digest: str) -> tuple[str, str | None]:
            try:
                self.verify(digest, force=True)
                return digest, None
            except BlobError as exc:
                return digest, str(exc)

        return {digest: problem for digest, problem in _pool().map(check, list(dict.fromkeys(digests)))
                if problem is not None}

    # -- housekeeping ----------------------------------------------------------------------
    def all_hashes(self) -> set[str]:
        return {p.stem for p in self.blobs.glob("*/*.safetensors")}

    def size_of(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def remove(self, digests: Iterable[str]) -> int:
        """Delete blobs (garbage collection decides which); returns the bytes freed.

        Bytes are counted as freed only where this was the blob's last link (a blob the
        shared store or another session links stays on disk for them).
        """
        freed = 0
        for digest in digests:
            path = self.path(digest)
            try:
                stat = path.stat()
                path.unlink()
            except FileNotFoundError:
                continue
            self._verified.pop(digest, None)
            self._verified_changed = True
            freed += stat.st_size if stat.st_nlink <= 1 else 0
        return freed

    def collect_shared(self) -> tuple[int, int]:
        """In a shared store: delete blobs no session links any more (link count 1); returns (blobs, bytes)."""
        removed = freed = 0
        for path in self.blobs.glob("*/*.safetensors"):
            try:
                stat = path.stat()
                if stat.st_nlink == 1:
                    path.unlink()
                    removed, freed = removed + 1, freed + stat.st_size
            except FileNotFoundError:
                continue
        return removed, freed

    def clean_temporary(self) -> None:
        """Remove leftovers of writes a crash interrupted (they never got their final name)."""
        for pattern in ("*.part", "*.link"):
            for leftover in self.tmp.glob(pattern):
                leftover.unlink(missing_ok=True)


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    # One long-lived pool: starting threads per checkout costs more than small reads do.
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="rcc-store")
    return _POOL


def fsync_dir(directory: Path) -> None:
    """Make a rename or link in ``directory`` durable (the directory entry, not only the file)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
