"""AlphaEdit-style correction: restore a compressed layer's outputs, optionally inside a null space.

Weights are (out, in) = (m, n). Calibration inputs X (n × N) arrive only as their Gram matrix
C = X Xᵀ (n × n); preserved inputs K₀ as C₀ = K₀ K₀ᵀ. With R = W − W_c (what compression
removed) every correction Δ minimises the ridge objective

    f(Δ) = ‖(W_c + Δ − W) X‖²_F + λ‖Δ‖²_F = tr((Δ − R) C (Δ − R)ᵀ) + λ‖Δ‖²_F

over a subspace: all of R^{m×n}, rows in range(P) (AlphaEdit: Δ K₀ ≈ 0, so outputs on the
preserved set do not move), entries inside a keep mask (sparsity survives), or a low-rank
factor. For every closed form f(Δ*) ≤ f(0), so the calibration error never grows:
err(Δ*) ≤ err(0) − λ‖Δ*‖².

All solves run in float64 (Gram matrices of long calibration sets are badly conditioned);
results come back in the weight's dtype and device. Weights with more than two dims must be
reshaped to (shape[0], rest) by the caller, as in ``dare``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_NULL_THRESHOLD = 1e-2
# An eigenvalue of P_JJ this close to 1 marks a direction inside range(P) (see _row_basis).
_IN_RANGE_TOL_F64 = 1e-10


@dataclass(frozen=True, eq=False)
class NullSpace:
    """P = U Uᵀ onto the eigenvectors of C₀ with eigenvalue < threshold · λ_max(C₀)."""

    projector: torch.Tensor  # P (n × n), float64
    basis: torch.Tensor  # U (n × dim), orthonormal columns, float64
    dim: int  # dimension of the (approximate) null space of K₀ᵀ
    threshold: float  # the absolute eigenvalue cut-off that was applied


@dataclass(frozen=True, eq=False)
class MaskedFit:
    """A masked correction Δ with the calibration error e(·) = ‖(W_c + · − W)X‖² before and after it.

    ``after`` comes from the optimality identity e(Δ*) = e(0) − ⟨Δ*, RC⟩ − λ‖Δ*‖², which holds for
    the exact minimiser over any linear feasible set (take V = Δ* in the first-order condition
    ⟨(Δ* − R)C + λΔ*, V⟩ = 0): no second (m × n)(n × n) product is needed to report it.
    """

    delta: torch.Tensor
    before: float
    after: float


@dataclass(frozen=True, eq=False)
class FactorFit:
    """Corrected factors and ``gain`` = e(0) − e(A'B' − AB), the drop in calibration error.

    ``gain`` comes from the same identity as ``MaskedFit.after`` where the step is the exact
    minimiser, from a product in the factor's coordinates where it is not (a masked B, a
    rank-deficient A); None with ``update_a``.
    """

    up: torch.Tensor
    down: torch.Tensor
    gain: float | None


@dataclass(frozen=True, eq=False)
class GradientCorrection:
    """Δ found by projected gradient descent and the objective f(Δ_t) at every iterate (steps + 1)."""

    delta: torch.Tensor
    losses: torch.Tensor


# --- statistics ---------------------------------------------------------------------------------


def null_space_projector(preserved_gram: torch.Tensor, threshold: float = DEFAULT_NULL_THRESHOLD) -> NullSpace:
    """C₀ = U Λ Uᵀ; P = U_S U_Sᵀ with S = {i : Λ_i < threshold · max Λ} (relative threshold).

    AlphaEdit cuts at an absolute 1e-2 on a mean (not summed) covariance; a relative cut gives
    the same role to ``threshold`` whatever the number of preserved samples or the activation
    scale. With C₀ = 0 (nothing to preserve) the whole space is null and P = I.
    """
    _check_square(preserved_gram, "preserved_gram")
    if not (0.0 <= threshold <= 1.0):
        raise ValueError(
            f"null-space threshold must be in [0, 1] (relative to the largest eigenvalue), got {threshold}"
        )
    c0 = _sym64(preserved_gram)
    evals, evecs = torch.linalg.eigh(c0)
    top = float(evals[-1]) if evals.numel() else 0.0
    cut = threshold * top
    keep = evals < cut if top > 0 else torch.ones_like(evals, dtype=torch.bool)
    basis = evecs[:, keep]
    return NullSpace(projector=basis @ basis.T, basis=basis, dim=int(keep.sum()), threshold=cut)


def weighted_gram(gram: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """C_w = diag(w) C diag(w): the Gram of X with input channel j scaled by w_j."""
    _check_square(gram, "gram")
    if importance.shape != (gram.shape[0],):
        raise ValueError(f"importance must have shape ({gram.shape[0]},), got {tuple(importance.shape)}")
    w = importance.detach().to(torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("importance weights must be finite and non-negative")
    return w[:, None] * _sym64(gram) * w[None, :]


def reconstruction_error(W: torch.Tensor, W_c: torch.Tensor, gram: torch.Tensor,
                         dtype: torch.dtype = torch.float64) -> float:
    """‖(W_c − W) X‖²_F = tr((W_c − W) C (W_c − W)ᵀ), computed in ``dtype``.

    C is used as given: the trace form only sees its symmetric part. float32 halves the cost of
    the one (m × n)(n × n) product and is plenty for comparing two errors (the stage's guard).
    """
    _check_pair(W, W_c, gram)
    e = W_c.detach().to(dtype) - W.detach().to(dtype)
    return float(((e @ gram.detach().to(device=e.device, dtype=dtype)) * e).sum())


# --- closed forms -------------------------------------------------------------------------------


def dense_correction(
    W: torch.Tensor,
    W_c: torch.Tensor,
    gram: torch.Tensor,
    lam: float,
    projector: NullSpace | torch.Tensor | None = None,
    importance: torch.Tensor | None = None,
) -> torch.Tensor:
    """Δ = R C U (Uᵀ C U + λI)⁻¹ Uᵀ with R = W − W_c (U = I without a projector: Δ = R C (C + λI)⁻¹).

    With P = U Uᵀ, writing Δ = D P = E Uᵀ (E = D U) turns the constrained problem into an
    unconstrained one in E: ∇_E = 2(E Uᵀ − R) C U + 2λE = 0 ⇒ E (Uᵀ C U + λI) = R C U. Every row
    of Δ lies in range(P), so Δ K₀ = Δ P K₀ ≈ 0. For λ > 0 this equals R C P (P C P + λI)⁻¹;
    for λ = 0 the inverse is a pseudo-inverse (the minimum-norm minimiser).

    ``importance`` (n,) replaces C by diag(w) C diag(w), i.e. fits on inputs whose channel j is
    scaled by w_j, so an error driven by channel j costs ~w_j² more. With λ > 0 or a projector
    (where not every error can be removed) the
    correction spends its budget on the channels the caller ranks high, e.g. activation norms
    ‖X_j‖ whose outlier channels dominate downstream error. λ‖Δ‖² is not reweighted.
    """
    _check_pair(W, W_c, gram)
    _check_lam(lam)
    c = weighted_gram(gram, importance) if importance is not None else _sym64(gram)
    c = c.to(W.device)
    r = W.detach().to(torch.float64) - W_c.detach().to(torch.float64)
    basis = _basis(projector, c.shape[0], c.device)
    if basis is None:
        delta = _ridge_solve(c, r @ c, lam)
    else:
        delta = _ridge_solve(basis.T @ c @ basis, r @ c @ basis, lam) @ basis.T
    return delta.to(W.dtype)


def masked_correction(
    W: torch.Tensor,
    W_c: torch.Tensor,
    mask: torch.Tensor,
    gram: torch.Tensor,
    lam: float,
    projector: NullSpace | torch.Tensor | None = None,
) -> torch.Tensor:
    """Per row i with kept columns J: δ_J = (R C)_{i,J} Q (Qᵀ C_JJ Q + λI)⁻¹ Qᵀ, zero off J.

    Rows decouple because ‖Δ‖² and tr(Δ C Δᵀ) are sums over rows. Q is an orthonormal basis of
    the row's feasible set: Q = I without a projector (δ_J = (R C)_{i,J} (C_JJ + λI)⁻¹); with one,
    Q spans {v on J : P v = v}, the eigenvectors of P_JJ with eigenvalue 1 (vᵀ P_JJ v = ‖v‖²
    ⟺ v ∈ range(P), since P_JJ ≼ I). That intersection has dimension about max(0, |J| − (n − dim))
    and is often {0} for dense-ish null spaces; those rows then get no correction at all.
    Rows with the same keep pattern (structured / column pruning) share one factorisation;
    cost is one |J|³ solve per distinct pattern, so use ``gradient_correction`` for wide
    unstructured layers when that is too slow.
    """
    return masked_fit(W, W_c, mask, gram, lam, projector).delta


def masked_fit(
    W: torch.Tensor,
    W_c: torch.Tensor,
    mask: torch.Tensor,
    gram: torch.Tensor,
    lam: float,
    projector: NullSpace | torch.Tensor | None = None,
) -> MaskedFit:
    """``masked_correction`` with the calibration error before and after it, from products it needs anyway."""
    _check_pair(W, W_c, gram)
    _check_lam(lam)
    _check_mask(mask, W)
    c = _sym64(gram).to(W.device)
    r = W.detach().to(torch.float64) - W_c.detach().to(torch.float64)
    rc = r @ c
    delta = _masked_delta(c, rc, mask, lam, projector)
    before = float((r * rc).sum())
    after = before - float((delta * rc).sum()) - lam * float((delta * delta).sum())
    return MaskedFit(delta=delta.to(W.dtype), before=before, after=after)


def _masked_delta(c: torch.Tensor, rc: torch.Tensor, mask: torch.Tensor, lam: float,
                  projector: NullSpace | torch.Tensor | None) -> torch.Tensor:
    """The float64 solutions of ``masked_correction``, chosen by the cheapest exact solver."""
    p = _projector64(projector, c.shape[0], c.device)
    tol = _IN_RANGE_TOL_F64 if not isinstance(projector, torch.Tensor) else _in_range_tol(projector.dtype)
    delta = torch.zeros_like(rc)
    if p is None:
        keep = mask.to(torch.bool)
        pruned = keep.numel() - int(keep.sum())
        if lam > 0 and pruned <= keep.numel() * _COMPLEMENT_MAX_PRUNED:  # solve for the few pruned entries
            return _masked_rows_complement(c, rc, keep, lam)
        if lam > 0 and int(keep.sum(dim=1).max()) > _CG_MIN_COLUMNS:
            return _masked_rows_cg(c, rc, keep, lam)
        return _masked_rows_batched(c, rc, keep, lam, delta)
    patterns, inverse = torch.unique(mask.to(torch.bool), dim=0, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    groups = torch.split(order, torch.bincount(inverse, minlength=len(patterns)).tolist())
    for pattern, rows in zip(patterns, groups):
        cols = pattern.nonzero().squeeze(1)
        if cols.numel() == 0:
            continue  # fully pruned row: nothing may change
        c_jj = c[cols][:, cols]
        rhs = rc[rows][:, cols]
        q = _row_basis(p[cols][:, cols], tol)
        if q.shape[1] == 0:
            continue  # range(P) meets this row's support only in 0
        delta[rows[:, None], cols[None, :]] = _ridge_solve(q.T @ c_jj @ q, rhs @ q, lam) @ q.T
    return delta


def lowrank_correction(
    W: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    gram: torch.Tensor,
    lam: float,
    projector: NullSpace | torch.Tensor | None = None,
    update_a: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """B' = B + ΔB minimising ‖(AB + AΔB)X − WX‖² + λ‖AΔB‖²; optionally then A' = A + R'CB'ᵀ(B'CB'ᵀ + λI)⁻¹.

    The B step is the stage's objective ‖(W_c + Δ)X − WX‖² + λ‖Δ‖² with the weight change
    Δ = AΔB restricted to the factorised form (and, with a projector, ΔB = E Uᵀ so rows of Δ
    stay in range(P)). With A = QRₐ (thin QR) and D = RₐE it is a ridge problem in D:
    D (UᵀCU + λI) = Qᵀ R C U (R = W − AB), then E = Rₐ⁻¹D — one Cholesky of an n × n matrix,
    where regularising ΔB itself instead would be a Sylvester equation needing an n × n
    eigendecomposition (13× slower at n = 3,072 in float64). A rank-deficient A takes the
    minimum-norm E. The optional A step (R' = W − A B') is the dense ridge fit of A with B'
    fixed; it changes outputs by ΔA B' K₀, which is nonzero whenever B'K₀ has full row rank, so
    it is refused with a projector. Rank stays r: shapes of A and B never change.
    The B step only moves outputs inside range(A): when A B is the plain truncated SVD of W
    itself, R X ⟂ range(A) (Aᵀ R = 0) and the B step is exactly zero; it helps when the factors
    came from another matrix (SVD after pruning, activation-aware SVD), otherwise use ``update_a``.
    """
    fit = lowrank_fit(W, A, B, gram, lam, projector, update_a)
    return fit.up, fit.down


def lowrank_fit(
    W: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    gram: torch.Tensor,
    lam: float,
    projector: NullSpace | torch.Tensor | None = None,
    update_a: bool = False,
    keep: torch.Tensor | None = None,
) -> FactorFit:
    """``lowrank_correction`` with the drop in calibration error it achieves.

    Δ = A ΔB = Q D (or Q D Uᵀ) with the ridge solution D of D G = S (S = Qᵀ R C U), so
    ⟨Δ, RC⟩ = ⟨D, S⟩ and ‖Δ‖² = ‖D‖²: the gain ⟨D, S⟩ + λ‖D‖² costs two r × n sums.
    ``keep`` (r × n, bool) is B's keep mask: the step is zeroed off it, which is no longer the
    minimiser, so the gain is measured in the factor's coordinates instead, Δ = Q D' with
    D' = Rₐ ΔB: 2⟨D', QᵀRC⟩ − tr(D' C D'ᵀ), an r·n² product where the weight's error is m·n².
    """
    _check_lowrank(W, A, B, gram)
    _check_lam(lam)
    if update_a and projector is not None:
        raise ValueError("update_a=True would move outputs on the preserved set; use it only with projector=None")
    if keep is not None and (keep.dtype != torch.bool or keep.shape != B.shape):
        raise ValueError(f"keep must be a bool mask of B's shape {tuple(B.shape)}, "
                         f"got {keep.dtype} {tuple(keep.shape)}")
    c = _sym64(gram).to(W.device)
    w = W.detach().to(torch.float64)
    a = A.detach().to(torch.float64)
    b = B.detach().to(torch.float64)
    basis = _basis(projector, c.shape[0], c.device)
    q, r_a = torch.linalg.qr(a)
    # Qᵀ R C as (Qᵀ R) C: r·n² instead of m·n² (r < mn / (m + n) for a factorised layer).
    residual = q.T @ (w - a @ b)
    sc = residual @ c
    if basis is None:  # U = I: skip three n³ products with the identity
        rhs = sc
        d = _ridge_solve(c, rhs, lam)
        step = _upper_solve(r_a, d)
    else:
        rhs = sc @ basis
        d = _ridge_solve(basis.T @ c @ basis, rhs, lam)
        step = _upper_solve(r_a, d) @ basis.T
    if keep is not None:
        step = step * keep.to(step.device)
    b_new = b + step
    if update_a:
        gain = None
    elif keep is None and _invertible(r_a):  # the exact minimiser: the optimality identity
        gain = float((d * rhs).sum()) + lam * float((d * d).sum())
    else:  # any other step: measure it, in the gram's precision like the stage's other error checks
        moved = (r_a @ step).to(gram.dtype)
        quadratic = float(((moved @ gram.to(moved.device)) * moved).sum())
        gain = 2.0 * float((moved.to(torch.float64) * sc).sum()) - quadratic
    a_new = a
    if update_a:
        r2 = w - a @ b_new
        a_new = a + _ridge_solve(b_new @ c @ b_new.T, r2 @ c @ b_new.T, lam)
    return FactorFit(up=a_new.to(A.dtype), down=b_new.to(B.dtype), gain=gain)


def _upper_solve(r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """E with R E = D for the QR factor R; the minimum-norm E when R is singular (rank-deficient A)."""
    if _invertible(r):
        return torch.linalg.solve_triangular(r, d, upper=True)
    return torch.linalg.pinv(r) @ d


def _invertible(r: torch.Tensor) -> bool:
    """Whether the triangular QR factor R is safely invertible (no diagonal below rounding level)."""
    diagonal = torch.diagonal(r).abs()
    if not diagonal.numel():
        return False
    cut = float(diagonal.max()) * max(r.shape) * torch.finfo(torch.float64).eps
    return float(diagonal.min()) > cut


# --- structured removal -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RemovalFit:
    """A consumer refitted on its kept inputs K after inputs D were removed.

    ``weight`` = W_K + Δ (m × |K|), ``bias_shift`` = β (m,), and the calibration error
    ‖W' X_K + β1ᵀ − W X‖² of plain removal (``before``: Δ = 0, β = 0) and of the fit (``after``).
    """

    weight: torch.Tensor
    bias_shift: torch.Tensor
    before: float
    after: float


def removal_fit(
    W: torch.Tensor,
    keep: torch.Tensor,
    gram: torch.Tensor,
    sums: torch.Tensor | None,
    count: int,
    lam: float,
    projector: NullSpace | torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    refit: bool = True,
) -> RemovalFit:
    """Δ, β minimising ‖(W_K + Δ) X_K + β1ᵀ − W X‖² + λ‖Δ‖² once the inputs D = ¬keep are gone.

    W X = W_K X_K + W_D X_D, so the residual is Δ X_K + β1ᵀ − W_D X_D. Minimising over β first
    gives β = W_D μ_D − Δ μ_K (the removed inputs' mean contribution moves into the bias) and
    leaves the centred problem ‖Δ X̃_K − W_D X̃_D‖² + λ‖Δ‖² with Σ = C − s sᵀ / N (s = X1):

        Δ = W_D Σ_DK U (Uᵀ Σ_KK U + λI)⁻¹ Uᵀ      (U = I without a projector)

    — the AlphaEdit ridge solve of ``dense_correction`` with R C replaced by W_D Σ_DK, so with a
    projector onto the null space of the preserved inputs (at the kept channels) the refit leaves
    their outputs alone up to the bias shift. ``mask`` (m × |K|) keeps a pruned consumer's zeros
    (rows solved as ``masked_correction``). Without ``sums`` (no intercept) Σ = C and β = 0;
    ``refit=False`` gives only the bias shift (Δ = 0). The errors come from the optimality
    identity e(Δ*) = e_c(0) − ⟨Δ*, W_D Σ_DK⟩ − λ‖Δ*‖², e_c(0) = tr(W_D Σ_DD W_Dᵀ).
    """
    _check_square(gram, "gram")
    if keep.dtype != torch.bool or keep.shape != (W.shape[1],) or gram.shape[0] != W.shape[1]:
        raise ValueError(f"keep must be a bool vector over the {W.shape[1]} inputs and gram {W.shape[1]} × "
                         f"{W.shape[1]}, got {keep.dtype} {tuple(keep.shape)} and {tuple(gram.shape)}")
    _check_lam(lam)
    c = _sym64(gram).to(W.device)
    w = W.detach().to(torch.float64)
    keep = keep.to(W.device)
    kept, dropped = keep.nonzero().squeeze(1), (~keep).nonzero().squeeze(1)
    w_d = w[:, dropped]
    before = float(((w_d @ c[dropped][:, dropped]) * w_d).sum())
    centred = c
    if sums is not None and count:
        s = sums.detach().to(device=W.device, dtype=torch.float64)
        centred = c - torch.outer(s, s) / count
    sigma_kk = centred[kept][:, kept]
    rc = w_d @ centred[dropped][:, kept]
    base = float(((w_d @ centred[dropped][:, dropped]) * w_d).sum())
    if not refit or kept.numel() == 0:
        delta = torch.zeros_like(w[:, kept])
    elif mask is not None:
        _check_mask(mask, w[:, kept])
        delta = _masked_delta(sigma_kk, rc, mask.to(W.device), lam, projector)
    else:
        basis = _basis(projector, sigma_kk.shape[0], sigma_kk.device)
        delta = (_ridge_solve(sigma_kk, rc, lam) if basis is None
                 else _ridge_solve(basis.T @ sigma_kk @ basis, rc @ basis, lam) @ basis.T)
    after = base - float((delta * rc).sum()) - lam * float((delta * delta).sum())
    if sums is not None and count:
        mu = sums.detach().to(device=W.device, dtype=torch.float64) / count
        shift = w_d @ mu[dropped] - delta @ mu[kept]
    else:
        shift = torch.zeros(W.shape[0], dtype=torch.float64, device=W.device)
    return RemovalFit(weight=(w[:, kept] + delta).to(W.dtype), bias_shift=shift.to(W.dtype), before=before,
                      after=max(after, 0.0))


# --- iterative ----------------------------------------------------------------------------------


def gradient_correction(
    W: torch.Tensor,
    W_c: torch.Tensor,
    gram: torch.Tensor,
    lam: float,
    mask: torch.Tensor | None = None,
    projector: NullSpace | torch.Tensor | None = None,
    lr: float | None = None,
    steps: int = 500,
) -> GradientCorrection:
    """Δ_{t+1} = Π(Δ_t − η ∇f), ∇f = 2(W_c + Δ_t − W) C + 2λΔ_t, Π(Δ) = (Δ P) ⊙ mask, Δ_0 = 0.

    The default step η = 1 / (2(λ_max(C) + λ)) is 1/L for the gradient's Lipschitz constant L.
    With at most one constraint Π is the Euclidean projection onto the feasible set, so f never
    increases and the iterates converge to the matching closed form. With both, Π is a composition of
    two projections, not the projection onto their intersection: the mask holds exactly (pruned
    entries stay zero) but Δ K₀ ≈ 0 only approximately; ``masked_correction`` solves the
    combined constraint exactly.
    """
    _check_pair(W, W_c, gram)
    _check_lam(lam)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    c = _sym64(gram).to(W.device)
    r = W.detach().to(torch.float64) - W_c.detach().to(torch.float64)
    if lr is None:
        curvature = 2.0 * (float(torch.linalg.eigvalsh(c)[-1].clamp(min=0.0)) + lam)
        lr = 1.0 / curvature if curvature > 0 else 1.0  # C = 0 and λ = 0: f is constant
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    p = _projector64(projector, c.shape[0], c.device)
    keep = None
    if mask is not None:
        _check_mask(mask, W)
        keep = mask.to(device=W.device, dtype=torch.float64)
    delta = torch.zeros_like(r)
    losses = []  # device scalars, read once at the end so a GPU run does not sync every step
    for t in range(steps + 1):
        err = delta - r
        err_c = err @ c
        losses.append((err_c * err).sum() + lam * (delta * delta).sum())
        if t == steps:
            break
        delta = delta - lr * (2.0 * err_c + 2.0 * lam * delta)
        if p is not None:
            delta = delta @ p
        if keep is not None:
            delta = delta * keep
    return GradientCorrection(delta=delta.to(W.dtype), losses=torch.stack(losses).cpu())


# --- linear algebra -----------------------------------------------------------------------------


# Rows solved together are chosen so their stacked (rows, k, k) float64 Gram blocks fit in this.
_MAX_BLOCK_BYTES = 64 * 2**20


# Up to this fraction pruned, solving for the pruned entries beats the kept-column systems and CG
# (3072 × 768 float64, 2 cores: 0.5 s vs 10 s CG at 10 %, 2.6 s vs 5.1 s at 30 %, 4.8 s vs 5.7 s at
# 40 %, 6.1 s vs 3.5 s at 50 %).
_COMPLEMENT_MAX_PRUNED = 0.4

# Above this many kept columns per row, per-row Cholesky (m · k³/3) loses to conjugate gradients.
_CG_MIN_COLUMNS = 256
_CG_MAX_ITERS = 500
_CG_TOL = 1e-6


def _masked_rows_complement(c: torch.Tensor, rc: torch.Tensor, mask: torch.Tensor, lam: float) -> torch.Tensor:
    """The same per-row solutions as ``_masked_rows_batched``, from the dense solution and the pruned entries.

    With G = C + λI, H = G⁻¹ and the dense solution δ* = (RC)_i H, row i's solution with its
    pruned set P_i held at zero is δ = δ* − δ*_P (H_PP)⁻¹ H_P· (a Lagrange multiplier per pruned
    entry). One n × n factorisation for the layer, then a |P| × |P| solve per row: DARE and
    magnitude pruning at sparsity s give |P| = s·n, so at small s this costs m · (sn)³/3 instead
    of m · ((1 − s)n)³/3 for the kept-column systems (or hundreds of CG sweeps of 2mn²).
    """
    system = _plus_ridge(c, lam)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0:  # λ tiny next to ‖C‖: rounding broke positive definiteness; the kept-column path copes
        return _masked_rows_batched(c, rc, mask, lam, torch.zeros_like(rc))
    inverse = torch.cholesky_inverse(factor)
    dense = rc @ inverse  # δ* for every row: the inverse is needed below anyway, and one GEMM beats two solves
    # The multipliers, scattered into an m × n matrix (zero off each row's pruned set), so that
    # every row's correction ν_i H_P· is one product N H rather than m gathers of |P| rows of H.
    multipliers = torch.zeros_like(dense)
    fallback: list[torch.Tensor] = []
    pruned = ~mask
    counts = pruned.sum(dim=1)
    n = c.shape[0]
    for k in counts.unique().tolist():
        if k == 0 or k == n:
            continue  # nothing pruned: δ* as is; everything pruned: zeroed below
        rows = (counts == k).nonzero().squeeze(1)
        for chunk in rows.split(max(1, _MAX_BLOCK_BYTES // (8 * k * k))):
            cols = pruned[chunk].nonzero()[:, 1].view(len(chunk), k)  # pruned columns, ascending
            block_factors, infos = torch.linalg.cholesky_ex(inverse[cols[:, :, None], cols[:, None, :]])
            if bool((infos != 0).any()):  # as above, for these rows only
                fallback.append(chunk)
                continue
            solved = torch.cholesky_solve(dense[chunk[:, None], cols][:, :, None], block_factors)[:, :, 0]
            multipliers[chunk[:, None], cols] = solved
    delta = (dense - multipliers @ inverse) * mask
    for chunk in fallback:
        delta[chunk] = _masked_rows_batched(c, rc[chunk], mask[chunk], lam, torch.zeros_like(rc[chunk]))
    return delta


def _masked_rows_cg(c: torch.Tensor, rc: torch.Tensor, mask: torch.Tensor, lam: float) -> torch.Tensor:
    """The same per-row solutions as ``_masked_rows_batched``, by Jacobi-preconditioned CG on all rows at once.

    Row i solves (C + λI)_{J_i J_i} δ = (RC)_{i,J_i}; masking the residual and search direction
    keeps every iterate on J_i. One iteration is one (m × n)(n × n) product, so the cost is
    iterations · 2mn² instead of m · k³/3; iterations stop when every row's residual is below
    ``_CG_TOL`` of its right-hand side (in float64, the solution matches the direct solve).
    """
    keep = mask.to(c.dtype)
    system = _plus_ridge(c, lam)
    inverse_diagonal = 1.0 / torch.diagonal(system)
    rhs = rc * keep
    x = torch.zeros_like(rhs)
    residual = rhs.clone()
    z = residual * inverse_diagonal
    direction = z.clone()
    rz = (residual * z).sum(dim=1)
    target = _CG_TOL * rhs.norm(dim=1).clamp_min(torch.finfo(c.dtype).tiny)
    for _ in range(_CG_MAX_ITERS):
        if bool((residual.norm(dim=1) <= target).all()):
            break
        product = (direction @ system) * keep
        curvature = (direction * product).sum(dim=1)
        alpha = torch.where(curvature > 0, rz / curvature.clamp_min(torch.finfo(c.dtype).tiny), torch.zeros_like(rz))
        x += alpha[:, None] * direction
        residual -= alpha[:, None] * product
        z = residual * inverse_diagonal
        rz_next = (residual * z).sum(dim=1)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(torch.finfo(c.dtype).tiny), torch.zeros_like(rz))
        direction = z + beta[:, None] * direction
        rz = rz_next
    return x * keep


def _masked_rows_batched(c: torch.Tensor, rc: torch.Tensor, mask: torch.Tensor, lam: float,
                         delta: torch.Tensor) -> torch.Tensor:
    """δ_{i,J_i} = (RC)_{i,J_i} (C_{J_i J_i} + λI)⁻¹ for every row, batched over rows with equal |J_i|.

    Unstructured and per-row pruning give every row a different support, so there is no shared
    factorisation; stacking the rows' Gram blocks and factorising them in one batched Cholesky
    keeps the cost at the arithmetic (m · k³/3) instead of m Python round trips.
    """
    counts = mask.sum(dim=1)
    for k in counts.unique().tolist():
        if k == 0:
            continue  # fully pruned rows: nothing may change
        rows = (counts == k).nonzero().squeeze(1)
        for chunk in rows.split(max(1, _MAX_BLOCK_BYTES // (8 * k * k))):
            cols = mask[chunk].nonzero()[:, 1].view(len(chunk), k)  # kept columns, ascending
            blocks = c[cols[:, :, None], cols[:, None, :]]
            if lam > 0:
                blocks.diagonal(dim1=1, dim2=2).add_(lam)
            rhs = torch.gather(rc[chunk], 1, cols).unsqueeze(2)
            factor, info = torch.linalg.cholesky_ex(blocks)
            if bool((info != 0).any()) or lam <= 0:
                solution = torch.stack([_ridge_solve(c[cols[i]][:, cols[i]], rhs[i, :, 0][None], lam)[0]
                                        for i in range(len(chunk))])
            else:
                solution = torch.cholesky_solve(rhs, factor)[:, :, 0]
            delta[chunk[:, None], cols] = solution
    return delta



def _ridge_solve(g: torch.Tensor, rhs: torch.Tensor, lam: float) -> torch.Tensor:
    """X with X (G + λI) = rhs for symmetric PSD G; pseudo-inverse (minimum norm) when λ = 0."""
    if lam > 0:
        system = _plus_ridge(g, lam)
        # Cholesky costs half of LU; rounding can still break it when λ is tiny next to ‖G‖.
        factor, info = torch.linalg.cholesky_ex(system)
        if int(info) == 0:
            return torch.cholesky_solve(rhs.T, factor).T
        return torch.linalg.solve(system, rhs.T).T
    return rhs @ torch.linalg.pinv(g, hermitian=True)


def _plus_ridge(g: torch.Tensor, lam: float) -> torch.Tensor:
    """G + λI as a new matrix, without building an n × n identity (an n² allocation and pass at n = 3,072)."""
    system = g.clone()
    system.diagonal().add_(lam)
    return system


def _row_basis(p_jj: torch.Tensor, tol: float) -> torch.Tensor:
    """Orthonormal Q spanning {v : P_JJ v = v}: eigenvectors of P_JJ with eigenvalue ≥ 1 − tol."""
    evals, evecs = torch.linalg.eigh(_sym64(p_jj))
    return evecs[:, evals >= 1.0 - tol]


def _basis(projector: NullSpace | torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
    """U (n × k) with orthonormal columns spanning range(P), or None when unconstrained."""
    if projector is None:
        return None
    if isinstance(projector, NullSpace):
        _check_projector_size(projector.projector, n)
        return projector.basis.to(device=device, dtype=torch.float64)
    _check_projector_size(projector, n)
    # An orthogonal projector has eigenvalues 0 or 1; 0.5 separates them at any precision.
    evals, evecs = torch.linalg.eigh(_sym64(projector).to(device))
    return evecs[:, evals > 0.5]


def _projector64(projector: NullSpace | torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
    """P as float64 on ``device`` (rebuilt from the exact basis when given a NullSpace)."""
    if projector is None:
        return None
    if isinstance(projector, NullSpace):
        _check_projector_size(projector.projector, n)
        u = projector.basis.to(device=device, dtype=torch.float64)
        return u @ u.T
    _check_projector_size(projector, n)
    return _sym64(projector).to(device)


def _in_range_tol(dtype: torch.dtype) -> float:
    # A projector stored in float32 is only idempotent to ~eps; its unit eigenvalues blur as much.
    return max(_IN_RANGE_TOL_F64, 100.0 * torch.finfo(dtype).eps) if dtype.is_floating_point else _IN_RANGE_TOL_F64


def _sym64(x: torch.Tensor) -> torch.Tensor:
    # Symmetrise before widening: a float32 Gram is only float32-accurate anyway, and the
    # transposed add (a cache-unfriendly pass) moves half the bytes.
    x = x.detach()
    return (0.5 * (x + x.T)).to(torch.float64)


# --- validation ---------------------------------------------------------------------------------


def _check_square(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"{name} must be a square (n × n) matrix, got shape {tuple(x.shape)}")


def _check_pair(W: torch.Tensor, W_c: torch.Tensor, gram: torch.Tensor) -> None:
    if W.dim() != 2:
        raise ValueError(f"weights must be 2-D (out, in); reshape conv kernels first, got shape {tuple(W.shape)}")
    if W.shape != W_c.shape:
        raise ValueError(f"dense and compressed weights differ in shape: {tuple(W.shape)} vs {tuple(W_c.shape)}")
    _check_square(gram, "gram")
    if gram.shape[0] != W.shape[1]:
        raise ValueError(f"gram is {gram.shape[0]} × {gram.shape[0]} but the weight has {W.shape[1]} inputs")


def _check_lowrank(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, gram: torch.Tensor) -> None:
    if A.dim() != 2 or B.dim() != 2 or A.shape[1] != B.shape[0]:
        raise ValueError(f"low-rank factors must be A (m, r) and B (r, n), got {tuple(A.shape)} and {tuple(B.shape)}")
    if (A.shape[0], B.shape[1]) != tuple(W.shape):
        raise ValueError(f"A @ B is {A.shape[0]} × {B.shape[1]} but the weight is {tuple(W.shape)}")
    _check_pair(W, W, gram)


def _check_lam(lam: float) -> None:
    if not (lam >= 0.0 and lam != float("inf")):
        raise ValueError(f"ridge strength λ must be finite and >= 0, got {lam}")


def _check_mask(mask: torch.Tensor, W: torch.Tensor) -> None:
    if mask.dtype != torch.bool or mask.shape != W.shape:
        raise ValueError(
            f"mask must be a bool keep mask of shape {tuple(W.shape)}, got {mask.dtype} {tuple(mask.shape)}"
        )


def _check_projector_size(p: torch.Tensor, n: int) -> None:
    if p.shape != (n, n):
        raise ValueError(f"projector must be {n} × {n} to match the gram, got {tuple(p.shape)}")
