"""Numeric precision choices shared by evaluation and training."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast(device_type: str, precision: str):
    """An autocast context for ``precision``; fp32 runs without autocast."""
    if precision not in PRECISIONS:
        from rcc.errors import RccError

        raise RccError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)
