"""Nullu: low-rank factorisation of linear weights, plain or activation-aware, and rank allocation.

Weights follow ``nn.Linear``: ``W`` is (out, in) = (m, n); a rank-r factorisation is
``W' = A @ B`` with ``A`` (m, r) and ``B`` (r, n). Activation-aware factorisation follows
SVD-LLM (Wang et al., 2024): whiten the inputs with the Cholesky factor ``S`` of their Gram
matrix so that truncating ``W S`` truncates the output error ``‖(W − W')X‖_F`` directly.

Pure tensor math: no modules, no models. The caller wraps ``(A, B)`` into a layer.
"""

from __future__ import annotations

import contextlib
import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from rcc.errors import RccError

SVD_METHODS = ("auto", "exact", "lowrank")
# "auto" picks the randomised SVD only when the kept rank is a small slice of the spectrum:
# there Halko et al.'s sketch of q = rank + oversample columns is much cheaper than a full SVD
# and, with a few power iterations, accurate; for larger ranks the full SVD costs about the same.
LOWRANK_FRACTION = 8
DEFAULT_OVERSAMPLE = 10
DEFAULT_NITER = 4
# Relative damping of the Gram matrix, the same 1% of the mean diagonal GPTQ uses (percdamp):
# it keeps S invertible when some input directions never fire in the calibration data.
DEFAULT_WHITENING_EPS = 1e-2
_CHOLESKY_RETRIES = 5

SingularValues = torch.Tensor | Sequence[float]


def factorised_saves(m: int, n: int, r: int) -> bool:
    """Whether rank-r factors store fewer numbers than the dense matrix: r(m + n) < m·n."""
    return r * (m + n) < m * n


