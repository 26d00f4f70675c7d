"""rcc: the engine of rcc-tui (models, data, evaluation, compression). Never imports Textual.

The Python API (``rcc.load``, ``rcc.Cascade``, ``rcc.DARE``, ``rcc.Nullu``, ``rcc.AlphaEdit``, ``rcc.Quant``,
``rcc.evaluate``, ``rcc.export``, ``rcc.close``) lives in ``rcc.api``; it is imported on first use,
so ``import rcc`` stays cheap (no torch).
"""

__version__ = "0.1.0"

_API = ("load", "Cascade", "CascadeReport", "DARE", "Nullu", "AlphaEdit", "Quant", "evaluate", "export", "close",
        "Exported")


def __getattr__(name: str):
    if name in _API:
        import rcc.api

        return getattr(rcc.api, name)
    if name == "load_compressed":
        from rcc.compression.structure import load_compressed

        return load_compressed
    raise AttributeError(f"module 'rcc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, "load_compressed"])
