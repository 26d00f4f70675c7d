"""A model's state as store blobs: capture it into a manifest, restore it from one.

Capture hashes every state-dict tensor and stores the ones the store lacks, so a node that
changed one layer writes one layer. Restore (checkout) loads only the tensors whose hash
differs from the current state, plus those of modules whose compressed structure differs
(rebuilt by ``restructure``); every blob is read and checked *before* the model is touched,
so a corrupt blob leaves the model as it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from rcc.compression.layers import masked_name
from rcc.compression.restructure import restructure
from rcc.compression.structure import structure_of
from rcc.errors import RccError
from rcc.session.store import BlobError, TensorStore, tensor_hash


@dataclass(frozen=True)
class Captured:
    structure: dict
    tensors: dict[str, tuple[str, int]]  # name → (hash, bytes)
    written: int  # bytes of new blobs
    healed: tuple[str, ...] = ()  # names whose existing blob was corrupt and was rewritten from the model


class RestoreError(RccError):
    """A node whose tensors cannot be loaded (missing or corrupt blob)."""

    def __init__(self, message: str, digest: str | None = None):
        super().__init__(message)
        self.digest = digest


def capture(module: nn.Module, store: TensorStore, progress: Callable[[int, int], None] | None = None) -> Captured:
    """Hash every tensor of ``module``'s state dict and store the new ones; ``progress(done, total)`` per tensor.

    A blob the store has already is checked (unless verified since it last changed): a
    corrupt one, e.g. a tensor the root shares with later nodes, is rewritten from the
    model's tensor, whose hash it is, so the new node never points at bad bytes.
    """
    tensors: dict[str, tuple[str, int]] = {}
    written = 0
    healed = []
    state = module.state_dict()
    if progress:
        progress(0, len(state))
    for done, (name, tensor) in enumerate(state.items(), start=1):
        digest = tensor_hash(tensor)
        if not store.has(digest):
            written += store.put(tensor, digest).nbytes
        elif store.ensure(tensor, digest):
            healed.append(name)
        tensors[name] = (digest, tensor.numel() * tensor.element_size())
        if progress:
            progress(done, len(state))
    return Captured(structure_of(module), tensors, written, tuple(healed))


def same_state(captured: Captured, structure: dict, tensors: Mapping[str, str]) -> bool:
    """Whether ``captured`` holds exactly the tensors (by hash) and structure of a stored node."""
    hashes = {name: digest for name, (digest, _) in captured.tensors.items()}
    return hashes == dict(tensors) and json.loads(json.dumps(captured.structure)) == structure


def manifest_of(module: nn.Module) -> tuple[dict, dict[str, str]]:
    """(structure, name → hash) of the module as it is, storing nothing."""
    return structure_of(module), {name: tensor_hash(t) for name, t in module.state_dict().items()}


def _structure_prefixes(current: dict, target: dict) -> tuple[set[str], set[str]]:
    """Module paths whose structure differs (their keys reload) and mask entries that differ."""
    prefixes = set(current.get("split", [])) ^ set(target.get("split", []))
    for key in ("factorised", "resized", "quantized"):  # a rank, narrowed shape or int8 form differs: reload
        now, then = current.get(key, {}), target.get(key, {})
        prefixes |= {p for p in set(now) | set(then) if now.get(p) != then.get(p)}
    masks = set(current.get("masks", {})) ^ set(target.get("masks", {}))
    return {p + "." for p in prefixes}, masks | {masked_name(name) for name in masks}


def restore(module: nn.Module, current: Mapping[str, str], current_structure: dict,
            target: Mapping[str, str], target_structure: dict, store: TensorStore, node: int,
            progress: Callable[[int, int], None] | None = None) -> int:
    """Make ``module`` (now ``current``: name → hash) equal node ``node``'s state; returns bytes loaded.

    ``progress(done, total)`` counts the blobs read and checked (in chunks, so it moves on a big model).
    """
    prefixes, mask_keys = ((set(), set()) if current_structure == target_structure
                           else _structure_prefixes(current_structure, target_structure))
    wanted = {name for name, digest in target.items()
              if current.get(name) != digest or name in mask_keys or any(name.startswith(p) for p in prefixes)}
    names_by_hash: dict[str, list[str]] = {}
    for name in wanted:
        names_by_hash.setdefault(target[name], []).append(name)
    try:
        blobs = _read_blobs(store, list(names_by_hash), progress)
    except BlobError as exc:
        digest = next((d for d in names_by_hash if d[:12] in str(exc)), "")
        tensor = names_by_hash.get(digest, ["?"])[0]
        raise RestoreError(f"node {node}: tensor {tensor!r}: {exc}", digest or None) from exc
    if current_structure != target_structure:
        invalid = restructure(module, current_structure, target_structure)
        missing = sorted(set(invalid) - wanted)
        if missing:  # restructure rebuilt more than we planned for: fetch those too
            extra = store.get_many(target[name] for name in missing)
            blobs.update(extra)
            for name in missing:
                names_by_hash.setdefault(target[name], []).append(name)
    state = module.state_dict()
    if set(state) != set(target):
        odd = sorted(set(state) ^ set(target))[0]
        raise RestoreError(f"node {node}: the model's tensors do not match the node's (first: {odd!r})")
    loaded = 0
    with torch.no_grad():
        for digest, names in names_by_hash.items():
            for name in names:
                state[name].copy_(blobs[digest])
                loaded += blobs[digest].numel() * blobs[digest].element_size()
    return loaded


READ_CHUNK = 16  # blobs read (in parallel) between two progress reports


def _read_blobs(store: TensorStore, digests: list[str], progress: Callable[[int, int], None] | None) -> dict:
    if progress is None:
        return store.get_many(digests)
    blobs: dict = {}
    progress(0, len(digests))
    for start in range(0, len(digests), READ_CHUNK):
        blobs.update(store.get_many(digests[start:start + READ_CHUNK]))
        progress(min(start + READ_CHUNK, len(digests)), len(digests))
    return blobs
