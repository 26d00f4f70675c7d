"""How many units each structured group loses: as the plan says, or spread over a tower by cost.

``uniform`` (the default): every group loses round(f·s·U) of its U dense units, s the sparsity
its leader's plan gives, f the stage's strength.

``global``: the groups of one kind (channel or head) in one tower form a pool that loses the
same total, Σ_g round(f·s_g·U_g) units, but not the same share everywhere: every unit gets its
*relative* cost r_u = score_u / E_g, its removal score (``unit_scores``: the calibration error at
the consumer's output, or its squared weights) over the group's total E_g (the consumer's output
energy tr(W Σ Wᵀ), or Σ_u score_u without a Gram matrix), and the pool's cheapest units go first
(ties: pool order, then unit index). A group keeps at least one unit and loses at most
``GLOBAL_CAP`` times its planned share: a unit's cost is measured alone, and many removals from
one MLP cost more than their sum (rcc-mini's text tower, 50 % of MLP channels: mean cosine 0.938
uniform, 0.905 global without the cap, 0.937 with it; 50 % of heads: 0.902 uniform, 0.954 global).
Units removed by earlier steps count towards the total and the cap, so a repeated run at the
same strength removes nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from rcc.compression.calibration import InputStats
from rcc.compression.groups import StructuredGroup

ALLOCATIONS = ("uniform", "global")
GLOBAL_CAP = 1.5


def uniform_kept(group: StructuredGroup, sparsity: float, fraction: float) -> int:
    """U − round(f·s·U), never below one unit."""
    return max(1, group.kept_units(sparsity * fraction))


def global_kept(pool: Sequence[tuple[StructuredGroup, float]], fraction: float,
                costs: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Leader → units to keep for one pool of (group, planned sparsity); ``costs``: leader → r_u per current unit."""
    target = sum(round(fraction * sparsity * group.dense_units) for group, sparsity in pool)
    gone = {group.leader: group.dense_units - group.units for group, _ in pool}
    remaining = target - sum(gone.values())
    room = {group.leader: max(0, min(group.dense_units - 1, round(GLOBAL_CAP * fraction * sparsity * group.dense_units))
                                 - gone[group.leader]) for group, sparsity in pool}
    candidates = sorted((float(cost), position, unit, group.leader)
                        for position, (group, _) in enumerate(pool)
                        for unit, cost in enumerate(costs[group.leader].tolist()))
    taken = dict.fromkeys(room, 0)
    for _, _, _, leader in candidates:
        if remaining <= 0:
            break
        if taken[leader] < room[leader]:
            taken[leader] += 1
            remaining -= 1
    return {group.leader: group.units - taken[group.leader] for group, _ in pool}


def relative_costs(scores: torch.Tensor, consumer: torch.Tensor, stats: InputStats | None, centred: bool) -> torch.Tensor:
    """r_u = score_u / E_g: E_g the consumer's output energy tr(W Σ Wᵀ) with a Gram matrix, else Σ_u score_u."""
    if stats is not None and stats.gram is not None:
        w = consumer.detach().to(torch.float64)
        sigma = stats.centred_gram(w.device) if centred else stats.gram.to(device=w.device, dtype=torch.float64)
        energy = float(((w @ sigma) * w).sum())
    else:
        energy = float(scores.sum())
    return scores / energy if energy > 0 else scores
