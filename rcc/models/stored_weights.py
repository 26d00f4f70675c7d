"""Every tensor a model stores as weights: its parameters, and the int8 values and scales that int8
layers keep as buffers (so no optimiser can touch them, ``rcc.compression.quantized_layers``).

Counting parameters alone would miss most of an int8 model; the model's size, the efficiency
report and the session's ``size/…`` metrics all count these tensors. An int8 layer says which of
its buffers are weights through ``stored_buffers()`` (its masks are not), so this module needs no
import of the compression code.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def stored_tensors(module: nn.Module) -> Iterable[torch.Tensor]:
    """The parameters (shared ones once), then the weight buffers of every int8 layer."""
    yield from module.parameters()
    for child in module.modules():
        stored_buffers = getattr(child, "stored_buffers", None)
        if callable(stored_buffers):
            yield from stored_buffers()
