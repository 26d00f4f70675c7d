"""DARE drop-and-rescale, magnitude / Wanda / N:M masks and the prune dispatcher."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune

from rcc.compression.dare import (
    PruneResult,
    apply_mask,
    dare,
    is_nm_mask,
    magnitude_mask,
    mask_gradient_hook,
    nm_mask,
    prune,
    to_semi_structured,
    wanda_mask,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def l1_reference(weight: torch.Tensor, amount) -> torch.Tensor:
    """The keep mask torch.nn.utils.prune.l1_unstructured puts on an nn.Linear holding ``weight``."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    torch_prune.l1_unstructured(linear, "weight", amount=amount)
    return linear.weight_mask.bool()


# --- magnitude ----------------------------------------------------------------------------------


def test_magnitude_small_example_matches_l1_unstructured():
    weight = torch.tensor([[1.0, 2, 3, 4], [-4, -3, -2, -1]])
    result = prune(weight, 2 / 8, "magnitude")
    assert torch.equal(result.weight, torch.tensor([[0.0, 2, 3, 4], [-4, -3, -2, 0]]))
    assert torch.equal(result.mask, l1_reference(weight, 2))
    assert result.sparsity == pytest.approx(0.25)


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.25, 0.5, 0.73, 0.9, 1.0])
@pytest.mark.parametrize("ties", [False, True])
def test_magnitude_matches_l1_unstructured(amount, ties):
    gen = seeded(7)
    for shape in [(5, 7), (16, 32), (3, 1)]:
        if ties:
            # Small integers: many equal |w|, so only the same topk call breaks ties the same way.
            weight = torch.randint(-3, 4, shape, generator=gen).float()
        else:
            weight = torch.randn(shape, generator=gen)
        mask = magnitude_mask(weight, amount)
        assert torch.equal(mask, l1_reference(weight, amount))
        assert int((~mask).sum()) == round(amount * weight.numel())


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 9),
    amount=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_magnitude_matches_l1_unstructured_property(rows, cols, amount, seed):
    weight = torch.randint(-2, 3, (rows, cols), generator=seeded(seed)).float()
    assert torch.equal(magnitude_mask(weight, amount), l1_reference(weight, amount))


def test_magnitude_row_scope_counts_and_order():
    weight = torch.randn(12, 10, generator=seeded(3))
    for sparsity in (0.0, 0.26, 0.5, 0.95, 1.0):
        mask = magnitude_mask(weight, sparsity, scope="row")
        assert (mask.sum(dim=1) == 10 - round(sparsity * 10)).all()
        for row, keep in zip(weight.abs(), mask):
            if keep.any() and (~keep).any():
                assert row[~keep].max() <= row[keep].min()


def test_magnitude_bad_values():
    weight = torch.ones(2, 4)
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_mask(weight, 1.5)
    with pytest.raises(ValueError, match="scope"):
        magnitude_mask(weight, 0.5, scope="column")


# --- DARE ---------------------------------------------------------------------------------------


def test_dare_keeps_expected_value():
    # Per entry W' = w·B/(1−p), B ~ Bernoulli(1−p): E[W'] = w and Var[W'] = w²·p/(1−p).
    # The mean of S independent draws has std |w|·sqrt(p/((1−p)·S)); every entry's z-score must be
    # small, and so must the combined z of all entries (≈ N(0, 1) when the estimator is unbiased).
    p, draws = 0.3, 600
    weight = torch.randn(8, 8, generator=seeded(0), dtype=torch.float64) + 0.1
    total = torch.zeros_like(weight)
    for seed in range(draws):
        total += dare(weight, p, seeded(seed)).weight
    mean = total / draws
    std_of_mean = weight.abs() * math.sqrt(p / ((1 - p) * draws))
    z = (mean - weight) / std_of_mean
    # 64 entries: P(max |z| > 5) ≈ 64 · 5.7e-7, so a failure means bias, not bad luck.
    assert z.abs().max() < 5
    assert abs(float(z.sum()) / math.sqrt(z.numel())) < 4


