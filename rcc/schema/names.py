"""The names plans, ops, search spaces, the CLI and the app offer: one source for each list."""

from __future__ import annotations

# The cascade's stages, in the order they run (rcc.compression.cascade.STAGES maps each to its code).
STAGE_NAMES: tuple[str, ...] = ("dare", "nullu", "alphaedit", "quant")

# How the quant stage rounds: to nearest, or GPTQ's error feedback on the calibration Gram.
QUANT_METHODS: tuple[str, ...] = ("rtn", "gptq")

# How the prune stage scores weights: DARE's random drop and rescale, |w|, or Wanda's |w|·‖x‖.
PRUNE_METHODS: tuple[str, ...] = ("dare", "magnitude", "wanda")

# Scores that rank whole channels or heads (a random drop has no meaning for a structure).
STRUCTURED_METHODS: tuple[str, ...] = ("magnitude", "wanda")
