"""DARE drop-and-rescale, magnitude and Wanda pruning, N:M masks: pure tensor functions.

Every mask is a bool "keep" mask of the weight's shape (True = kept). Weights are (out, in):
rows are output units, columns are input features; tensors with more than two dims (conv
kernels) are read as (shape[0], everything else), as Wanda and SparseGPT do.

Nothing here touches a model; the caller swaps the returned tensors into its modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rcc.compression.plan_rules import parse_nm

from rcc.schema.names import PRUNE_METHODS

ROW_PATTERNS = ("unstructured", "row")


@dataclass(frozen=True)
class PruneResult:
    """A pruned (or dropped-and-rescaled) weight and the keep mask that produced it."""

    weight: torch.Tensor
    mask: torch.Tensor

    @property
    def sparsity(self) -> float:
        """1 − mean(mask): the fraction of entries the mask removed."""
        return 1.0 - float(self.mask.float().mean())


# --- DARE ---------------------------------------------------------------------------------------


def dare(
    weight: torch.Tensor,
    drop_rate: float,
    generator: torch.Generator,
    base: torch.Tensor | None = None,
) -> PruneResult:
    """DARE: m ~ Bernoulli(p) per entry, W' = (1 − m) ⊙ W / (1 − p).

    With base B it acts on the delta: W' = B + (1 − m) ⊙ (W − B) / (1 − p); the mask then marks
    kept entries of the DELTA and the returned weight is dense, not sparse (dropped entries fall
    back to B, not to zero). The mask is drawn on the CPU from ``generator`` so the same seed
    gives the same mask on every device.
    """
    _check_drop_rate(drop_rate)
    _check_base(weight, base)
    drop = _cpu_uniform(weight.shape, generator) < drop_rate
    keep = (~drop).to(weight.device)
    return PruneResult(_rescale_kept(weight, keep, 1.0 / (1.0 - drop_rate), base), keep)


def _dare_row(
    weight: torch.Tensor, drop_rate: float, generator: torch.Generator, base: torch.Tensor | None
) -> PruneResult:
    """Row DARE: drop exactly k = round(p · in) uniform random entries per row, W' = keep ⊙ W · in / (in − k)."""
    _check_drop_rate(drop_rate)
    _check_base(weight, base)
    rows, cols = _as_rows(weight).shape
    k = round(drop_rate * cols)
    if k >= cols:
        raise ValueError(
            f"drop rate {drop_rate} drops all {cols} entries of each row (round({drop_rate}·{cols}) = {k}); "
            "nothing would be left to rescale"
        )
    # Random scores ranked per row: dropping the k lowest is a uniform k-subset of each row.
    scores = _cpu_uniform((rows, cols), generator)
    keep = _drop_lowest_per_row(scores, k).to(weight.device).reshape(weight.shape)
    return PruneResult(_rescale_kept(weight, keep, cols / (cols - k), base), keep)


def _dare_nm(
    weight: torch.Tensor, n: int, m: int, generator: torch.Generator, base: torch.Tensor | None
) -> PruneResult:
    """N:M DARE: keep n uniformly random entries of every m, W' = keep ⊙ W · m / n."""
    _check_base(weight, base)
    rows, cols = _as_rows(weight).shape
    keep = nm_mask(_cpu_uniform((rows, cols), generator), n, m).to(weight.device).reshape(weight.shape)
    # Each entry survives with probability n/m, so scaling by m/n keeps E[W'] = W, as plain DARE does.
    return PruneResult(_rescale_kept(weight, keep, m / n, base), keep)


def _rescale_kept(
    weight: torch.Tensor, keep: torch.Tensor, scale: float, base: torch.Tensor | None
) -> torch.Tensor:
    """keep ⊙ W · scale, or B + keep ⊙ (W − B) · scale when a base is given."""
    # Multiply by a Python-float reciprocal rather than divide: CUDA turns division by a scalar
    # into multiplication by its reciprocal, CPU does not, and we want bit-equal results.
    if base is None:
        return torch.where(keep, weight * scale, torch.zeros_like(weight))
    delta = weight - base
    return base + torch.where(keep, delta * scale, torch.zeros_like(delta))


