"""Cheap predictors of how much compressing a layer will hurt, from weights and calibration only.

Each proxy is a ratio num/den of two sums, so the proxy of a group of layers is
Σ num / Σ den over its layers (a layer with more energy weighs more). For a dense weight W
(out × in), its compressed form W', ΔW = W − W', input channel norms ‖X_j‖₂ and Gram G = X Xᵀ:

- ``truncation_loss``  Σ_{i≥r} σ_i(W)² / Σ_i σ_i(W)²  (rank-r truncation; Eckart–Young error share)
- ``wanda_mass``       Σ_ij |ΔW_ij| ‖X_j‖₂ / Σ_ij |W_ij| ‖X_j‖₂  (the Wanda score mass removed; for a
                       pruned layer exactly the pruned entries' share of Σ |W_ij| ‖X_j‖₂)
- ``output_error``     tr(ΔW G ΔWᵀ) / tr(W G Wᵀ) = ‖ΔW X‖_F² / ‖W X‖_F²  (relative output error on
                       the calibration inputs)
- ``weight_error``     ‖ΔW‖_F² / ‖W‖_F²
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PROXIES = ("truncation_loss", "wanda_mass", "output_error", "weight_error")


@dataclass(frozen=True)
class ProxyTerms:
    """Numerator and denominator of every proxy that applies (absent: not computable here)."""

    terms: dict[str, tuple[float, float]]

    def __add__(self, other: ProxyTerms) -> ProxyTerms:
        keys = set(self.terms) & set(other.terms)
        return ProxyTerms({k: (self.terms[k][0] + other.terms[k][0], self.terms[k][1] + other.terms[k][1])
                           for k in keys})

    def values(self) -> dict[str, float | None]:
        """Each proxy's ratio (None where it does not apply, or its denominator is 0)."""
        return {name: (self.terms[name][0] / self.terms[name][1]
                       if name in self.terms and self.terms[name][1] > 0 else None) for name in PROXIES}


def truncation_terms(weight: torch.Tensor, rank: int) -> tuple[float, float]:
    """(Σ_{i≥r} σ_i², Σ_i σ_i²) of ``weight`` (float64)."""
    sq = torch.linalg.svdvals(weight.detach().double()).square()
    return float(sq[rank:].sum()), float(sq.sum())


@torch.no_grad()
def layer_proxy_terms(dense: torch.Tensor, compressed: torch.Tensor, rank: int | None = None,
                      sq_norms: torch.Tensor | None = None, gram: torch.Tensor | None = None) -> ProxyTerms:
    """The terms of every proxy for one layer; ``rank`` (truncation) and calibration are optional."""
    w = dense.detach().double()
    delta = w - compressed.detach().double().to(w.device)
    terms = {"weight_error": (float(delta.square().sum()), float(w.square().sum()))}
    if rank is not None:
        terms["truncation_loss"] = truncation_terms(w, rank)
    if sq_norms is not None:
        norms = sq_norms.detach().double().to(w.device).sqrt()
        terms["wanda_mass"] = (float((delta.abs() * norms).sum()), float((w.abs() * norms).sum()))
    if gram is not None:
        g = gram.detach().double().to(w.device)
        terms["output_error"] = (float(((delta @ g) * delta).sum()), float(((w @ g) * w).sum()))
    return ProxyTerms(terms)
