"""A model's state as store blobs: capture it into a manifest, restore it from one.

Capture hashes every state-dict tensor and stores the ones the store lacks, so a node that
changed one layer writes one layer. Restore (checkout) loads only the tensors whose hash
differs from the current state, plus those of modules whose compressed structure differs
(rebuilt by ``restructure``); every blob is read and checked *before* the model is touched,
so a corrupt blob leaves the model as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from rcc.compression.restructure import restructure
from rcc.compression.structure import structure_of
from rcc.errors import RccError
from rcc.session.store import BlobError, TensorStore, tensor_hash


@dataclass(frozen=True)
class Captured:
    structure: dict
    tensors: dict[str, tuple[str, int]]  # name → (hash, bytes)
    written: int  # bytes of new blobs


class RestoreError(RccError):
    """A node whose tensors cannot be loaded (missing or corrupt blob)."""


def capture(module: nn.Module, store: TensorStore) -> Captured:
    """Hash every tensor of ``module``'s state dict and store the new ones."""
    tensors: dict[str, tuple[str, int]] = {}
    written = 0
    for name, tensor in module.state_dict().items():
        digest = tensor_hash(tensor)
        if not store.has(digest):
            written += store.put(tensor, digest).nbytes
        tensors[name] = (digest, tensor.numel() * tensor.element_size())
    return Captured(structure_of(module), tensors, written)


def manifest_of(module: nn.Module) -> tuple[dict, dict[str, str]]:
    """(structure, name → hash) of the module as it is, storing nothing."""
    return structure_of(module), {name: tensor_hash(t) for name, t in module.state_dict().items()}


def _structure_prefixes(current: dict, target: dict) -> tuple[set[str], set[str]]:
    """Module paths whose structure differs (their keys reload) and mask entries that differ."""
    prefixes = set(current.get("split", [])) ^ set(target.get("split", []))
    now, then = current.get("factorised", {}), target.get("factorised", {})
    prefixes |= {p for p in set(now) | set(then) if now.get(p) != then.get(p)}
    now, then = current.get("quantized", {}), target.get("quantized", {})
    prefixes |= {p for p in set(now) | set(then) if now.get(p) != then.get(p)}
    masks = set(current.get("masks", {})) ^ set(target.get("masks", {}))
    return {p + "." for p in prefixes}, masks | {masked_name(name) for name in masks}


def masked_name(mask: str) -> str:
    """``a.b.weight_mask`` → ``a.b.weight``; ``proj_mask`` → ``proj``."""
    holder, _, buffer = mask.rpartition(".")
    leaf = "weight" if buffer == "weight_mask" else buffer[: -len("_mask")]
    return f"{holder}.{leaf}" if holder else leaf


def restore(module: nn.Module, current: Mapping[str, str], current_structure: dict,
            target: Mapping[str, str], target_structure: dict, store: TensorStore, node: int) -> int:
    """Make ``module`` (now ``current``: name → hash) equal node ``node``'s state; returns bytes loaded."""
    prefixes, mask_keys = ((set(), set()) if current_structure == target_structure
                           else _structure_prefixes(current_structure, target_structure))
    wanted = {name for name, digest in target.items()
              if current.get(name) != digest or name in mask_keys or any(name.startswith(p) for p in prefixes)}
    names_by_hash: dict[str, list[str]] = {}
    for name in wanted:
        names_by_hash.setdefault(target[name], []).append(name)
    try:
        blobs = store.get_many(names_by_hash)
    except BlobError as exc:
        digest = next((d for d in names_by_hash if d[:12] in str(exc)), "")
        tensor = names_by_hash.get(digest, ["?"])[0]
        raise RestoreError(f"node {node}: tensor {tensor!r}: {exc}") from exc
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
