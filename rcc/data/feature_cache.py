"""On-disk cache of embeddings, keyed by what produced them.

A key hashes the tower's weights fingerprint, the data identity and the prompts, so a cached
entry can only be hit by the very same computation: re-evaluating an unchanged tower is free,
and any weight change (compression, training) misses.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def default_cache_dir() -> Path:
    return Path(os.environ.get("RCC_CACHE_DIR") or Path.home() / ".cache" / "rcc-tui" / "features")


def cache_key(**parts) -> str:
    """A stable hash of JSON-serialisable parts (model fingerprint, data identity, templates...)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=20).hexdigest()


class FeatureCache:
    """Embedding tensors stored as safetensors files named by their key."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            tensor = load_file(str(path))["features"]
        except Exception:  # a torn or foreign file is a miss, never an error
            self.misses += 1
            return None
        self.hits += 1
        return tensor

    def put(self, key: str, features: torch.Tensor) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"features": features.contiguous()}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