def test_dare_drop_fraction_and_rescale():
    p = 0.3
    weight = torch.randn(300, 300, generator=seeded(1))
    result = dare(weight, p, seeded(2))
    n = weight.numel()
    # Dropped count ~ Binomial(n, p): within 5 standard deviations of n·p.
    assert abs(result.sparsity - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(result.weight[~result.mask], torch.zeros(int((~result.mask).sum())))
    torch.testing.assert_close(result.weight[result.mask], weight[result.mask] / (1 - p))


def test_dare_reproducible_per_seed():
    weight = torch.randn(20, 30, generator=seeded(1))
    first = dare(weight, 0.5, seeded(11))
    again = dare(weight, 0.5, seeded(11))
    other = dare(weight, 0.5, seeded(12))
    assert torch.equal(first.mask, again.mask) and torch.equal(first.weight, again.weight)
    assert not torch.equal(first.mask, other.mask)


def test_dare_mask_independent_of_dtype():
    # The mask is drawn in fp32 on the CPU whatever the weight's dtype, so half weights replay the same.
    weight = torch.randn(16, 16, generator=seeded(1))
    assert torch.equal(dare(weight, 0.4, seeded(5)).mask, dare(weight.half(), 0.4, seeded(5)).mask)


def test_dare_with_base_acts_on_delta():
    p = 0.6
    base = torch.randn(10, 12, generator=seeded(3))
    weight = base + 0.1 * torch.randn(10, 12, generator=seeded(4))
    result = dare(weight, p, seeded(5), base=base)
    assert (~result.mask).any() and result.mask.any()
    assert torch.equal(result.weight[~result.mask], base[~result.mask])
    expected = base + (weight - base) / (1 - p)
    torch.testing.assert_close(result.weight[result.mask], expected[result.mask])


def test_dare_bad_values():
    weight = torch.ones(2, 4)
    with pytest.raises(ValueError, match="drop rate"):
        dare(weight, 1.0, seeded(0))
    with pytest.raises(ValueError, match="base"):
        dare(weight, 0.5, seeded(0), base=torch.ones(4, 2))
    with pytest.raises(ValueError, match="Generator"):
        prune(weight, 0.5, "dare")


def test_dare_row_pattern_drops_exact_count_per_row():
    weight = torch.randn(9, 10, generator=seeded(1))
    result = prune(weight, 0.34, "dare", pattern="row", generator=seeded(2))
    assert ((~result.mask).sum(dim=1) == 3).all()
    torch.testing.assert_close(result.weight[result.mask], weight[result.mask] * 10 / 7)
    assert (result.weight[~result.mask] == 0).all()
    with pytest.raises(ValueError, match="drops all"):
        prune(weight, 0.97, "dare", pattern="row", generator=seeded(2))


def test_dare_nm_pattern_rescales_by_m_over_n():
    base = torch.randn(6, 8, generator=seeded(1))
    weight = torch.randn(6, 8, generator=seeded(2))
    result = prune(weight, 0.0, "dare", pattern="2:4", generator=seeded(3))
    assert is_nm_mask(result.mask, 2, 4)
    torch.testing.assert_close(result.weight[result.mask], weight[result.mask] * 2)
    on_delta = prune(weight, 0.0, "dare", pattern="2:4", generator=seeded(3), base=base)
    assert torch.equal(on_delta.mask, result.mask)
    assert torch.equal(on_delta.weight[~on_delta.mask], base[~on_delta.mask])


# --- Wanda --------------------------------------------------------------------------------------


def test_wanda_differs_from_magnitude_when_norms_differ():
    weight = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    norms = torch.tensor([10.0, 1.0])
    # Scores |W|·‖X‖ = [[10, 2], [30, 1]]: Wanda drops column 1 in both rows, magnitude drops the
    # smallest |w| (column 0 in row 0).
    assert torch.equal(wanda_mask(weight, norms, 0.5), torch.tensor([[True, False], [True, False]]))
    assert torch.equal(magnitude_mask(weight, 0.5, "row"), torch.tensor([[False, True], [True, False]]))


@pytest.mark.parametrize("norm", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("ties", [False, True])
def test_wanda_equals_row_magnitude_with_equal_norms(norm, ties):
    gen = seeded(8)
    weight = torch.randint(-3, 4, (7, 16), generator=gen).float() if ties else torch.randn(7, 16, generator=gen)
    norms = torch.full((16,), norm)
    for sparsity in (0.25, 0.5, 0.8):
        assert torch.equal(wanda_mask(weight, norms, sparsity), magnitude_mask(weight, sparsity, "row"))


def test_wanda_prunes_lowest_scores_per_row():
    gen = seeded(9)
    weight = torch.randn(6, 20, generator=gen)
    norms = torch.rand(20, generator=gen) * 5
    mask = wanda_mask(weight, norms, 0.6)
    scores = weight.abs() * norms
    assert ((~mask).sum(dim=1) == 12).all()
    for row, keep in zip(scores, mask):
        assert row[~keep].max() <= row[keep].min()
    result = prune(weight, 0.6, "wanda", input_norms=norms)
    assert torch.equal(result.mask, mask)
    assert torch.equal(result.weight[mask], weight[mask]) and (result.weight[~mask] == 0).all()


def test_wanda_norm_shape_checked():
    with pytest.raises(ValueError, match=r"\(4,\)"):
        wanda_mask(torch.ones(2, 4), torch.ones(3), 0.5)
    with pytest.raises(ValueError, match="input_norms"):
        prune(torch.ones(2, 4), 0.5, "wanda")


# --- N:M ----------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 6),
    groups=st.integers(1, 6),
    nm=st.sampled_from([(2, 4), (1, 4), (4, 8), (1, 2), (3, 3)]),
    seed=st.integers(0, 2**31 - 1),
    ties=st.booleans(),
)
def test_nm_mask_keeps_n_highest_of_every_m(rows, groups, nm, seed, ties):
    n, m = nm
    gen = seeded(seed)
    shape = (rows, groups * m)
    scores = torch.randint(0, 3, shape, generator=gen).float() if ties else torch.rand(shape, generator=gen)
    mask = nm_mask(scores, n, m)
    assert is_nm_mask(mask, n, m)
    grouped_scores, grouped_mask = scores.reshape(rows, groups, m), mask.reshape(rows, groups, m)
    assert (grouped_mask.sum(dim=-1) == n).all()
    for score, keep in zip(grouped_scores.reshape(-1, m), grouped_mask.reshape(-1, m)):
        if (~keep).any():
            assert score[~keep].max() <= score[keep].min()


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 5),
    groups=st.integers(1, 5),
    method=st.sampled_from(["dare", "magnitude", "wanda"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_prune_two_four_is_valid_for_every_method(rows, groups, method, seed):
    gen = seeded(seed)
    weight = torch.randn(rows, 4 * groups, generator=gen)
    norms = torch.rand(4 * groups, generator=gen) + 0.1
    result = prune(weight, 0.5, method, "2:4", generator=seeded(seed), input_norms=norms)
    assert is_nm_mask(result.mask, 2, 4)
    assert result.sparsity == pytest.approx(0.5)
    assert (result.weight[~result.mask] == 0).all()
    scale = 2.0 if method == "dare" else 1.0
    torch.testing.assert_close(result.weight[result.mask], weight[result.mask] * scale)


def test_nm_on_conv_weight_uses_flattened_input():
    weight = torch.randn(4, 2, 2, 2, generator=seeded(1))
    result = prune(weight, 0.5, "magnitude", "2:4")
    assert result.mask.shape == weight.shape
    assert is_nm_mask(result.mask, 2, 4)


def test_nm_rejects_input_not_multiple_of_m():
    with pytest.raises(ValueError, match=r"multiple of 4.*\(3, 6\)"):
        nm_mask(torch.rand(3, 6), 2, 4)
    with pytest.raises(ValueError, match=r"\(3, 6\)"):
        prune(torch.rand(3, 6), 0.5, "magnitude", "2:4")
    with pytest.raises(ValueError, match="0 < N <= M"):
        nm_mask(torch.rand(3, 8), 5, 4)


def test_prune_rejects_unknown_values():
    weight = torch.ones(2, 4)
    with pytest.raises(ValueError, match="method"):
        prune(weight, 0.5, "random")
    with pytest.raises(ValueError, match="pattern"):
        prune(weight, 0.5, "magnitude", "2-4")
    with pytest.raises(ValueError, match="base"):
        prune(weight, 0.5, "magnitude", base=weight)
    with pytest.raises(ValueError, match="2 dims"):
        prune(torch.ones(8), 0.5, "magnitude", "row")


# --- masks on live weights ----------------------------------------------------------------------


def test_apply_mask_in_place_on_parameter():
    param = nn.Parameter(torch.randn(4, 8, generator=seeded(1)))
    before = param.detach().clone()
    mask = magnitude_mask(param.detach(), 0.5)
    returned = apply_mask(param, mask)
    assert returned is param
    assert torch.equal(param.detach(), before * mask)


def test_gradient_hook_zeros_pruned_gradients():
    param = nn.Parameter(torch.randn(4, 8, generator=seeded(1)))
    mask = magnitude_mask(param.detach(), 0.5)
    param.register_hook(mask_gradient_hook(mask))
    upstream = torch.randn(4, 8, generator=seeded(2))
    (param * upstream).sum().backward()
    assert (param.grad[~mask] == 0).all()
    assert torch.equal(param.grad[mask], upstream[mask])


def test_prune_result_sparsity():
    result = PruneResult(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))
    assert result.sparsity == pytest.approx(0.75)


def test_semi_structured_is_none_on_cpu():
    weight = torch.randn(64, 64, generator=seeded(1)).half()
    result = prune(weight, 0.5, "magnitude", "2:4")
    assert to_semi_structured(result.weight, result.mask) is None


# --- CUDA (skipped without a GPU) ---------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
ampere = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                            reason="semi-structured sparse kernels need CUDA compute capability 8.0")


