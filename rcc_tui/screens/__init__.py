"""rcc-tui screens."""
