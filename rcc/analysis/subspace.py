"""How far compression turned each layer's dominant subspaces: principal angles and Grassmann distance.

For subspaces spanned by A (n × p) and B (n × q), q ≤ p, with orthonormal bases Q_A, Q_B:
  cos θ_i = σ_i(Q_Aᵀ Q_B)        sin θ_i = σ_i(Q_B − Q_A Q_Aᵀ Q_B)
(Björck & Golub; small angles are taken from the sines and large ones from the cosines,
where each is accurate — Knyazev & Argentati), 0 ≤ θ_1 ≤ … ≤ θ_q ≤ π/2, and the Grassmann
(arc-length) distance is d = ‖θ‖₂ = √(Σ θ_i²), between 0 and (π/2)·√q.

Per layer, the top-k left (U_k, output side) and right (V_k, input side) singular subspaces of
the dense weight W and the compressed W' are compared. k is the compressed layer's rank when it
is factorised (the subspace it keeps), else ⌈min(m, n)/4⌉; an explicit k is capped at both ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from rcc.analysis.errors import AnalysisError
from rcc.compression.layers import LowRankLinear, dense_weight, layer_module
from rcc.models.adapter import VLModel

DEFAULT_K_FRACTION = 4  # k = ⌈min(m, n) / 4⌉ for layers that are not factorised


def orthonormal_basis(a: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """An orthonormal basis (float64) of the column space of ``a``: the left singular vectors above tolerance."""
    if a.ndim != 2:
        raise AnalysisError(f"a subspace needs a matrix (n × p), got shape {tuple(a.shape)}")
    u, s, _ = torch.linalg.svd(a.detach().double(), full_matrices=False)
    if s.numel() == 0 or s[0] == 0:
        return u[:, :0]
    tol = (rtol if rtol is not None else max(a.shape) * torch.finfo(torch.float64).eps) * s[0]
    return u[:, : int((s > tol).sum())]


def principal_angles(a: torch.Tensor, b: torch.Tensor, orthonormal: bool = False) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spaces of ``a`` and ``b``; min(p, q) of them."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise AnalysisError(f"subspaces must live in the same space: shapes {tuple(a.shape)} and {tuple(b.shape)}; "
                            f"allowed: two matrices with the same number of rows")
    qa = a.detach().double() if orthonormal else orthonormal_basis(a)
    qb = b.detach().double() if orthonormal else orthonormal_basis(b)
    if qa.shape[1] < qb.shape[1]:
        qa, qb = qb, qa
    if qb.shape[1] == 0:
        return torch.zeros(0, dtype=torch.float64)
    cross = qa.T @ qb
    cosines = torch.linalg.svdvals(cross).clamp(0.0, 1.0)  # descending ↔ angles ascending
    sines = torch.linalg.svdvals(qb - qa @ cross).clamp(0.0, 1.0).flip(0)  # ascending ↔ angles ascending
    return torch.where(cosines.square() >= 0.5, torch.arcsin(sines), torch.arccos(cosines))


def grassmann_distance(a: torch.Tensor, b: torch.Tensor, orthonormal: bool = False) -> float:
    """d(A, B) = ‖θ‖₂ over the principal angles θ between the column spaces."""
    return float(torch.linalg.vector_norm(principal_angles(a, b, orthonormal)))


def _numerical_rank(s: torch.Tensor, shape: tuple[int, int]) -> int:
    """Singular values above max(m, n) · eps · σ_1 (numpy's matrix_rank tolerance)."""
    if s.numel() == 0 or s[0] == 0:
        return 0
    return int((s > max(shape) * torch.finfo(torch.float64).eps * s[0]).sum())


@dataclass(frozen=True)
class LayerSubspace:
    """Principal angles of one layer's top-k left and right singular subspaces, dense vs compressed."""

    name: str
    tower: str
    block: int | None
    kind: str
    k: int
    left_angles: tuple[float, ...]
    right_angles: tuple[float, ...]
    left_distance: float
    right_distance: float

    @property
    def normalised(self) -> float:
        """max(left, right) distance ÷ its largest possible value (π/2)·√k: 0 same, 1 orthogonal."""
        return max(self.left_distance, self.right_distance) / (math.pi / 2 * math.sqrt(self.k))


@dataclass(frozen=True)
class SubspaceSummary:
    """Distances over the changed layers of one group (a tower, or one block of a tower)."""

    group: str
    layers: int
    mean_left: float
    mean_right: float
    max_distance: float
    mean_normalised: float


@dataclass(frozen=True)
class SubspaceResult:
    layers: tuple[LayerSubspace, ...]
    towers: tuple[SubspaceSummary, ...]
    blocks: tuple[SubspaceSummary, ...]
    unchanged: int  # layers whose weights are identical (distance 0, no SVD taken)
    # Layers structured pruning narrowed: their subspaces live in spaces of other sizes, not compared.
    narrowed: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"layers": [{**asdict(layer), "normalised": layer.normalised} for layer in self.layers],
                "towers": [asdict(s) for s in self.towers], "blocks": [asdict(s) for s in self.blocks],
                "unchanged": self.unchanged, "narrowed": list(self.narrowed)}


