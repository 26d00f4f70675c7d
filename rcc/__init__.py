"""rcc: the engine of rcc-tui (models, data, evaluation, compression). Never imports Textual."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so ``import rcc`` stays cheap (no torch) until a library entry point is used.
    if name == "load_compressed":
        from rcc.compression.structure import load_compressed

        return load_compressed
    raise AttributeError(f"module 'rcc' has no attribute {name!r}")
