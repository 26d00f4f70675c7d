"""rcc: the engine of rcc-tui (models, data, evaluation, compression). Never imports Textual."""

__version__ = "0.1.0"
