"""rcc-tui widgets."""
