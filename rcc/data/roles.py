"""The three data roles and the split each one reads, for every dataset kind.

- calibration (and recovery training) reads ``train``;
- eval reads ``val``: what the cascade checks and backs off on, what sensitivity scans, what the
  search objective and training's model selection optimise;
- test is read only for reports: the ``evaluate`` op, ``rcc-tui eval``, compress reports,
  compare, the bench tables.

Every kind has the three splits (Karpathy's own, a class-balanced slice of train for CIFAR, one
folder or file cut in three; see ``rcc.data.registry.split_layout``), and they never share an item.
"""

from __future__ import annotations

from dataclasses import dataclass

from rcc.errors import DataError

CALIBRATION_SPLIT = "train"
EVAL_SPLIT = "val"
TEST_SPLIT = "test"
# Why a split cannot take a role it was asked for.
_TAKEN = {
    CALIBRATION_SPLIT: "calibration and training read it",
    EVAL_SPLIT: "it is the eval split",
    TEST_SPLIT: "it is the split reported as test",
    "all": "it holds every split",
}


@dataclass(frozen=True)
class DataRoles:
    """Which split each role reads, and how the dataset's splits were made (sizes, seed)."""

    data: str
    calibration: str
    eval: str
    test: str
    layout: str

    def as_dict(self) -> dict[str, str]:
        return {"calibration": self.calibration, "eval": self.eval, "test": self.test, "layout": self.layout}


def _role_split(data: str, split: str | None, role: str, wanted: str) -> str:
    from rcc.data.registry import canonical_split

    name = canonical_split(data, split or wanted)
    if name != wanted:
        raise DataError(f"split '{split}' cannot be the {role} split of '{data}': {_TAKEN.get(name, 'it is no role')}"
                        f"; allowed: {wanted}")
    return name


def eval_split_of(data: str, split: str | None = None) -> str:
    """The eval split of ``data`` (``val``); ``split``, when given (an option, an old session), must name it."""
    return _role_split(data, split, "eval", EVAL_SPLIT)


def split_reported_as_test(data: str, split: str | None = None) -> str:
    """The test split of ``data`` (``test``); ``split``, when given, must name it."""
    return _role_split(data, split, "test", TEST_SPLIT)


def data_roles(data: str, eval_split: str | None = None, test_split: str | None = None) -> DataRoles:
    """The roles of ``data``, checked: calibration, eval and test read three disjoint splits."""
    from rcc.data.registry import split_layout

    return DataRoles(data=data, calibration=CALIBRATION_SPLIT, eval=eval_split_of(data, eval_split),
                     test=split_reported_as_test(data, test_split), layout=split_layout(data))
