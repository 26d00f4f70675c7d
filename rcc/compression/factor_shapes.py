"""Shapes of a layer stored as two factors, shared by the float and int8 low-rank layers."""


class FactorShapes:
    """Rank and features of a layer stored as ``up @ down`` (float or int8 factors alike)."""

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def in_features(self) -> int:
        return self.down.shape[1]

    @property
    def out_features(self) -> int:
        return self.up.shape[0]
