"""How faithfully a compressed model reproduces the dense model's embeddings."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class FidelityResult:
    mean_cosine: float  # mean_i cos(e_i, ê_i)
    knn_overlap: float  # mean_i |N_k(i) ∩ N̂_k(i)| / k
    k: int
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def embedding_fidelity(reference: torch.Tensor, candidate: torch.Tensor, k: int = 10) -> FidelityResult:
    """Cosine of each candidate embedding to its reference, and top-k neighbour overlap.

    N_k(i) are the k nearest other items of item i by cosine similarity (itself excluded),
    under the reference and under the candidate embeddings.
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"embedding shapes differ: {tuple(reference.shape)} vs {tuple(candidate.shape)}")
    n = reference.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k={k} is out of range; allowed: 1 ≤ k < {n} (the number of items)")
    ref = F.normalize(reference.double(), dim=-1)
    cand = F.normalize(candidate.double(), dim=-1)
    cosine = (ref * cand).sum(dim=-1).mean().item()
    overlap = 0.0
    neighbours = []
    for emb in (ref, cand):
        sims = emb @ emb.t()
        sims.fill_diagonal_(float("-inf"))
        neighbours.append(sims.topk(k, dim=1).indices)
    for a, b in zip(*neighbours):
        overlap += len(set(a.tolist()) & set(b.tolist())) / k
    return FidelityResult(mean_cosine=cosine, knn_overlap=overlap / n, k=k, n=n)