def _cpu_uniform(shape: tuple[int, ...] | torch.Size, generator: torch.Generator) -> torch.Tensor:
    """U[0, 1) draws of ``shape`` on the CPU from ``generator`` (fp32, independent of the weight's dtype)."""
    if generator is None or generator.device.type != "cpu":
        got = "None" if generator is None else f"a {generator.device.type} generator"
        raise ValueError(f"random pruning needs a CPU torch.Generator (seeded by the caller), got {got}")
    return torch.rand(tuple(shape), generator=generator, device="cpu", dtype=torch.float32)


# --- score-based masks --------------------------------------------------------------------------


def magnitude_mask(weight: torch.Tensor, sparsity: float, scope: str = "layer") -> torch.Tensor:
    """Keep mask that prunes the round(s · numel) smallest |w| (scope "layer") or round(s · in) per row (scope "row").

    Layer scope reproduces ``torch.nn.utils.prune.l1_unstructured`` exactly, ties included:
    the same ``topk(|w|, k, largest=False)`` call picks the entries to prune.
    """
    _check_sparsity(sparsity)
    if scope == "layer":
        keep = torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
        k = round(sparsity * weight.numel())
        if k:
            pruned = torch.topk(torch.abs(weight).reshape(-1), k=k, largest=False).indices
            keep.view(-1)[pruned] = False
        return keep
    if scope == "row":
        rows = _as_rows(weight)
        return _drop_lowest_per_row(rows.abs(), round(sparsity * rows.shape[1])).reshape(weight.shape)
    raise ValueError(f"unknown magnitude scope {scope!r}; allowed: 'layer', 'row'")


