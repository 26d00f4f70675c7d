"""The stages of a cascade as Python objects: what each sets in the plan and how it runs.

``rcc.DARE(sparsity=0.5, method="wanda")`` is shorthand for the plan settings ``sparsity`` /
``method`` / ``pattern`` plus the stage name ``dare`` in the cascade; ``rcc.Nullu`` sets ``rank``
(and the plan's ``budget`` for ``rank="auto"``), ``rcc.AlphaEdit`` turns ``correction`` on,
``rcc.Quant`` sets ``bits`` 8 (int8 weights with per-channel scales). A field
left at None sets nothing, so the same objects also run a plan given to ``rcc.Cascade(plan=...)``.
Values are checked by the plan's own rules (``rcc.compression.plan_rules``) when the cascade
builds its plan: one place for every rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class DARE:
    """Drop / prune and rescale: ``sparsity`` of each selected layer's weights by ``method``
    (``dare`` random drop-and-rescale, ``magnitude``, ``wanda``) and ``pattern``."""

    name: ClassVar[str] = "dare"
    sparsity: float | None = None
    method: str | None = None
    pattern: str | None = None

    def settings(self) -> dict[str, Any]:
        return _given(sparsity=self.sparsity, method=self.method, pattern=self.pattern)


@dataclass(frozen=True)
class Nullu:
    """Low rank by truncated SVD: ``rank`` an integer, ``"energy:F"`` or ``"auto"`` (ranks allocated
    across layers to keep ``budget``, the fraction of their parameters); ``whiten`` for
    activation-aware SVD on the calibration inputs."""

    name: ClassVar[str] = "nullu"
    rank: int | str | None = None
    budget: float | None = None
    whiten: bool = True

    def settings(self) -> dict[str, Any]:
        return _given(rank=self.rank)


@dataclass(frozen=True)
class AlphaEdit:
    """Closed-form correction of every selected layer towards its dense outputs on the calibration
    inputs; ``preserve`` confines it to the null space of preserved inputs K₀."""

    name: ClassVar[str] = "alphaedit"
    preserve: bool = False

    def settings(self) -> dict[str, Any]:
        return {"correction": True}


@dataclass(frozen=True)
class Quant:
    """Int8 weights with one scale per output channel: ``method`` ``gptq`` (error feedback on the
    calibration Gram) or ``rtn`` (round to nearest); ``smooth_alpha`` > 0 applies SmoothQuant first;
    ``embeddings`` stores the towers' embedding tables in int8 too."""

    name: ClassVar[str] = "quant"
    method: str = "gptq"
    smooth_alpha: float = 0.0
    embeddings: bool = True

    def settings(self) -> dict[str, Any]:
        return {"bits": 8}


Stage = DARE | Nullu | AlphaEdit | Quant
STAGE_TYPES: tuple[type, ...] = (DARE, Nullu, AlphaEdit, Quant)
STAGES_ALLOWED = "rcc.DARE(...), rcc.Nullu(...), rcc.AlphaEdit(...), rcc.Quant(...)"


def _given(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}
