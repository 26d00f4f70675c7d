"""Embedding fidelity: cosine to the reference and k-nearest-neighbour overlap."""

import pytest
import torch

from rcc.eval.fidelity import embedding_fidelity


def test_identical_embeddings_are_perfectly_faithful():
    emb = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    result = embedding_fidelity(emb, emb * 3.0, k=5)  # scale does not matter: cosine geometry
    assert result.mean_cosine == pytest.approx(1.0)
    assert result.knn_overlap == 1.0


def _points(degrees):
    angles = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def test_hand_made_neighbours():
    # Unit vectors at these angles; nearest neighbour = smallest angle gap (no ties).
    ref = _points([0, 15, 40, 100, 170])  # NN: 0→1, 1→0, 2→1, 3→2, 4→3
    cand = _points([0, 15, 95, 100, 170])  # item 2 moved to 95°: NN 0→1, 1→0, 2→3, 3→2, 4→3
    result = embedding_fidelity(ref, cand, k=1)
    assert result.knn_overlap == pytest.approx(4 / 5)  # only item 2's neighbour changed
    expected_cos = (4 + torch.tensor(55.0).deg2rad().cos().item()) / 5  # item 2 rotated by 55°
    assert result.mean_cosine == pytest.approx(expected_cos)


def test_bad_inputs():
    with pytest.raises(ValueError, match="shapes differ"):
        embedding_fidelity(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="k=3"):
        embedding_fidelity(torch.randn(3, 2), torch.randn(3, 2), k=3)