def wanda_mask(weight: torch.Tensor, input_norms: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda keep mask: S_ij = |W_ij| · ‖X_j‖₂, prune the round(s · in) lowest S in each output row."""
    _check_sparsity(sparsity)
    scores = wanda_scores(weight, input_norms)
    return _drop_lowest_per_row(scores, round(sparsity * scores.shape[1])).reshape(weight.shape)


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| · ‖X_j‖₂ as an (out, in) fp32 matrix."""
    rows = _as_rows(weight)
    if input_norms.dim() != 1 or input_norms.numel() != rows.shape[1]:
        raise ValueError(
            f"input norms of shape {tuple(input_norms.shape)} do not match weight {tuple(weight.shape)}; "
            f"expected ({rows.shape[1]},), one L2 norm per input column"
        )
    # fp32 because |W|·‖X‖ overflows fp16 for large activations and ties would appear from rounding.
    norms = input_norms.to(device=weight.device, dtype=torch.float32)
    return rows.abs().float() * norms.unsqueeze(0)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M keep mask: in each group of m consecutive input columns of a row keep the n highest scores."""
    if not 0 < n <= m:
        raise ValueError(f"N:M pattern needs 0 < N <= M, got {n}:{m}")
    rows = _as_rows(scores)
    if rows.shape[1] % m:
        raise ValueError(
            f"N:M pattern {n}:{m} needs the input dimension to be a multiple of {m}; "
            f"scores of shape {tuple(scores.shape)} have {rows.shape[1]} input columns"
        )
    groups = rows.reshape(rows.shape[0], -1, m)
    # Stable descending sort: among equal scores the earlier column is kept, on every device.
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(scores.shape)


def is_nm_mask(mask: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of m consecutive input columns of every row keeps exactly n entries."""
    rows = _as_rows(mask)
    if rows.shape[1] % m:
        return False
    return bool((rows.reshape(rows.shape[0], -1, m).sum(dim=-1) == n).all())


def _drop_lowest_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep mask of an (out, in) score matrix with the k lowest scores of each row removed."""
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if k:
        # Stable ascending sort: among equal scores the earlier column goes first, on every device.
        lowest = torch.sort(scores, dim=1, stable=True).indices[:, :k]
        keep.scatter_(1, lowest, False)
    return keep


# --- dispatcher ---------------------------------------------------------------------------------


def prune(
    weight: torch.Tensor,
    sparsity: float,
    method: str,
    pattern: str = "unstructured",
    generator: torch.Generator | None = None,
    input_norms: torch.Tensor | None = None,
    base: torch.Tensor | None = None,
) -> PruneResult:
    """Prune ``weight`` by method ∈ {dare, magnitude, wanda} and pattern ∈ {unstructured, row, "N:M"}.

    magnitude / wanda: W' = mask ⊙ W (kept entries unchanged). dare: kept entries are rescaled
    by 1 / kept fraction so that E[W'] = W. For "N:M" the sparsity is implied (1 − N/M) and the
    ``sparsity`` argument is ignored. Wanda compares weights within each output row for both
    "unstructured" and "row" (its definition: per-output groups beat per-layer ones).
    ``base`` (dare only) makes DARE act on the delta W − B, see ``dare``.
    """
    if method not in PRUNE_METHODS:
        raise ValueError(f"unknown pruning method {method!r}; allowed: {', '.join(PRUNE_METHODS)}")
    nm = parse_nm(pattern)
    if nm is None and pattern not in ROW_PATTERNS:
        raise ValueError(f"unknown pruning pattern {pattern!r}; allowed: 'unstructured', 'row', or 'N:M' like '2:4'")
    if base is not None and method != "dare":
        raise ValueError(f"a base weight only applies to method 'dare' (drop on the delta), not {method!r}")
    if method == "wanda" and input_norms is None:
        raise ValueError("method 'wanda' needs input_norms: the L2 norm of each input column over calibration data")

    if method == "dare":
        if generator is None:
            raise ValueError("method 'dare' needs a seeded torch.Generator; the seed belongs in the recorded op")
        if nm is not None:
            return _dare_nm(weight, nm[0], nm[1], generator, base)
        if pattern == "row":
            return _dare_row(weight, sparsity, generator, base)
        return dare(weight, sparsity, generator, base)

    if nm is not None:
        scores = wanda_scores(weight, input_norms) if method == "wanda" else weight.abs()
        mask = nm_mask(scores.reshape(weight.shape), nm[0], nm[1])
    elif method == "wanda":
        mask = wanda_mask(weight, input_norms, sparsity)
    else:
        mask = magnitude_mask(weight, sparsity, scope="layer" if pattern == "unstructured" else "row")
    return PruneResult(torch.where(mask, weight, torch.zeros_like(weight)), mask)


# --- applying masks -----------------------------------------------------------------------------


def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """In place W ← W ⊙ mask; returns ``weight``."""
    # no_grad so that this also works on a leaf nn.Parameter that requires grad.
    with torch.no_grad():
        weight.mul_(mask.to(weight.device))
    return weight


def mask_gradient_hook(mask: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``Tensor.register_hook`` hook returning ∂L/∂W ⊙ mask, so pruned entries stay zero under training."""

    def hook(grad: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.to(grad.device), grad, torch.zeros_like(grad))

    return hook


def to_semi_structured(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """The 2:4 weight as a ``torch.sparse`` semi-structured tensor, or None where no kernel can take it.

    Only CUDA has the kernels (CPU has none), and only for fp16/bf16 with a valid 2:4 mask and
    shapes the backend accepts; in every other case the caller keeps the dense masked weight.
    """
    if not weight.is_cuda or weight.dtype not in (torch.float16, torch.bfloat16) or weight.dim() != 2:
        return None
    if mask.shape != weight.shape or not is_nm_mask(mask, 2, 4):
        return None
    convert = getattr(torch.sparse, "to_sparse_semi_structured", None)
    if convert is None:
        return None
    try:
        return convert(torch.where(mask.to(weight.device), weight, torch.zeros_like(weight)))
    except (RuntimeError, ValueError, NotImplementedError):
        # Shape or architecture limits (minimum sizes, compute capability) are backend facts,
        # not user errors: fall back to the dense weight.
        return None


# --- checks -------------------------------------------------------------------------------------


def _as_rows(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor viewed as (out, in): first dim kept, the rest flattened."""
    if tensor.dim() < 2:
        raise ValueError(
            f"row-wise pruning needs a weight with at least 2 dims (out, in), got shape {tuple(tensor.shape)}"
        )
    return tensor.reshape(tensor.shape[0], -1)


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")


def _check_drop_rate(drop_rate: float) -> None:
    # p = 1 would divide by zero in the rescale 1 / (1 − p).
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"DARE drop rate must be in [0, 1), got {drop_rate}")


def _check_base(weight: torch.Tensor, base: torch.Tensor | None) -> None:
    if base is not None and base.shape != weight.shape:
        raise ValueError(f"base of shape {tuple(base.shape)} does not match weight {tuple(weight.shape)}")
