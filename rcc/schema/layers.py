"""A compressible weight matrix as a record: its tower, block, kind and shape (no module, no tensor).

rcc.models.inventory finds these in a model; plans, groups and the app read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Tower = Literal["vision", "text", "fusion", "decoder"]
LayerKind = Literal["attn_q", "attn_k", "attn_v", "attn_out", "mlp_in", "mlp_out", "projection"]

TOWERS: tuple[Tower, ...] = ("vision", "text", "fusion", "decoder")
LAYER_KINDS: tuple[LayerKind, ...] = (
    "attn_q", "attn_k", "attn_v", "attn_out", "mlp_in", "mlp_out", "projection",
)


@dataclass(frozen=True)
class LayerInfo:
    """One compressible weight matrix."""

    name: str
    tower: Tower
    block: int | None
    kind: LayerKind
    shape: tuple[int, int]
    param: str
    rows: tuple[int, int] | None = None
    transposed: bool = False
    heads: int | None = None  # attention layers: heads of their attention module now
    dense_shape: tuple[int, int] | None = None  # before structured pruning; None: the shape is unchanged

    @property
    def params(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def original_shape(self) -> tuple[int, int]:
        """The shape before any structured pruning (channels or heads removed)."""
        return self.dense_shape or self.shape

    def as_dict(self) -> dict:
        out = {
            "name": self.name, "tower": self.tower, "block": self.block, "kind": self.kind,
            "shape": list(self.shape), "params": self.params, "param": self.param,
        }
        if self.heads is not None:
            out["heads"] = self.heads
        if self.dense_shape is not None:
            out["dense_shape"] = list(self.dense_shape)
        return out
