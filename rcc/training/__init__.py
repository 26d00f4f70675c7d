"""Training: the generic trainer and the rcc-mini demo recipe."""
