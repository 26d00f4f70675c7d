"""How much each hidden unit or head of a structured group is worth keeping (higher = keep).

With W_p the producers' rows of unit u (U its rows / columns: one for a channel, d_h for a head)
and W_c the consumer's columns:

- ``magnitude`` (group magnitude): ‖W_p[U, :]‖² + ‖W_c[:, U]‖² summed over the group, the L2
  norm over every weight the unit owns (Torch-Pruning's ``GroupMagnitudeImportance`` ranks the
  same way: it averages the members' squared norms).
- ``wanda`` (activation-aware): the calibration error that removing u alone causes at the
  consumer's output, ‖W_c[:, U] X_U‖² = tr(W_c[:, U] G_UU W_c[:, U]ᵀ) — for a channel
  ‖W_c[:, j]‖² · ‖X_j‖², input norm × weight norm as Wanda scores single weights. When the
  removed units' mean goes into the bias (reconstruction on), what is lost is only their
  fluctuation: G becomes the centred Σ = C − s sᵀ/N, per channel ‖W_c[:, j]‖² · Σ_t (x_tj − μ_j)²,
  FLAP's fluctuation metric. Without a Gram matrix (heads) the diagonal stands in for G_UU.

Scores are float64; ties keep the lower index (a stable order), so choices replay exactly.
"""

from __future__ import annotations

import torch

from rcc.compression.calibration import InputStats


def magnitude_scores(producers: list[torch.Tensor], consumer: torch.Tensor, unit_width: int) -> torch.Tensor:
    """Σ over the group of the squared weights each unit owns (producers: rows, consumer: columns)."""
    total = _per_unit(consumer.detach().to(torch.float64).pow(2).sum(dim=0), unit_width)
    for weight in producers:
        total = total + _per_unit(weight.detach().to(torch.float64).pow(2).sum(dim=1), unit_width)
    return total


def activation_scores(consumer: torch.Tensor, stats: InputStats, unit_width: int, centred: bool) -> torch.Tensor:
    """‖W_c[:, U] X_U‖² per unit (centred X when the mean is compensated), from the consumer's input statistics."""
    w = consumer.detach().to(torch.float64)
    if unit_width > 1 and stats.gram is not None:
        g = stats.centred_gram(w.device) if centred else stats.gram.to(device=w.device, dtype=torch.float64)
        units = w.shape[1] // unit_width
        blocks = w.view(w.shape[0], units, unit_width).transpose(0, 1)  # (units, m, w)
        g_blocks = torch.stack([g[u * unit_width:(u + 1) * unit_width, u * unit_width:(u + 1) * unit_width]
                                for u in range(units)])
        return ((blocks @ g_blocks) * blocks).sum(dim=(1, 2))
    energy = stats.sq_deviations if (centred and stats.sums is not None) else stats.sq_norms
    return _per_unit(w.pow(2).sum(dim=0) * energy.detach().to(device=w.device, dtype=torch.float64), unit_width)


def _per_unit(values: torch.Tensor, unit_width: int) -> torch.Tensor:
    return values if unit_width == 1 else values.view(-1, unit_width).sum(dim=1)


def units_to_keep(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` highest-scoring units, ascending (ties: the lower index wins)."""
    order = torch.argsort(-scores, stable=True)
    return torch.sort(order[:count]).values
