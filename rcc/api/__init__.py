"""The Python API: ``rcc.load``, ``rcc.Cascade`` with ``rcc.DARE`` / ``rcc.Nullu`` / ``rcc.AlphaEdit`` / ``rcc.Quant``,
``rcc.evaluate``, ``rcc.export``, ``rcc.close`` (see the README's "Python API")."""

from rcc.api.calls import Exported, close, evaluate, export, load
from rcc.api.cascade import Cascade, CascadeReport
from rcc.api.stages import DARE, AlphaEdit, Nullu, Quant

__all__ = ["DARE", "AlphaEdit", "Cascade", "CascadeReport", "Exported", "Nullu", "Quant", "close", "evaluate",
           "export", "load"]
