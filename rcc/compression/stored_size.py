"""What a model stores: the numbers and bytes a session records for every node (``size/…`` metrics).

One count for the session's nodes, the cascade's progress, the search's trials and the Python API.
"""

from __future__ import annotations


def size_metrics(model) -> dict[str, float]:
    """Stored numbers and bytes as the compressed export writes them, and all parameters.

    A masked parameter stores its kept values plus one bit per entry (the packed mask);
    every other parameter (factors included) is stored whole. Int8 layers store one byte per
    (kept) value plus their float scales.
    """
    from rcc.compression.layers import masks_by_parameter
    from rcc.models.stored_weights import stored_tensors

    masks = masks_by_parameter(model.module)
    kept = total = stored = 0
    for param in stored_tensors(model.module):
        total += param.numel()
        mask = masks.get(id(param))
        count = param.numel() if mask is None else int(mask.sum())
        kept += count
        stored += count * param.element_size() + (0 if mask is None else (mask.numel() + 7) // 8)
    return {"size/params": kept, "size/total": total, "size/bytes": stored}
