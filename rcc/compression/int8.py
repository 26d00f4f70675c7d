"""Symmetric int8 weights with one scale per output channel: rounding, GPTQ and smoothing.

A weight W (m × n) is stored as Q ∈ {−127 … 127}^{m×n} (int8) and s ∈ R^m (float32) with

    Ŵ = diag(s) Q,   s_i = max_j |W_ij| / 127,   Q = clamp(round(W / s), −127, 127)

(round to nearest, the baseline). Zero maps to zero, so a pruned entry stays exactly zero;
with a keep-mask M the pruned entries of Q are forced to 0 whatever W holds there.

GPTQ (Frantar et al. 2022) quantises the columns of W one at a time and pushes each column's
rounding error onto the columns not yet quantised, weighted by the inverse calibration Gram
H = X Xᵀ (the statistics AlphaEdit uses), which minimises ‖(Ŵ − W) X‖²_F far better than
rounding each entry alone: with U the upper Cholesky factor of (H + δI)⁻¹,

    e_j = (W_:j − Ŵ_:j) / U_jj,     W_:k ← W_:k − e_j U_jk   for k > j.

SmoothQuant (Xiao et al. 2023) moves activation outliers into the weights before rounding:
with a_j = max_t |x_tj| (calibration) and w_j = max_i |W_ij|,

    σ_j = a_j^α / w_j^(1−α),    W' = W diag(σ),   x' = x / σ,

so W' x' = W x while x' has a flatter range for the per-tensor activation quantisation of the
CPU kernels. The layer then stores 1/σ as its ``input_scale`` and multiplies its input by it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

QMAX = 127  # symmetric: −127 … 127, so −Q is always representable and 0 is exact


@dataclass(frozen=True, eq=False)
class Int8Weight:
    """Q (int8, m × n) and the per-row scales s (float32, m): Ŵ = diag(s) Q."""

    values: torch.Tensor
    scale: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.values.to(dtype) * self.scale.to(dtype)[:, None])


def row_scales(weight: torch.Tensor) -> torch.Tensor:
    """s_i = max_j |W_ij| / 127 (float32); an all-zero row gets s_i = 1 (its Q row is 0 anyway)."""
    peak = weight.detach().abs().amax(dim=1).float()
    return torch.where(peak > 0, peak / QMAX, torch.ones_like(peak))


def _round(column: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(column / scale), -QMAX, QMAX)


def quantize_rtn(weight: torch.Tensor, keep: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> Int8Weight:
    """Round to nearest: Q = clamp(round(W / s), −127, 127), Q = 0 where ``keep`` is False."""
    w = weight.detach().float()
    s = row_scales(w) if scale is None else scale.float()
    q = _round(w, s[:, None].to(w.device))
    if keep is not None:
        q = q * keep.to(q.device)
    return Int8Weight(q.to(torch.int8), s.to(w.device))


@torch.no_grad()
def quantize_gptq(weight: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor | None = None,
                  damp: float = 0.01, block: int = 128) -> Int8Weight:
    """GPTQ error feedback on the Gram H = X Xᵀ (n × n); scales as rounding would choose them.

    Pruned entries (``keep`` False) are quantised to exactly 0 and their whole value becomes
    error fed forward, as SparseGPT does. δ = damp · mean(diag H); inputs no sample reached
    (H_jj = 0) have their column zeroed, it multiplies nothing. Float64 throughout: H of a
    long calibration set is badly conditioned.
    """
    w = weight.detach().to(torch.float64).clone()
    m, n = w.shape
    if gram.shape != (n, n):
        raise ValueError(f"Gram shape {tuple(gram.shape)} does not match weight shape {(m, n)}")
    h = gram.detach().to(device=w.device, dtype=torch.float64).clone()
    dead = torch.diagonal(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    scale = row_scales(weight).to(device=w.device, dtype=torch.float64)
    keep64 = None if keep is None else keep.to(device=w.device, dtype=torch.float64)
    h.diagonal().add_(damp * float(torch.diagonal(h).mean()))
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    for start in range(0, n, block):
        stop = min(start + block, n)
        w_block = w[:, start:stop].clone()
        err_block = torch.zeros_like(w_block)
        u_block = upper[start:stop, start:stop]
        for j in range(stop - start):
            column = w_block[:, j]
            quantised = _round(column, scale)
            if keep64 is not None:
                quantised = quantised * keep64[:, start + j]
            q[:, start + j] = quantised
            error = (column - quantised * scale) / u_block[j, j]
            w_block[:, j:] -= error[:, None] * u_block[j, j:][None, :]
            err_block[:, j] = error
        w[:, stop:] -= err_block @ upper[start:stop, stop:]
    return Int8Weight(q.to(torch.int8), scale.float())


def output_error(weight: torch.Tensor, quantised: torch.Tensor, gram: torch.Tensor | None) -> float:
    """Relative error of the layer's outputs: tr(Δ H Δᵀ) / tr(W H Wᵀ), Δ = Ŵ − W (‖Δ‖²/‖W‖² without H)."""
    w = weight.detach().double()
    delta = quantised.detach().double().to(w.device) - w
    if gram is None:
        denominator = float((w * w).sum())
        return float((delta * delta).sum()) / denominator if denominator > 0 else 0.0
    h = gram.detach().double().to(w.device)
    denominator = float(((w @ h) * w).sum())
    return float(((delta @ h) * delta).sum()) / denominator if denominator > 0 else 0.0


def smoothing_factors(input_absmax: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """σ_j = a_j^α / w_j^(1−α) (float32), 1 where the input or the weight column is all zero."""
    a = input_absmax.detach().float().to(weight.device)
    w = weight.detach().abs().amax(dim=0).float()
    sigma = a.pow(alpha) / w.pow(1 - alpha)
    good = (a > 0) & (w > 0) & torch.isfinite(sigma)
    return torch.where(good, sigma, torch.ones_like(sigma)).clamp(1e-4, 1e4)
