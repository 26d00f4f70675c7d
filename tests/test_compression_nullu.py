"""Nullu math: Eckart–Young truncation, SVD-LLM whitening, energy ranks and rank allocation."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from rcc.compression import nullu
from rcc.compression.nullu import (
    RankCandidate,
    allocate_ranks,
    factorised_saves,
    largest_saving_rank,
    layer_params,
    rank_for_energy,
    spectrum,
    svd_factors,
    truncation_loss,
    whitened_svd_factors,
    whitening_factor,
)
from rcc.errors import RccError


def _matrix_with_spectrum(m: int, n: int, sigma: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(sigma), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(sigma), generator=g, dtype=torch.float64))
    return u @ torch.diag(sigma.to(torch.float64)) @ v.T


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- sizes --------------------------------------------------------------------------------------


def test_factorised_saves_boundary():
    # 4x4: mn/(m+n) = 2, so rank 1 saves (8 < 16) and rank 2 ties (16 = 16).
    assert factorised_saves(4, 4, 1)
    assert not factorised_saves(4, 4, 2)
    assert largest_saving_rank(4, 4) == 1
    assert largest_saving_rank(10, 6) == 3  # 60/16 = 3.75
    assert largest_saving_rank(1, 1) == 0
    for m, n in [(4, 4), (10, 6), (7, 3), (768, 3072)]:
        r0 = largest_saving_rank(m, n)
        assert factorised_saves(m, n, r0) and not factorised_saves(m, n, r0 + 1)
    assert layer_params(10, 6, 3) == 48
    assert layer_params(10, 6, 4) == 60  # not saving: stays dense


# --- spectrum, energy, truncation loss ----------------------------------------------------------


def test_spectrum_plain_matches_svdvals():
    # float32 weights: from the eigenvalues of the float32 Gram (σ² to ~n·eps·σ_max²), as float64.
    w = _randn(120, 80, dtype=torch.float32)
    s = spectrum(w)
    assert s.dtype == torch.float64 and s.device.type == "cpu"
    exact = torch.linalg.svdvals(w.double())
    tolerance = 80 * torch.finfo(torch.float32).eps * float(exact[0]) ** 2
    torch.testing.assert_close(s.square(), exact.square(), rtol=0, atol=tolerance)
    wide = spectrum(w.T.contiguous())  # the small Gram is taken on the short side
    torch.testing.assert_close(wide.square(), exact.square(), rtol=0, atol=tolerance)
    # float64 weights keep float64.
    w64 = w.double()
    torch.testing.assert_close(spectrum(w64), exact)


def test_auto_ranks_of_the_demo_model_are_those_of_exact_spectra():
    # The float32 spectra are for choosing ranks: on rcc-mini's trained weights every budget the
    # quality benchmark uses gives the ranks that float64 singular values give.
    from rcc.compression.layers import dense_weight
    from rcc.models.registry import load_model

    model = load_model("rcc-mini", device="cpu")
    layers = model.layers()
    fast, exact = [], []
    for layer in layers:
        weight = dense_weight(model.module, layer).detach()
        fast.append(RankCandidate(layer.name, layer.shape[0], layer.shape[1], spectrum(weight)))
        exact.append(RankCandidate(layer.name, layer.shape[0], layer.shape[1],
                                   torch.linalg.svdvals(weight.double())))
    for scope in ("text", None):  # the benchmark's two scopes: the text tower, and both towers
        chosen = [i for i, layer in enumerate(layers) if scope is None or layer.tower == scope]
        total = sum(layers[i].params for i in chosen)
        for keep in (0.7, 0.5, 0.3):
            budget = int(keep * total)
            assert (allocate_ranks([fast[i] for i in chosen], budget).ranks
                    == allocate_ranks([exact[i] for i in chosen], budget).ranks), (scope, keep)


def test_rank_for_energy_hand_made():
    sigma = [3.0, 2.0, 1.0, 0.0]  # squares 9, 4, 1, 0; total 14
    assert rank_for_energy(sigma, 0.01) == 1
    assert rank_for_energy(sigma, 9 / 14) == 1
    assert rank_for_energy(sigma, 0.9) == 2  # needs 12.6, gets 13
    assert rank_for_energy(sigma, 13.5 / 14) == 3
    assert rank_for_energy(sigma, 1.0) == 3  # the zero singular value adds nothing
    assert rank_for_energy(torch.tensor([1.0, 3.0, 0.0, 2.0]), 0.9) == 2  # order does not matter
    assert rank_for_energy([0.0, 0.0], 0.5) == 1
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(RccError):
            rank_for_energy(sigma, bad)


def test_truncation_loss_is_tail_energy():
    assert truncation_loss([3.0, 2.0, 1.0], 0) == 14.0
    assert truncation_loss([3.0, 2.0, 1.0], 1) == 5.0
    assert truncation_loss(torch.tensor([3.0, 2.0, 1.0]), 3) == 0.0


# --- plain SVD factors --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_exact_svd_is_eckart_young(dtype, rtol):
    for seed, (m, n, r) in enumerate([(40, 30, 7), (30, 40, 1), (25, 25, 24)]):
        w = _randn(m, n, seed=seed, dtype=dtype)
        a, b = svd_factors(w, r, method="exact")
        assert a.shape == (m, r) and b.shape == (r, n)
        assert a.dtype == b.dtype == dtype
        error = torch.linalg.matrix_norm(w - a @ b).item()
        expected = math.sqrt(truncation_loss(spectrum(w), r))
        assert error == pytest.approx(expected, rel=rtol)


def test_factors_are_balanced():
    w = _randn(30, 20)
    a, b = svd_factors(w, 5, method="exact")
    # √σ split: AᵀA = B Bᵀ = Σ_r, so both factors carry the same norm.
    torch.testing.assert_close(a.T @ a, b @ b.T)


def test_lowrank_svd_close_to_eckart_young_on_decaying_spectrum():
    sigma = 0.8 ** torch.arange(60, dtype=torch.float64)
    w = _matrix_with_spectrum(120, 80, sigma).float()
    for r in (3, 10):
        a, b = svd_factors(w, r, method="lowrank", seed=1)
        assert a.shape == (120, r) and b.shape == (r, 80)
        error = torch.linalg.matrix_norm((w - a @ b).double()).item()
        expected = math.sqrt(truncation_loss(sigma, r))
        assert error == pytest.approx(expected, rel=1e-2)


def test_lowrank_is_seeded_and_leaves_global_rng_alone():
    w = _randn(64, 48, dtype=torch.float32)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = svd_factors(w, 4, method="lowrank", seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    second = svd_factors(w, 4, method="lowrank", seed=7)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    # The global stream carries on exactly as if no SVD had run.
    drawn = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(drawn, torch.rand(3))


def test_auto_picks_lowrank_only_for_small_ranks(monkeypatch):
    calls = []
    real = torch.svd_lowrank

    def spy(*args, **kwargs):
        calls.append(kwargs.get("q"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "svd_lowrank", spy)
    w = _randn(64, 80, dtype=torch.float32)
    svd_factors(w, 8)  # 8 ≤ 64 / 8
    assert calls == [8 + nullu.DEFAULT_OVERSAMPLE]
    svd_factors(w, 9)
    assert len(calls) == 1


def test_svd_factors_keep_low_precision_dtype():
    w = _randn(16, 12, dtype=torch.float32).to(torch.bfloat16)
    a, b = svd_factors(w, 3, method="exact")
    assert a.dtype == b.dtype == torch.bfloat16


def test_svd_factors_reject_bad_rank_and_method():
    w = _randn(6, 4)
    for rank in (0, 5):
        with pytest.raises(RccError, match="rank"):
            svd_factors(w, rank)
    with pytest.raises(RccError, match="method"):
        svd_factors(w, 2, method="qr")


# --- whitening (SVD-LLM) ------------------------------------------------------------------------


def _activations(n: int, samples: int, low: float, high: float, seed: int = 0) -> torch.Tensor:
    """Inputs as columns, X (n, samples), with per-direction scales log-spaced in [10^low, 10^high]."""
    scales = torch.logspace(low, high, n, dtype=torch.float64)
    mix, _ = torch.linalg.qr(_randn(n, n, seed=seed + 100))
    return mix @ (scales[:, None] * _randn(n, samples, seed=seed))


def test_whitening_factor_is_damped_cholesky():
    x = _activations(10, 50, 0, 1)
    gram = x @ x.T
    s = whitening_factor(gram, eps=1e-2)
    assert torch.equal(s, torch.tril(s))
    damping = 1e-2 * gram.diagonal().mean()
    torch.testing.assert_close(s @ s.T, gram + damping * torch.eye(10, dtype=torch.float64))


def test_whitening_factor_recovers_from_singular_gram():
    x = _randn(10, 3)  # rank-3 gram: Cholesky of the undamped matrix fails
    s = whitening_factor(x @ x.T, eps=0.0)
    assert torch.isfinite(s).all() and (s.diagonal() > 0).all()
    with pytest.raises(RccError, match="diagonal"):
        whitening_factor(torch.zeros(4, 4))


def test_whitened_loss_equals_dropped_singular_values_of_ws():
    m, n, k = 20, 12, 5
    w = _randn(m, n, seed=3)
    x = _activations(n, 200, -0.5, 0.5)
    gram = x @ x.T
    a, b = whitened_svd_factors(w, gram, k, eps=0.0)
    assert a.shape == (m, k) and b.shape == (k, n)
    output_error = torch.linalg.matrix_norm((w - a @ b) @ x).item() ** 2
    expected = truncation_loss(spectrum(w, gram, eps=0.0), k)
    assert output_error == pytest.approx(expected, rel=1e-8)


def test_whitening_beats_plain_svd_on_anisotropic_inputs():
    m, n, k = 24, 16, 4
    w = _randn(m, n, seed=5)
    x = _activations(n, 400, -2, 1, seed=1)
    gram = x @ x.T
    plain_a, plain_b = svd_factors(w, k, method="exact")
    white_a, white_b = whitened_svd_factors(w, gram, k)
    plain = torch.linalg.matrix_norm((w - plain_a @ plain_b) @ x).item()
    white = torch.linalg.matrix_norm((w - white_a @ white_b) @ x).item()
    assert white < 0.5 * plain


def test_whitened_factors_keep_weight_dtype():
    w = _randn(8, 6, dtype=torch.float32)
    x = _activations(6, 40, 0, 1).float()
    a, b = whitened_svd_factors(w, x @ x.T, 2)
    assert a.dtype == b.dtype == torch.float32


# --- rank allocation ----------------------------------------------------------------------------


def _options(layer: RankCandidate) -> list[tuple[int, float, int]]:
    """Every (params, loss, rank) a layer can take: dense, or a saving rank 1..r0."""
    full = min(layer.m, layer.n)
    dense = [(layer.m * layer.n, 0.0, full)]
    return dense + [
        (r * (layer.m + layer.n), truncation_loss(layer.singular_values, r), r)
        for r in range(1, largest_saving_rank(layer.m, layer.n) + 1)
    ]


def _brute_force(layers: list[RankCandidate], budget: int) -> float | None:
    best = None
    for combo in itertools.product(*(_options(layer) for layer in layers)):
        if sum(p for p, _, _ in combo) <= budget:
            loss = math.fsum(loss for _, loss, _ in combo)
            best = loss if best is None else min(best, loss)
    return best


def _check_consistent(layers: list[RankCandidate], result) -> None:
    assert result.params == sum(layer_params(lay.m, lay.n, result.ranks[lay.name]) for lay in layers)
    expected_loss = math.fsum(
        truncation_loss(lay.singular_values, result.ranks[lay.name])
        for lay in layers
        if result.ranks[lay.name] < min(lay.m, lay.n)
    )
    assert result.loss == pytest.approx(expected_loss, abs=1e-12)
    for lay in layers:
        rank = result.ranks[lay.name]
        assert rank == min(lay.m, lay.n) or 1 <= rank <= largest_saving_rank(lay.m, lay.n)


def _random_layers(rng: random.Random, count: int) -> list[RankCandidate]:
    layers = []
    for i in range(count):
        m, n = rng.randint(3, 12), rng.randint(3, 12)
        sigma = sorted((rng.expovariate(1.0) for _ in range(min(m, n))), reverse=True)
        layers.append(RankCandidate(f"l{i}", m, n, tuple(sigma)))
    return layers


def test_allocation_respects_budget_and_is_consistent():
    rng = random.Random(0)
    for _ in range(30):
        layers = _random_layers(rng, rng.randint(1, 4))
        dense = sum(lay.m * lay.n for lay in layers)
        floor = sum(lay.m + lay.n for lay in layers if largest_saving_rank(lay.m, lay.n) >= 1)
        for budget in {floor, dense, rng.randint(floor, dense), dense // 2}:
            result = allocate_ranks(layers, budget)
            _check_consistent(layers, result)
            if result.met_budget:
                assert result.params <= budget
            best = _brute_force(layers, budget)
            assert (best is not None) == result.met_budget
            if best is not None:
                assert result.loss >= best - 1e-12


def test_full_budget_keeps_every_layer_dense():
    layers = _random_layers(random.Random(1), 3)
    result = allocate_ranks(layers, sum(lay.m * lay.n for lay in layers))
    assert result.loss == 0.0 and result.met_budget
    assert result.ranks == {lay.name: min(lay.m, lay.n) for lay in layers}


def test_allocation_compresses_the_fast_decaying_layer_harder():
    n = 32
    fast = RankCandidate("fast", n, n, tuple(0.6**i for i in range(n)))
    flat = RankCandidate("flat", n, n, tuple(1.0 - 0.01 * i for i in range(n)))
    budget = 16 * 2 * n  # room for 16 ranks in total
    result = allocate_ranks([flat, fast], budget)
    assert result.met_budget and result.params <= budget
    assert result.ranks["fast"] < result.ranks["flat"]


def test_greedy_is_optimal_for_equal_shapes_and_convex_curves():
    # Equal shapes make every later step save the same m+n numbers, and σ = 0 past r0 makes the
    # first jump free; with non-increasing σ each layer's step costs increase, so taking the
    # cheapest steps first is optimal for every budget (an exchange argument).
    rng = random.Random(2)
    m, n = 9, 7  # r0 = 3
    r0 = largest_saving_rank(m, n)
    for _trial in range(10):
        layers = []
        for i in range(3):
            head = sorted((rng.uniform(0.1, 3.0) for _ in range(r0)), reverse=True)
            layers.append(RankCandidate(f"l{i}", m, n, tuple(head) + (0.0,) * (min(m, n) - r0)))
        for budget in range(3 * (m + n), 3 * m * n + 1):
            result = allocate_ranks(layers, budget)
            assert result.met_budget
            assert result.loss == pytest.approx(_brute_force(layers, budget), abs=1e-12)


def test_greedy_is_optimal_at_lagrangian_breakpoints_for_mixed_shapes():
    # For convex per-layer curves, a budget that some λ makes the exact param count of
    # argmin Σ (loss + λ·params) is a greedy stopping point, and that point is optimal.
    rng = random.Random(3)
    shapes = [(10, 6), (8, 8), (12, 5)]
    checked = 0
    for _trial in range(8):
        layers = []
        for i, (m, n) in enumerate(shapes):
            r0 = largest_saving_rank(m, n)
            head = sorted((rng.uniform(0.5, 3.0) for _ in range(r0)), reverse=True)
            # A tiny tail keeps the first jump's loss per number below every later step's.
            tail = (0.01,) * (min(m, n) - r0)
            layers.append(RankCandidate(f"l{i}", m, n, tuple(head) + tail))
        for lam in (rng.uniform(0.0, 1.0) for _ in range(20)):
            picks = [min(_options(lay), key=lambda o: o[1] + lam * o[0]) for lay in layers]
            budget = sum(p for p, _, _ in picks)
            lagrangian_loss = math.fsum(loss for _, loss, _ in picks)
            result = allocate_ranks(layers, budget)
            assert result.loss == pytest.approx(lagrangian_loss, abs=1e-9)
            assert result.loss == pytest.approx(_brute_force(layers, budget), abs=1e-9)
            checked += 1
    assert checked == 160


def test_unmet_budget_returns_rank_one_and_says_so():
    layers = [
        RankCandidate("a", 8, 6, tuple(range(6, 0, -1))),
        RankCandidate("b", 5, 9, tuple(range(5, 0, -1))),
        RankCandidate("tiny", 1, 1, (1.0,)),  # factorising never saves: stays dense
    ]
    result = allocate_ranks(layers, 10)
    assert not result.met_budget
    assert result.ranks == {"a": 1, "b": 1, "tiny": 1}
    assert result.params == 14 + 14 + 1
    _check_consistent(layers, result)


def test_refill_spends_overshoot_slack():
    # Greedy order: "small" 6x6 goes dense → 2 (free) → 1 (σ_1² = 0.01), then "big" jumps
    # dense → 19, saving 80 at once and overshooting by 19 ≥ 12 = one rank of "small",
    # so the refill buys rank 2 back and the σ_1² loss disappears.
    small = RankCandidate("small", 6, 6, (1.0, 0.1, 0.0, 0.0, 0.0, 0.0))
    big = RankCandidate("big", 40, 40, (1.0,) * 19 + (1.0,) + (0.0,) * 20)
    budget = 36 + 1600 - 85
    result = allocate_ranks([small, big], budget)
    assert result.ranks == {"small": 2, "big": 19}
    assert result.params == 24 + 19 * 80 == budget - 19 + 12
    assert result.loss == pytest.approx(1.0)
    assert result.loss == pytest.approx(_brute_force([small, big], budget))


def test_rank_candidate_normalises_values():
    layer = RankCandidate("x", 4, 3, torch.tensor([1.0, 3.0, 2.0]))
    assert layer.singular_values == (3.0, 2.0, 1.0)
    assert hash(layer) == hash(RankCandidate("x", 4, 3, (3.0, 2.0, 1.0)))
    with pytest.raises(ValueError):
        RankCandidate("x", 2, 3, (1.0, 1.0, 1.0))


def test_allocation_rejects_bad_input():
    layer = RankCandidate("x", 4, 3, (1.0, 1.0, 1.0))
    with pytest.raises(RccError):
        allocate_ranks([layer], -1)
    with pytest.raises(ValueError):
        allocate_ranks([layer, layer], 10)
