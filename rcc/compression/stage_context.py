"""What every stage needs to act on a model: the layers it may touch, their plans and data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rcc.compression.calibration import CalibrationData, InputStats
from rcc.compression.plan import LayerPlan
from rcc.errors import RccError
from rcc.eval.encode import CancelCheck, check_cancel
from rcc.models.adapter import VLModel
from rcc.schema.layers import LayerInfo

# (stage, layer index, layer count, layer name)
LayerProgress = Callable[[str, int, int, str], None]


@dataclass(frozen=True)
class LayerChange:
    """What a stage did to one layer, in words (the cascade's log line for it)."""

    name: str
    what: str


@dataclass(frozen=True)
class StageOptions:
    """Numerical settings of the stages (recorded with every run, so it replays)."""

    whiten: bool = True  # activation-aware SVD (SVD-LLM) where calibration inputs exist
    whitening_eps: float = 1e-2
    svd_method: str = "auto"
    ridge: float = 1e-2  # AlphaEdit λ, relative to the mean input energy tr(XXᵀ)/n
    null_threshold: float = 1e-2  # AlphaEdit null space: eigenvalues < this × the largest of K₀K₀ᵀ
    preserve: bool = False  # confine corrections to the null space of the preserved inputs K₀ (AlphaEdit)
    correction_steps: int = 100  # projected gradient steps where no closed form is cheap
    # Correct (and refit after structured removal) block by block, on inputs that flow through the
    # compressed model.
    sequential: bool = False
    # Structured patterns: each group loses its planned share ("uniform"), or a tower's groups share
    # the same total by measured cost ("global"; rcc.compression.unit_allocation).
    allocation: str = "uniform"
    quant_method: str = "gptq"  # quant stage rounding: "rtn" (round to nearest) or "gptq" (error feedback)
    smooth_alpha: float = 0.0  # quant stage: SmoothQuant migration strength α (0: off)
    gptq_damp: float = 0.01  # GPTQ: δ = damp · mean(diag C) added to C before inverting
    quant_embeddings: bool = True  # quant stage: int8 embedding tables in the towers it quantises

    def __post_init__(self) -> None:
        from rcc.compression.unit_allocation import ALLOCATIONS

        if self.allocation not in ALLOCATIONS:
            raise RccError(f"allocation {self.allocation!r} is unknown; allowed: {', '.join(ALLOCATIONS)}")


@dataclass
class StageContext:
    """The model under compression and everything fixed for the whole run."""

    model: VLModel
    plans: dict[str, LayerPlan]  # selected layers only (not locked, something to do)
    stats: dict[str, InputStats]  # calibration inputs seen by the dense model
    preserved: dict[str, InputStats]  # K₀: inputs whose outputs the correction must not move
    dense: dict[str, torch.Tensor]  # the dense weights (out, in) of the selected layers
    seed: int = 0
    budget: float = 1.0  # rank "auto": fraction of the auto layers' parameters to keep
    options: StageOptions = field(default_factory=StageOptions)
    base: dict[str, torch.Tensor] | None = None  # DARE on deltas against a base model
    calibration: CalibrationData | None = None  # re-run block by block for sequential correction
    progress: LayerProgress | None = None
    cancel: CancelCheck | None = None
    preserved_data: CalibrationData | None = None  # K₀ inputs, re-run where structured removal refits

    def layers(self) -> list[LayerInfo]:
        """The current inventory entries of the selected layers (modules change as we go)."""
        index = self.model.layer_index
        return [index[name] for name in self.plans]

    def float_layers(self) -> list[LayerInfo]:
        """The selected layers that still hold float weights: int8 layers are final for the other stages."""
        from rcc.compression.layers import is_quantized_layer

        return [layer for layer in self.layers() if not is_quantized_layer(self.model.module, layer)]
    def input_stats(self, layer: LayerInfo) -> InputStats | None:
        """The layer's calibration statistics, if they still fit it (a narrowed layer's do not)."""
        stats = self.stats.get(layer.name)
        return stats if stats is not None and stats.sq_norms.numel() == layer.shape[1] else None

    def dense_fits(self, layer: LayerInfo) -> bool:
        """Whether the run's dense reference still has the layer's shape (structured removal changes it)."""
        reference = self.dense.get(layer.name)
        return reference is not None and tuple(reference.shape) == tuple(layer.shape)

    def tick(self, stage: str, i: int, total: int, name: str) -> None:
        check_cancel(self.cancel)
        if self.progress:
            self.progress(stage, i, total, name)

    def generator(self, stage: str, name: str, fraction: float) -> torch.Generator:
        """A generator seeded from the run seed, stage, layer and strength: replays draw the same."""
        import hashlib

        digest = hashlib.blake2b(f"{self.seed}|{stage}|{name}|{fraction:.6f}".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