def largest_saving_rank(m: int, n: int) -> int:
    """The largest rank whose factors still save parameters: ⌈mn/(m+n)⌉ − 1 (0 when none does)."""
    return -(-(m * n) // (m + n)) - 1


def layer_params(m: int, n: int, r: int) -> int:
    """Numbers stored for a layer kept at rank r: r(m + n) if factorising saves, else m·n (dense)."""
    return r * (m + n) if factorised_saves(m, n, r) else m * n


def whitening_factor(gram: torch.Tensor, eps: float = DEFAULT_WHITENING_EPS) -> torch.Tensor:
    """Lower-triangular S with S Sᵀ = G + ε·I, ε = eps · mean(diag G); float64 on gram's device.

    ``gram`` is G = X Xᵀ with one input vector per column of X (for a batch of rows
    ``x`` (N, n) that is ``x.T @ x``). When Cholesky fails (G + εI not numerically positive
    definite) the damping grows ×10 up to a few times before giving up.
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be square (n, n), got shape {tuple(gram.shape)}")
    if eps < 0:
        raise RccError(f"whitening eps {eps} is negative; allowed: eps >= 0")
    # float64: the factor is later inverted (triangular solve), which amplifies rounding by cond(S).
    g = gram.to(torch.float64)
    g = (g + g.T) / 2  # accumulated Grams drift from symmetric by rounding
    scale = g.diagonal().mean().item()
    if not scale > 0:
        raise RccError("gram has no positive diagonal; were any calibration activations recorded?")
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    damping = eps * scale
    for _ in range(_CHOLESKY_RETRIES + 1):
        factor, info = torch.linalg.cholesky_ex(g + damping * eye)
        if info.item() == 0:
            return factor
        # eps = 0 has nothing to multiply; start from a damping that is tiny relative to G.
        damping = damping * 10 if damping > 0 else 1e-10 * scale
    raise RccError(
        f"gram is not positive definite even with damping {damping / 10:.3g}; raise whitening eps"
    )


def spectrum(
    weight: torch.Tensor, gram: torch.Tensor | None = None, eps: float = DEFAULT_WHITENING_EPS
) -> torch.Tensor:
    """Singular values for rank selection, descending, float64 on CPU: σ(W), or σ(W S) with a gram.

    Rank choices weigh tail energies Σ σ², so for a float32 weight the squares come straight from
    the eigenvalues of its small Gram (WᵀW or WWᵀ) in float32: σ² to about n·eps·σ_max²
    (4e-6 σ_max² at 3072 × 768), far below the gaps the budget allocation compares. float64
    ``svdvals`` took 15 s for ViT-B-32's 146 matrices; with float64 Grams bench.speed's whole
    Nullu stage took 8–11 s, with float32 ones 5.2–5.3 s. rcc-mini's auto ranks at 30/50/70 %
    budgets are the same as from float64 spectra (tested). Float64 weights and whitened spectra (W S inherits the conditioning of
    the Gram's Cholesky factor) take ``svdvals`` in float64.
    """
    _check_matrix(weight)
    if gram is not None:
        _check_gram(weight, gram)
        w = weight.detach().to(torch.float64)
        return torch.linalg.svdvals(w @ whitening_factor(gram.to(w.device), eps)).cpu()
    if weight.dtype == torch.float64:
        return torch.linalg.svdvals(weight.detach()).cpu()
    w = weight.detach().to(torch.float32)
    small = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    squares = torch.linalg.eigvalsh(small).flip(0).clamp(min=0.0)  # descending; rounding can dip below 0
    return squares.to(torch.float64).sqrt().cpu()


def rank_for_energy(singular_values: SingularValues, energy: float) -> int:
    """Smallest r ≥ 1 with Σ_{i<r} σ_i² ≥ energy · Σ_i σ_i² (σ sorted descending)."""
    if not 0 < energy <= 1:
        raise RccError(f"energy {energy} is out of range; allowed: 0 < energy <= 1")
    sq = _as_sorted_squares(singular_values)
    if sq.numel() == 0:
        raise ValueError("singular_values is empty")
    cumulative = torch.cumsum(sq, 0)
    total = cumulative[-1]
    if total <= 0:
        return 1
    r = int(torch.searchsorted(cumulative, energy * total).item()) + 1
    # energy = 1 can miss the total by one rounding step; the full rank always qualifies.
    return max(1, min(r, sq.numel()))


def truncation_loss(singular_values: SingularValues, rank: int) -> float:
    """Squared Frobenius error of the best rank-r approximation (Eckart–Young): Σ_{i≥r} σ_i²."""
    if rank < 0:
        raise RccError(f"rank {rank} is negative; allowed: rank >= 0")
    return float(_as_sorted_squares(singular_values)[rank:].sum().item())


def svd_factors(
    weight: torch.Tensor,
    rank: int,
    method: str = "auto",
    seed: int = 0,
    *,
    oversample: int = DEFAULT_OVERSAMPLE,
    niter: int = DEFAULT_NITER,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-r factors of W = U Σ Vᵀ: A = U_r Σ_r^½ (m, r), B = Σ_r^½ V_rᵀ (r, n).

    ``method``: "exact" is ``torch.linalg.svd``; "lowrank" is ``torch.svd_lowrank`` with
    q = rank + oversample, seeded by ``seed`` without touching the global RNG; "auto" uses
    lowrank when rank ≤ min(m, n) / 8, else exact. Computes in float32 (float64 for float64
    weights) on the weight's device and returns the weight's dtype.

    The √σ split gives A and B the same scale (‖A‖ = ‖B‖), so neither factor is tiny while
    the other is huge: gradients and later corrections (AlphaEdit) see a balanced problem.
    """
    _check_matrix(weight)
    m, n = weight.shape
    if not 1 <= rank <= min(m, n):
        raise RccError(f"rank {rank} is out of range for a {m}x{n} weight; allowed: 1..{min(m, n)}")
    if method not in SVD_METHODS:
        raise RccError(f"unknown SVD method {method!r}; allowed: {', '.join(SVD_METHODS)}")
    if method == "auto":
        method = "lowrank" if rank * LOWRANK_FRACTION <= min(m, n) else "exact"
    compute_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.detach().to(compute_dtype)
    if method == "exact":
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    else:
        q = min(rank + oversample, m, n)
        with _seeded_rng(w.device, seed):
            u, s, v = torch.svd_lowrank(w, q=q, niter=niter)
        # svd_lowrank returns V (n, q), not Vh.
        u, s, vh = u[:, :rank], s[:rank], v[:, :rank].T
    root = s.sqrt()
    a = u * root
    b = root[:, None] * vh
    return a.to(weight.dtype).contiguous(), b.to(weight.dtype).contiguous()


def whitened_svd_factors(
    weight: torch.Tensor,
    gram: torch.Tensor,
    rank: int,
    eps: float = DEFAULT_WHITENING_EPS,
    method: str = "exact",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SVD-LLM factors: W S = U Σ Vᵀ, A = U_k Σ_k^½, B = Σ_k^½ V_kᵀ S⁻¹ (triangular solve).

    With G = X Xᵀ and ε = 0, ‖(W − A B) X‖_F² = Σ_{i≥k} σ_i(W S)² (0-based), the smallest output
    error of any rank-k weight. Computes in float64 on the weight's device (S⁻¹ amplifies
    rounding) and returns the weight's dtype. ``method``/``seed`` are as in :func:`svd_factors`,
    but default to "exact": whitening flattens the spectrum, where a randomised sketch is weakest.
    """
    _check_matrix(weight)
    _check_gram(weight, gram)
    s = whitening_factor(gram.to(weight.device), eps)
    a, b = svd_factors(weight.detach().to(torch.float64) @ s, rank, method, seed)
    # B S⁻¹ as the solution X of X S = B: stable, and never forms the inverse.
    b = torch.linalg.solve_triangular(s, b, upper=False, left=False)
    return a.to(weight.dtype).contiguous(), b.to(weight.dtype).contiguous()


@dataclass(frozen=True)
class RankCandidate:
    """One layer offered to rank allocation: its shape (m, n) and its singular values."""

    name: str
    m: int
    n: int
    singular_values: tuple[float, ...]

    def __post_init__(self) -> None:
        # Stored as sorted Python floats so the candidate is hashable and comparable.
        values = tuple(sorted((float(v) for v in _as_list(self.singular_values)), reverse=True))
        if self.m < 1 or self.n < 1:
            raise ValueError(f"layer {self.name!r} has shape {self.m}x{self.n}; both must be >= 1")
        if len(values) > min(self.m, self.n):
            raise ValueError(
                f"layer {self.name!r} has {len(values)} singular values; at most {min(self.m, self.n)}"
            )
        object.__setattr__(self, "singular_values", values)


@dataclass(frozen=True)
class RankAllocation:
    """Ranks chosen per layer, their total stored numbers and Eckart–Young loss.

    A rank of min(m, n) means "keep the layer dense": factorising it at any rank that still fits
    the dense size would only add error. ``met_budget`` is False when even rank 1 on every
    factorisable layer stores more than the budget (the ranks are then exactly that).
    """

    ranks: dict[str, int]
    params: int
    loss: float
    met_budget: bool


def allocate_ranks(layers: Sequence[RankCandidate], budget_params: int) -> RankAllocation:
    """Greedy min Σ_l Σ_{i≥r_l} σ_{l,i}² s.t. Σ_l params(r_l) ≤ budget, by least loss per number saved.

    Every layer starts dense (m·n numbers, loss 0). Its first step jumps to r0 = ⌈mn/(m+n)⌉ − 1
    (saves mn − r0(m+n), costs Σ_{i≥r0} σ²); each later step r → r−1 saves m+n and costs
    σ_{r−1}². A heap holds each layer's next step, so the run is O(steps · log layers). The
    greedy may overshoot on its last step; a refill pass then spends the slack on the
    rank increases that recover the most loss per number.
    """
    if budget_params < 0:
        raise RccError(f"parameter budget {budget_params} is negative; allowed: >= 0")
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise ValueError("layer names must be unique")
    squares = [[v * v for v in layer.singular_values] for layer in layers]
    full = [min(layer.m, layer.n) for layer in layers]
    ranks = list(full)
    params = sum(layer.m * layer.n for layer in layers)

    # Heap entries: (loss per number saved, layer index, new rank, numbers saved); the index
    # breaks ties, so equal ratios resolve in layer order and runs are deterministic.
    heap: list[tuple[float, int, int, int]] = []
    for i, layer in enumerate(layers):
        r0 = largest_saving_rank(layer.m, layer.n)
        if r0 >= 1:
            saved = layer.m * layer.n - r0 * (layer.m + layer.n)
            cost = math.fsum(squares[i][r0:])
            heap.append((cost / saved, i, r0, saved))
    heapq.heapify(heap)

    while params > budget_params and heap:
        _, i, new_rank, saved = heapq.heappop(heap)
        ranks[i], params = new_rank, params - saved
        if new_rank > 1:
            step = layers[i].m + layers[i].n
            drop = _square_at(squares[i], new_rank - 1)
            heapq.heappush(heap, (drop / step, i, new_rank - 1, step))

    met = params <= budget_params
    if met:
        params = _refill(layers, squares, ranks, params, budget_params)
    # Recomputed from the final ranks rather than accumulated, so no rounding drifts in.
    loss = math.fsum(math.fsum(sq[r:]) for sq, r, f in zip(squares, ranks, full) if r < f)
    return RankAllocation(ranks=dict(zip(names, ranks)), params=params, loss=loss, met_budget=met)


def _refill(
    layers: Sequence[RankCandidate],
    squares: list[list[float]],
    ranks: list[int],
    params: int,
    budget: int,
) -> int:
    """Spend budget slack on rank increases r → r+1 (costs m+n, recovers σ_r²), best ratio first."""
    heap: list[tuple[float, int]] = []
    for i in range(len(layers)):
        _push_increase(heap, layers[i], squares[i], ranks[i], i)
    while heap:
        _, i = heapq.heappop(heap)
        step = layers[i].m + layers[i].n
        # Slack only shrinks, so a layer whose next step does not fit never will: drop it.
        if params + step > budget:
            continue
        ranks[i] += 1
        params += step
        _push_increase(heap, layers[i], squares[i], ranks[i], i)
    return params


def _push_increase(
    heap: list[tuple[float, int]], layer: RankCandidate, squares: list[float], rank: int, i: int
) -> None:
    """Offer r → r+1 (max-heap on σ_r²/(m+n)) if it still saves and recovers any loss at all."""
    gain = _square_at(squares, rank)
    # A zero gain would spend numbers for nothing; σ is sorted, so later steps gain nothing too.
    if gain > 0 and factorised_saves(layer.m, layer.n, rank + 1):
        heapq.heappush(heap, (-gain / (layer.m + layer.n), i))


def _square_at(squares: list[float], index: int) -> float:
    """σ_index², zero past the values given (a candidate may list fewer than min(m, n))."""
    return squares[index] if index < len(squares) else 0.0


@contextlib.contextmanager
def _seeded_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed only the generator on ``device`` and restore every forked state on exit."""
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield
        return
    # torch.manual_seed would also (lazily) reseed every other device; seed just this one.
    module = torch.get_device_module(device.type)
    index = device.index if device.index is not None else module.current_device()
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        if device.type == "cuda":
            torch.cuda.default_generators[index].manual_seed(seed)
        else:
            module.manual_seed(seed)
        yield


def _as_list(values: SingularValues) -> list[float]:
    if isinstance(values, torch.Tensor):
        return values.detach().to(torch.float64).cpu().flatten().tolist()
    return list(values)


def _as_sorted_squares(values: SingularValues) -> torch.Tensor:
    sv = torch.as_tensor(_as_list(values), dtype=torch.float64)
    return torch.sort(sv, descending=True).values.square()


def _check_matrix(weight: torch.Tensor) -> None:
    if weight.ndim != 2:
        raise ValueError(f"weight must be a matrix (out, in), got shape {tuple(weight.shape)}")


def _check_gram(weight: torch.Tensor, gram: torch.Tensor) -> None:
    n = weight.shape[1]
    if tuple(gram.shape) != (n, n):
        raise ValueError(f"gram must be ({n}, {n}) for a weight with {n} inputs, got {tuple(gram.shape)}")
