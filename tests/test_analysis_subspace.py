"""Principal angles and Grassmann distances: closed forms, scipy, and real compressed layers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

from rcc.analysis.errors import AnalysisError
from rcc.analysis.subspace import (
    compare_subspaces, grassmann_distance, layer_subspace, orthonormal_basis, principal_angles,
)
from rcc.compression import nullu
from rcc.compression.layers import dense_weight, factorise, set_dense_weight
from rcc.models.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _plane_rotation(n: int, pairs: list[tuple[int, int]], angle: float) -> torch.Tensor:
    """A rotation of R^n by ``angle`` in each coordinate plane (i, j) of ``pairs``."""
    r = torch.eye(n, dtype=torch.float64)
    for i, j in pairs:
        r[i, i] = r[j, j] = math.cos(angle)
        r[i, j], r[j, i] = -math.sin(angle), math.sin(angle)
    return r


def test_identical_subspaces_are_at_distance_zero():
    torch.manual_seed(0)
    a = torch.randn(9, 4, dtype=torch.float64)
    assert grassmann_distance(a, a) == pytest.approx(0.0, abs=1e-7)
    # Another basis of the same span: still distance 0.
    mixed = a @ torch.randn(4, 4, dtype=torch.float64)
    assert grassmann_distance(a, mixed) == pytest.approx(0.0, abs=1e-7)
    assert principal_angles(a, mixed).max() < 1e-7


@pytest.mark.parametrize("angle", [1e-6, 0.1, 0.3, math.pi / 4, 1.2, math.pi / 2])
def test_a_plane_rotated_by_phi_in_r4_is_at_distance_phi_sqrt2(angle):
    # span(e1, e2) rotated by φ towards span(e3, e4): both principal angles are φ, d = φ·√2.
    base = torch.eye(4, dtype=torch.float64)[:, :2]
    rotated = _plane_rotation(4, [(0, 2), (1, 3)], angle) @ base
    assert principal_angles(base, rotated).tolist() == pytest.approx([angle, angle], abs=1e-12)
    assert grassmann_distance(base, rotated) == pytest.approx(angle * math.sqrt(2), abs=1e-12)
    # Rotating only one of the two directions: angles (0, φ), d = φ·√1.
    one = _plane_rotation(4, [(0, 2)], angle) @ base
    assert principal_angles(base, one).tolist() == pytest.approx([0.0, angle], abs=1e-12)
    assert grassmann_distance(base, one) == pytest.approx(angle, abs=1e-12)


@pytest.mark.parametrize("n, p, q", [(10, 3, 3), (10, 3, 5), (40, 6, 2), (7, 7, 3), (25, 1, 1), (64, 16, 16)])
def test_principal_angles_match_scipy_subspace_angles(n, p, q):
    rng = np.random.default_rng(n * 100 + p * 10 + q)
    a, b = rng.standard_normal((n, p)), rng.standard_normal((n, q))
    ours = principal_angles(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert ours.shape == (min(p, q),)
    assert np.all(np.diff(ours) >= -1e-15)  # ascending
    assert ours == pytest.approx(np.sort(subspace_angles(a, b)), abs=1e-10)


def test_nearly_equal_subspaces_keep_their_tiny_angles():
    base = torch.eye(5, dtype=torch.float64)[:, :2]
    moved = base.clone()
    moved[3, 0] = 1e-9  # a 1e-9 rad tilt: arccos alone would round it to 0 (or 2e-8)
    assert principal_angles(base, moved).tolist() == pytest.approx([0.0, 1e-9], rel=1e-6, abs=1e-15)


def test_bad_inputs_are_refused_with_the_shapes():
    with pytest.raises(AnalysisError, match="same number of rows"):
        principal_angles(torch.zeros(4, 2), torch.zeros(5, 2))
    assert orthonormal_basis(torch.zeros(4, 2)).shape == (4, 0)
    assert principal_angles(torch.zeros(4, 2), torch.eye(4)[:, :1]).numel() == 0


def test_plain_svd_truncation_keeps_the_top_subspaces_exactly():
    # Eckart–Young: the rank-r truncation keeps U_r and V_r, so their distance to the dense top-r is 0,
    # while a random perturbation of the same size moves them.
    torch.manual_seed(1)
    w = torch.randn(48, 32, dtype=torch.float64)
    up, down = nullu.svd_factors(w, 8, method="exact")
    kept = layer_subspace(w, up @ down, k=8)
    assert kept.k == 8 and kept.left_distance < 1e-6 and kept.right_distance < 1e-6
    noisy = layer_subspace(w, w + 0.5 * torch.randn_like(w), k=8)
    assert noisy.left_distance > 0.05 and noisy.right_distance > 0.05
    assert 0 < noisy.normalised < 1
    capped = layer_subspace(w, up @ down, k=20)  # the truncation has rank 8: k is capped at it
    assert capped.k == 8


def test_compare_subspaces_on_a_model_reports_changed_layers_and_tower_summaries(config_path):
    torch.manual_seed(0)
    dense = load_model(f"open_clip:{config_path}", device="cpu")
    torch.manual_seed(0)
    compressed = load_model(f"open_clip:{config_path}", device="cpu")
    index = compressed.layer_index
    fc = index["visual.transformer.resblocks.0.mlp.c_fc"]
    up, down = nullu.svd_factors(dense_weight(compressed.module, fc).detach(), 4, method="exact")
    factorise(compressed.module, fc, up, down)
    proj = index["transformer.resblocks.1.mlp.c_proj"]
    w = dense_weight(compressed.module, proj).detach().clone()
    w[w.abs() < w.abs().median()] = 0  # half pruned
    set_dense_weight(compressed.module, proj, w)

    result = compare_subspaces(dense, compressed)
    names = [layer.name for layer in result.layers]
    assert names == ["visual.transformer.resblocks.0.mlp.c_fc", "transformer.resblocks.1.mlp.c_proj"]
    assert result.unchanged == len(dense.layers()) - 2
    factorised, pruned = result.layers
    assert factorised.k == 4 and factorised.left_distance < 1e-5  # plain SVD: exact top-4
    assert pruned.k == math.ceil(min(proj.shape) / 4) and pruned.left_distance > 1e-3
    assert {s.group for s in result.towers} == {"vision", "text"}
    assert {s.group for s in result.blocks} == {"vision block 0", "text block 1"}
    as_dict = result.as_dict()
    assert as_dict["layers"][1]["normalised"] == pytest.approx(pruned.normalised)
    with pytest.raises(AnalysisError, match="not in both models"):
        compare_subspaces(dense, compressed, layers=["nope"])