@cuda
def test_dare_identical_on_cpu_and_cuda():
    weight = torch.randn(64, 96, generator=seeded(1))
    on_cpu = dare(weight, 0.7, seeded(3))
    on_gpu = dare(weight.cuda(), 0.7, seeded(3))
    assert torch.equal(on_cpu.mask, on_gpu.mask.cpu())
    assert torch.equal(on_cpu.weight, on_gpu.weight.cpu())
    base = torch.randn(64, 96, generator=seeded(2))
    with_base_cpu = dare(weight, 0.7, seeded(3), base=base)
    with_base_gpu = dare(weight.cuda(), 0.7, seeded(3), base=base.cuda())
    assert torch.equal(with_base_cpu.weight, with_base_gpu.weight.cpu())
    for pattern in ("row", "2:4"):
        a = prune(weight, 0.5, "dare", pattern, generator=seeded(4))
        b = prune(weight.cuda(), 0.5, "dare", pattern, generator=seeded(4))
        assert torch.equal(a.weight, b.weight.cpu())


@cuda
def test_score_masks_identical_on_cpu_and_cuda():
    gen = seeded(5)
    weight = torch.randint(-3, 4, (32, 64), generator=gen).float()
    norms = torch.rand(64, generator=gen)
    assert torch.equal(magnitude_mask(weight, 0.5, "row"), magnitude_mask(weight.cuda(), 0.5, "row").cpu())
    assert torch.equal(wanda_mask(weight, norms, 0.5), wanda_mask(weight.cuda(), norms.cuda(), 0.5).cpu())
    assert torch.equal(nm_mask(weight.abs(), 2, 4), nm_mask(weight.abs().cuda(), 2, 4).cpu())


@ampere
def test_semi_structured_on_cuda():
    weight = torch.randn(128, 128, generator=seeded(1)).half().cuda()
    result = prune(weight, 0.5, "magnitude", "2:4")
    sparse = to_semi_structured(result.weight, result.mask)
    assert sparse is not None
    x = torch.randn(128, 64, generator=seeded(2)).half().cuda()
    torch.testing.assert_close(sparse @ x, result.weight @ x, rtol=1e-2, atol=1e-2)
    assert to_semi_structured(result.weight.float(), result.mask) is None