def subspace_from_dict(data: dict) -> SubspaceResult:
    """Read back ``SubspaceResult.as_dict()``; anything malformed raises AnalysisError."""
    try:
        layers = tuple(LayerSubspace(**{**{k: v for k, v in layer.items() if k != "normalised"},
                                        "left_angles": tuple(layer["left_angles"]),
                                        "right_angles": tuple(layer["right_angles"])}) for layer in data["layers"])
        return SubspaceResult(layers, tuple(SubspaceSummary(**t) for t in data["towers"]),
                              tuple(SubspaceSummary(**b) for b in data["blocks"]), int(data["unchanged"]),
                              tuple(data.get("narrowed", ())))
    except (KeyError, TypeError, ValueError) as error:
        raise AnalysisError(f"subspace data is malformed ({type(error).__name__}: {error})") from None


def default_k(module, layer) -> int:
    """The compressed layer's rank when factorised, else ⌈min(m, n)/4⌉."""
    child = layer_module(module, layer)
    if isinstance(child, LowRankLinear):
        return child.rank
    return max(1, math.ceil(min(layer.shape) / DEFAULT_K_FRACTION))


def layer_subspace(dense: torch.Tensor, compressed: torch.Tensor, k: int, name: str = "", tower: str = "",
                   block: int | None = None, kind: str = "") -> LayerSubspace:
    """Angles between the top-k singular subspaces of ``dense`` and ``compressed`` (k capped at both ranks)."""
    if dense.shape != compressed.shape:
        raise AnalysisError(f"layer {name!r}: shapes differ ({tuple(dense.shape)} vs {tuple(compressed.shape)})")
    (u1, s1, vh1), (u2, s2, vh2) = (torch.linalg.svd(w.detach().double(), full_matrices=False)
                                    for w in (dense, compressed))
    rank = min(_numerical_rank(s1, tuple(dense.shape)), _numerical_rank(s2, tuple(dense.shape)))
    k = max(1, min(k, rank, min(dense.shape)))
    u1, v1, u2, v2 = u1[:, :k], vh1[:k].T, u2[:, :k], vh2[:k].T
    left, right = principal_angles(u1, u2, orthonormal=True), principal_angles(v1, v2, orthonormal=True)
    return LayerSubspace(name, tower, block, kind, k, tuple(left.tolist()), tuple(right.tolist()),
                         float(torch.linalg.vector_norm(left)), float(torch.linalg.vector_norm(right)))


def compare_subspaces(dense: VLModel, compressed: VLModel, k: int | None = None,
                      layers: Sequence[str] | None = None) -> SubspaceResult:
    """Per layer and per tower / block: how far the compressed model's weights turned from the dense ones."""
    if k is not None and k < 1:
        raise AnalysisError(f"k {k} is invalid; allowed: an integer ≥ 1, or none for the default")
    dense_index, index = dense.layer_index, compressed.layer_index
    names = list(layers) if layers is not None else [name for name in index if name in dense_index]
    missing = [name for name in names if name not in index or name not in dense_index]
    if missing:
        raise AnalysisError(f"layer {missing[0]!r} is not in both models; allowed: a layer both inventories list")
    results, unchanged, narrowed = [], 0, []
    for name in names:
        layer = index[name]
        w, w2 = dense_weight(dense.module, dense_index[name]), dense_weight(compressed.module, layer)
        if w.shape != w2.shape:
            narrowed.append(name)
            continue
        if torch.equal(w.detach(), w2.detach().to(w.dtype)):
            unchanged += 1
            continue
        results.append(layer_subspace(w, w2, k or default_k(compressed.module, layer), name, layer.tower,
                                      layer.block, layer.kind))
    return SubspaceResult(tuple(results), summarise(results, by_block=False), summarise(results, by_block=True),
                          unchanged, tuple(narrowed))


def summarise(layers: Sequence[LayerSubspace], by_block: bool) -> tuple[SubspaceSummary, ...]:
    """Mean left / right distance, max distance and mean normalised distance per tower (or tower block)."""
    groups: dict[str, list[LayerSubspace]] = {}
    for layer in layers:
        key = layer.tower if not by_block else (f"{layer.tower} block {layer.block}" if layer.block is not None
                                                else f"{layer.tower} (no block)")
        groups.setdefault(key, []).append(layer)
    return tuple(SubspaceSummary(
        group=key, layers=len(members),
        mean_left=sum(m.left_distance for m in members) / len(members),
        mean_right=sum(m.right_distance for m in members) / len(members),
        max_distance=max(max(m.left_distance, m.right_distance) for m in members),
        mean_normalised=sum(m.normalised for m in members) / len(members),
    ) for key, members in groups.items())
