"""AlphaEdit correction: closed forms are the minimisers, constraints hold, errors go down."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rcc.compression.alphaedit import (
    NullSpace,
    dense_correction,
    gradient_correction,
    lowrank_correction,
    lowrank_fit,
    masked_correction,
    masked_fit,
    null_space_projector,
    reconstruction_error,
    weighted_gram,
)

M, N_IN, N_CAL, N_KEEP = 24, 32, 128, 8  # K₀ has fewer samples than inputs, so a null space exists


@pytest.fixture(autouse=True)
def _one_thread():
    # These matrices are tiny: with a busy CPU, OpenMP threads spin on barriers and a 32 × 32
    # matmul takes milliseconds instead of microseconds.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _iid_inputs(seed: int = 0) -> torch.Tensor:
    # Well-conditioned C (eigenvalues within ~10×): gradient descent converges in a few hundred steps.
    return torch.randn(N_IN, N_CAL, generator=_gen(seed), dtype=torch.float64)


def _correlated_inputs(seed: int = 1, latent: int = 12) -> torch.Tensor:
    # Real activations are correlated across channels; that is what lets kept columns stand in for pruned ones.
    g = _gen(seed)
    mix = torch.randn(N_IN, latent, generator=g, dtype=torch.float64)
    return mix @ torch.randn(latent, N_CAL, generator=g, dtype=torch.float64) + 0.1 * torch.randn(
        N_IN, N_CAL, generator=g, dtype=torch.float64
    )


def _gram(x: torch.Tensor) -> torch.Tensor:
    return x @ x.T


def _weights(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    w = torch.randn(M, N_IN, generator=g, dtype=torch.float64)
    return w, w + 0.3 * torch.randn(M, N_IN, generator=g, dtype=torch.float64)


def _preserved(seed: int = 3) -> torch.Tensor:
    return torch.randn(N_IN, N_KEEP, generator=_gen(seed), dtype=torch.float64)


def _half_mask(w: torch.Tensor) -> torch.Tensor:
    # Per-row magnitude pruning at 50%: every row its own pattern.
    kth = w.abs().kthvalue(w.shape[1] // 2, dim=1, keepdim=True).values
    return w.abs() > kth


def _objective(w, w_c, delta, c, lam) -> float:
    return reconstruction_error(w, w_c + delta, c) + lam * float((delta * delta).sum())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a) / torch.linalg.norm(b))


# --- statistics ---------------------------------------------------------------------------------


def test_reconstruction_error_is_the_output_error_on_calibration_inputs():
    x = _iid_inputs()
    w, w_c = _weights()
    direct = float(((w_c - w) @ x).pow(2).sum())
    assert reconstruction_error(w, w_c, _gram(x)) == pytest.approx(direct, rel=1e-10)


def test_null_space_projector_spans_the_null_space_of_the_preserved_inputs():
    k0 = _preserved()
    ns = null_space_projector(_gram(k0))
    p = ns.projector
    assert ns.dim == N_IN - N_KEEP
    assert ns.basis.shape == (N_IN, ns.dim)
    assert torch.allclose(p @ p, p, atol=1e-12) and torch.allclose(p, p.T, atol=1e-12)
    assert _rel(p @ k0, k0) < 1e-10


def test_null_space_threshold_is_relative_and_empty_gram_frees_everything():
    k0 = _preserved()
    # Scaling the preserved set does not change which directions are null.
    assert null_space_projector(_gram(1e3 * k0)).dim == null_space_projector(_gram(k0)).dim
    assert null_space_projector(_gram(k0), threshold=1.0).dim == N_IN - 1  # all but the top direction
    free = null_space_projector(torch.zeros(N_IN, N_IN))
    assert free.dim == N_IN and torch.allclose(free.projector, torch.eye(N_IN, dtype=torch.float64))
    with pytest.raises(ValueError, match="threshold"):
        null_space_projector(_gram(k0), threshold=-0.1)


def test_weighted_gram_is_the_gram_of_scaled_inputs():
    x = _iid_inputs()
    w = torch.rand(N_IN, generator=_gen(5), dtype=torch.float64)
    assert torch.allclose(weighted_gram(_gram(x), w), _gram(w[:, None] * x))
    with pytest.raises(ValueError, match="non-negative"):
        weighted_gram(_gram(x), -w)


# --- dense --------------------------------------------------------------------------------------


def test_dense_correction_restores_calibration_outputs():
    c = _gram(_iid_inputs())
    w, w_c = _weights()
    before = reconstruction_error(w, w_c, c)
    delta = dense_correction(w, w_c, c, lam=1e-6)
    assert reconstruction_error(w, w_c + delta, c) < 1e-8 * before


def test_projector_keeps_preserved_outputs_where_the_unconstrained_update_moves_them():
    c, k0 = _gram(_iid_inputs()), _preserved()
    w, w_c = _weights()
    ns = null_space_projector(_gram(k0))
    free = dense_correction(w, w_c, c, lam=1e-3)
    kept = dense_correction(w, w_c, c, lam=1e-3, projector=ns)
    assert _rel(free @ k0, w @ k0) > 0.1
    assert _rel(kept @ k0, w @ k0) < 1e-10
    before = reconstruction_error(w, w_c, c)
    # The null space has 3/4 of the dimensions, so most of the error is still recoverable.
    assert reconstruction_error(w, w_c + kept, c) < 0.5 * before


def test_projected_closed_form_matches_its_full_space_formula_and_a_plain_projector_tensor():
    c, k0 = _gram(_iid_inputs()), _preserved()
    w, w_c = _weights()
    ns = null_space_projector(_gram(k0))
    lam = 0.5
    p = ns.projector
    explicit = (w - w_c) @ c @ p @ torch.linalg.inv(p @ c @ p + lam * torch.eye(N_IN, dtype=torch.float64))
    delta = dense_correction(w, w_c, c, lam, projector=ns)
    assert torch.allclose(delta, explicit, atol=1e-9)
    assert torch.allclose(delta, delta @ p, atol=1e-12)  # rows lie in range(P)
    assert torch.allclose(dense_correction(w, w_c, c, lam, projector=p.float()), delta, atol=1e-5)


@pytest.mark.parametrize("constrained", [False, True])
def test_dense_closed_form_is_the_gradient_descent_minimiser(constrained):
    c, k0 = _gram(_iid_inputs()), _preserved()
    w, w_c = _weights()
    ns = null_space_projector(_gram(k0)) if constrained else None
    lam = 2.0
    closed = dense_correction(w, w_c, c, lam, projector=ns)
    found = gradient_correction(w, w_c, c, lam, projector=ns, steps=400)
    assert torch.allclose(found.delta, closed, atol=1e-8)
    losses = found.losses
    assert losses.shape == (401,)
    assert bool((losses[1:] <= losses[:-1] + 1e-9).all())
    assert float(losses[-1]) == pytest.approx(_objective(w, w_c, closed, c, lam), rel=1e-10)


def test_large_ridge_drives_every_correction_to_zero():
    c, k0 = _gram(_iid_inputs()), _preserved()
    w, w_c = _weights()
    r = w - w_c
    norms = [float(torch.linalg.norm(dense_correction(w, w_c, c, lam))) for lam in (0.0, 10.0, 1e3, 1e6)]
    assert norms == sorted(norms, reverse=True)
    huge = 1e12
    assert _rel(dense_correction(w, w_c, c, huge), r) < 1e-7
    assert _rel(dense_correction(w, w_c, c, huge, projector=null_space_projector(_gram(k0))), r) < 1e-7
    assert _rel(masked_correction(w, w_c, _half_mask(w), c, huge), r) < 1e-7
    a, b = _rank_factors(w, 6)
    _, b2 = lowrank_correction(w, a, b, c, huge)
    assert _rel(b2 - b, b) < 1e-7


def test_importance_weighting_favours_the_weighted_channels():
    c = _gram(_correlated_inputs())
    w, w_c = _weights()
    important = torch.arange(N_IN) < 8
    weights = torch.where(important, 10.0, 1.0).to(torch.float64)
    lam = float(torch.trace(c)) / N_IN  # strong enough that not every error can be removed

    def channel_error(delta: torch.Tensor) -> float:
        e = (w_c + delta - w)[:, important]
        return float(((e @ c[important][:, important]) * e).sum())

    plain = dense_correction(w, w_c, c, lam)
    weighted = dense_correction(w, w_c, c, lam, importance=weights)
    assert channel_error(weighted) < 0.5 * channel_error(plain)
    cw = weighted_gram(c, weights)
    assert reconstruction_error(w, w_c + weighted, cw) < reconstruction_error(w, w_c + plain, cw)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), lam=st.floats(0.0, 1e4), constrained=st.booleans())
def test_correction_never_raises_the_calibration_error(seed, lam, constrained):
    # f(Δ*) ≤ f(0) gives err(Δ*) ≤ err(0) − λ‖Δ*‖².
    c, k0 = _gram(_correlated_inputs(seed)), _preserved(seed + 1)
    w, w_c = _weights(seed + 2)
    ns = null_space_projector(_gram(k0)) if constrained else None
    delta = dense_correction(w, w_c, c, lam, projector=ns)
    before = reconstruction_error(w, w_c, c)
    after = reconstruction_error(w, w_c + delta, c)
    assert after <= before - lam * float((delta * delta).sum()) + 1e-9 * before


def test_float32_weights_come_back_float32():
    c = _gram(_iid_inputs()).float()
    w, w_c = (t.float() for t in _weights())
    assert dense_correction(w, w_c, c, 1.0).dtype == torch.float32
    assert masked_correction(w, w_c, _half_mask(w), c, 1.0).dtype == torch.float32


# --- masked -------------------------------------------------------------------------------------


def test_masked_correction_keeps_pruned_entries_zero_and_compensates():
    c = _gram(_correlated_inputs())
    w, _ = _weights()
    mask = _half_mask(w)
    w_c = w * mask
    delta = masked_correction(w, w_c, mask, c, lam=1e-6)
    assert bool((delta[~mask] == 0).all())
    assert bool(((w_c + delta)[~mask] == 0).all())
    assert reconstruction_error(w, w_c + delta, c) < 0.1 * reconstruction_error(w, w_c, c)


def test_masked_correction_solves_each_row_restricted_problem():
    c = _gram(_iid_inputs())
    w, _ = _weights()
    mask = _half_mask(w)
    w_c = w * mask
    lam = 3.0
    delta = masked_correction(w, w_c, mask, c, lam)
    rc = (w - w_c) @ c
    for i in range(M):
        j = mask[i].nonzero().squeeze(1)
        expected = torch.linalg.solve(c[j][:, j] + lam * torch.eye(len(j), dtype=torch.float64), rc[i, j])
        assert torch.allclose(delta[i, j], expected, atol=1e-10)
    found = gradient_correction(w, w_c, c, lam, mask=mask, steps=400)
    assert bool((found.delta[~mask] == 0).all())
    assert torch.allclose(found.delta, delta, atol=1e-8)


@pytest.mark.parametrize("sparsity", [0.1, 0.4, 0.7])
def test_every_masked_solver_gives_the_per_row_solutions_of_random_masks(sparsity):
    # DARE-like masks: each row keeps a different number of columns; one row keeps all, one none.
    from rcc.compression.alphaedit import _masked_rows_batched, _masked_rows_cg, _masked_rows_complement

    c = _gram(_correlated_inputs())
    w, _ = _weights()
    mask = torch.rand(w.shape, generator=_gen(11)) >= sparsity
    mask[0] = True
    mask[1] = False
    w_c = w * mask
    lam = 0.05 * float(torch.diagonal(c).mean())
    rc = (w - w_c) @ c
    direct = _masked_rows_batched(c, rc, mask, lam, torch.zeros_like(rc))
    for i in (2, 3, M - 1):  # the batched solver is the per-row definition
        j = mask[i].nonzero().squeeze(1)
        expected = torch.linalg.solve(c[j][:, j] + lam * torch.eye(len(j), dtype=torch.float64), rc[i, j])
        assert torch.allclose(direct[i, j], expected, atol=1e-10)
    complement = _masked_rows_complement(c, rc, mask, lam)
    assert bool((complement[~mask] == 0).all()) and bool((complement[1] == 0).all())
    assert torch.allclose(complement, direct, atol=1e-9)
    assert _rel(_masked_rows_cg(c, rc, mask, lam) - direct, direct) < 1e-5  # CG stops at a relative residual
    assert torch.allclose(masked_correction(w, w_c, mask, c, lam), direct, atol=1e-9)


def test_shared_patterns_and_full_mask_match_the_per_row_and_dense_forms():
    c = _gram(_iid_inputs())
    w, w_c = _weights()
    full = torch.ones_like(w, dtype=torch.bool)
    assert torch.allclose(masked_correction(w, w_c, full, c, 1.0), dense_correction(w, w_c, c, 1.0), atol=1e-10)
    # Column-structured: one pattern for every row, and a fully pruned row that must stay untouched.
    columns = torch.rand(N_IN, generator=_gen(7)) < 0.6
    mask = columns.expand(M, N_IN).clone()
    mask[5] = False
    delta = masked_correction(w, w_c, mask, c, 1.0)
    assert bool((delta[5] == 0).all())
    j = columns.nonzero().squeeze(1)
    expected = ((w - w_c) @ c)[:, j] @ torch.linalg.inv(c[j][:, j] + torch.eye(len(j), dtype=torch.float64))
    assert torch.allclose(delta[mask].view(M - 1, -1), torch.cat([expected[:5], expected[6:]]), atol=1e-10)


def test_masked_correction_with_projector_honours_both_constraints():
    c, k0 = _gram(_correlated_inputs()), _preserved()
    w, _ = _weights()
    mask = _half_mask(w)
    w_c = w * mask
    ns = null_space_projector(_gram(k0))
    delta = masked_correction(w, w_c, mask, c, lam=1e-3, projector=ns)
    assert bool((delta[~mask] == 0).all())
    assert _rel(delta @ k0, w @ k0) < 1e-8
    # |J| = 16 kept columns meet the 24-dim null space in 8 dims per row: still room to compensate.
    assert reconstruction_error(w, w_c + delta, c) < 0.8 * reconstruction_error(w, w_c, c)
    # The gradient variant composes the two projections: the mask still holds exactly.
    found = gradient_correction(w, w_c, c, 1e-3, mask=mask, projector=ns, steps=50)
    assert bool((found.delta[~mask] == 0).all())
    assert float(found.losses[-1]) < float(found.losses[0])


def test_masked_correction_rejects_a_float_mask():
    c = _gram(_iid_inputs())
    w, w_c = _weights()
    with pytest.raises(ValueError, match="bool keep mask"):
        masked_correction(w, w_c, torch.ones_like(w), c, 1.0)


# --- low rank -----------------------------------------------------------------------------------


def _nearly_low_rank_weights(seed: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    # W close to rank 6, W_c = W plus a compression-like perturbation: truncation to rank 6 keeps
    # W's structure, so what is left to restore is mostly the perturbation.
    g = _gen(seed)
    w = torch.randn(M, 6, generator=g, dtype=torch.float64) @ torch.randn(6, N_IN, generator=g, dtype=torch.float64)
    w = w + 0.05 * torch.randn(M, N_IN, generator=g, dtype=torch.float64)
    return w, w + 0.3 * torch.randn(M, N_IN, generator=g, dtype=torch.float64)


def _rank_factors(w: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return u[:, :r] * s[:r], vh[:r]


def test_lowrank_correction_keeps_rank_and_lowers_the_error():
    # As in the cascade: the factors come from the SVD of an already-pruned weight, not of W.
    c = _gram(_correlated_inputs())
    w, w_c = _nearly_low_rank_weights()
    a, b = _rank_factors(w_c, 6)
    before = reconstruction_error(w, a @ b, c)
    a1, b1 = lowrank_correction(w, a, b, c, lam=1e-3)
    assert a1.shape == a.shape and b1.shape == b.shape
    assert torch.equal(a1, a)  # B step only by default
    after_b = reconstruction_error(w, a1 @ b1, c)
    assert after_b < 0.5 * before
    a2, b2 = lowrank_correction(w, a, b, c, lam=1e-3, update_a=True)
    assert a2.shape == a.shape and b2.shape == b.shape
    assert reconstruction_error(w, a2 @ b2, c) < 0.5 * after_b


def test_lowrank_b_step_cannot_improve_the_plain_svd_of_w_but_the_a_step_can():
    # Aᵀ(W − A B) = 0 for the truncated SVD of W: ΔB only moves outputs inside range(A) ⟂ R X.
    c = _gram(_correlated_inputs())
    w, _ = _weights()
    a, b = _rank_factors(w, 6)
    _, b1 = lowrank_correction(w, a, b, c, lam=1e-3)
    assert _rel(b1 - b, b) < 1e-12
    a2, b2 = lowrank_correction(w, a, b, c, lam=1e-3, update_a=True)
    assert reconstruction_error(w, a2 @ b2, c) < 0.9 * reconstruction_error(w, a @ b, c)


@pytest.mark.parametrize("lam", [0.0, 5.0])
def test_lowrank_b_step_is_the_exact_minimiser(lam):
    # The weight change is AΔB, regularised as such: ‖AΔB X − R X‖² + λ‖AΔB‖² is stationary at
    # AᵀA ΔB (C + λI) = Aᵀ R C. Brute force over vec(ΔB), column-major: ((C + λI) ⊗ AᵀA) vec(ΔB).
    # Factors from a pruned W (else Aᵀ R = 0 and ΔB = 0 would pass trivially).
    c = _gram(_iid_inputs())
    w, w_c = _nearly_low_rank_weights()
    a, b = _rank_factors(w_c, 4)
    r = w - a @ b
    lhs = torch.kron(c + lam * torch.eye(N_IN, dtype=torch.float64), a.T @ a)
    rhs = (a.T @ r @ c).T.reshape(-1)
    expected = torch.linalg.solve(lhs, rhs).reshape(N_IN, 4).T
    _, b1 = lowrank_correction(w, a, b, c, lam)
    assert torch.allclose(b1 - b, expected, atol=1e-8)


def test_lowrank_b_step_with_a_projector_is_the_exact_minimiser_in_the_null_space():
    # ΔB = E Uᵀ (U: the null-space basis): ((UᵀCU + λI) ⊗ AᵀA) vec(E) = vec(Aᵀ R C U).
    lam = 0.5
    c, k0 = _gram(_correlated_inputs()), _preserved()
    w, w_c = _nearly_low_rank_weights()
    a, b = _rank_factors(w_c, 4)
    ns = null_space_projector(_gram(k0))
    u = ns.basis
    r = w - a @ b
    g = u.T @ c @ u
    lhs = torch.kron(g + lam * torch.eye(g.shape[0], dtype=torch.float64), a.T @ a)
    expected = torch.linalg.solve(lhs, (a.T @ r @ c @ u).T.reshape(-1)).reshape(g.shape[0], 4).T @ u.T
    _, b1 = lowrank_correction(w, a, b, c, lam, projector=ns)
    assert torch.allclose(b1 - b, expected, atol=1e-8)


def test_lowrank_b_step_with_a_rank_deficient_a_takes_the_minimum_norm_change():
    c = _gram(_iid_inputs())
    w, w_c = _nearly_low_rank_weights()
    a, b = _rank_factors(w_c, 4)
    a[:, 3] = 0.0  # a dead factor column: its row of B cannot change the outputs
    _, b1 = lowrank_correction(w, a, b, c, lam=1e-3)
    assert torch.isfinite(b1).all()
    assert torch.allclose(b1[3], b[3], atol=1e-10)  # minimum norm: no change where it does nothing
    _, live = lowrank_correction(w, a[:, :3], b[:3], c, lam=1e-3)  # the same problem without the dead column
    assert torch.allclose(b1[:3], live, atol=1e-9)
    assert reconstruction_error(w, a @ b1, c) < reconstruction_error(w, a @ b, c)


def test_lowrank_correction_with_projector_keeps_preserved_outputs():
    c, k0 = _gram(_correlated_inputs()), _preserved()
    w, w_c = _nearly_low_rank_weights()
    a, b = _rank_factors(w_c, 6)
    ns = null_space_projector(_gram(k0))
    a1, b1 = lowrank_correction(w, a, b, c, lam=1e-3, projector=ns)
    assert _rel(a1 @ b1 @ k0 - a @ b @ k0, w @ k0) < 1e-8
    assert reconstruction_error(w, a1 @ b1, c) < 0.5 * reconstruction_error(w, a @ b, c)
    with pytest.raises(ValueError, match="update_a"):
        lowrank_correction(w, a, b, c, lam=1e-3, projector=ns, update_a=True)


# --- input checks -------------------------------------------------------------------------------


def test_bad_inputs_name_the_problem():
    c = _gram(_iid_inputs())
    w, w_c = _weights()
    with pytest.raises(ValueError, match="λ"):
        dense_correction(w, w_c, c, lam=-1.0)
    with pytest.raises(ValueError, match="inputs"):
        dense_correction(w, w_c, c[:5, :5], lam=1.0)
    with pytest.raises(ValueError, match="projector"):
        dense_correction(w, w_c, c, 1.0, projector=torch.eye(5))
    assert isinstance(null_space_projector(c), NullSpace)


# --- reported errors from the optimality identity ------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])  # the complement solver, then kept columns
def test_masked_fit_reports_the_errors_a_product_measures(sparsity):
    c = _gram(_correlated_inputs())
    w, _ = _weights()
    mask = torch.rand(w.shape, generator=_gen(12)) >= sparsity
    w_c = w * mask
    lam = 0.05 * float(torch.diagonal(c).mean())
    fit = masked_fit(w, w_c, mask, c, lam)
    assert fit.before == pytest.approx(reconstruction_error(w, w_c, c), rel=1e-12)
    measured = reconstruction_error(w, w_c + fit.delta, c)
    assert fit.after == pytest.approx(measured, rel=1e-6)  # CG stops at a 1e-6 residual; the others agree to 1e-12
    assert fit.after < fit.before
    assert torch.equal(fit.delta, masked_correction(w, w_c, mask, c, lam))


def test_masked_fit_reports_the_errors_under_a_projector_too():
    c, k0 = _gram(_correlated_inputs()), _preserved()
    w, _ = _weights()
    mask = _half_mask(w)
    w_c = w * mask
    fit = masked_fit(w, w_c, mask, c, 1e-3, projector=null_space_projector(_gram(k0)))
    assert fit.after == pytest.approx(reconstruction_error(w, w_c + fit.delta, c), rel=1e-9)


@pytest.mark.parametrize("with_projector", [False, True])
def test_lowrank_fit_gain_is_the_measured_drop_in_error(with_projector):
    c, k0 = _gram(_correlated_inputs()), _preserved()
    w, w_c = _nearly_low_rank_weights()
    a, b = _rank_factors(w_c, 6)
    ns = null_space_projector(_gram(k0)) if with_projector else None
    fit = lowrank_fit(w, a, b, c, 1e-3, projector=ns)
    drop = reconstruction_error(w, a @ b, c) - reconstruction_error(w, fit.up @ fit.down, c)
    assert drop > 0
    assert fit.gain == pytest.approx(drop, rel=1e-9)


def test_lowrank_fit_measures_the_gain_of_a_masked_or_minimum_norm_step():
    c = _gram(_iid_inputs())
    w, w_c = _nearly_low_rank_weights()
    a, b = _rank_factors(w_c, 4)
    keep = torch.rand(b.shape, generator=_gen(13)) >= 0.3
    b = b * keep
    fit = lowrank_fit(w, a, b, c, 1e-3, keep=keep)
    assert bool((fit.down[~keep] == 0).all())
    drop = reconstruction_error(w, a @ b, c) - reconstruction_error(w, a @ fit.down, c)
    assert fit.gain == pytest.approx(drop, rel=1e-9)
    a[:, 3] = 0.0  # rank-deficient A: the minimum-norm step
    fit = lowrank_fit(w, a, b, c, 1e-3)
    drop = reconstruction_error(w, a @ b, c) - reconstruction_error(w, a @ fit.down, c)
    assert fit.gain == pytest.approx(drop, rel=1e-9)
    assert lowrank_fit(w, a, b, c, 1e-3, update_a=True).gain is None
    with pytest.raises(ValueError, match="keep must be a bool mask"):
        lowrank_fit(w, a, b, c, 1e-3, keep=keep.float())
