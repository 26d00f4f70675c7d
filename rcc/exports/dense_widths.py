"""What a dense export must write into the model library's config after structured pruning.

Plain open_clip and transformers configs hold one MLP width per tower (open_clip: ``mlp_ratio``
of ``vision_cfg`` / ``text_cfg``; transformers: ``intermediate_size`` of the tower's sub-config)
and derive the head size from the width and the head count. So a model whose hidden units were
removed exports dense when every block of a tower kept the same number; one with removed heads,
or with towers whose blocks differ, cannot be described by those configs and is refused in one
line that names the way out: the ONNX export, which stores any per-block shape (or rcc's own
compressed format).
"""

from __future__ import annotations

import math

from rcc.compression.groups import structured_groups
from rcc.errors import RccError
from rcc.models.adapter import VLModel

WAY_OUT = ("allowed: the ONNX export (--format onnx), which keeps any per-block shape, or --format compressed "
           "(loads with rcc.load_compressed)")


def narrowed_mlp_widths(model: VLModel) -> dict[str, int]:
    """Tower → the MLP width every block of it now has, for towers where hidden units were removed.

    Refuses (``RccError``) a model with removed heads or with a tower whose blocks differ in width.
    """
    groups = structured_groups(model.layers())
    library = "open_clip" if model.family == "open_clip" else "transformers"
    for group in groups:
        if group.kind == "head" and group.units < group.dense_units:
            raise RccError(f"model {model.spec!r} cannot be exported dense: attention {group.leader!r} runs "
                           f"{group.units} of its {group.dense_units} heads, and a plain {library} config cannot say "
                           f"so; {WAY_OUT}")
    widths: dict[str, set[int]] = {}
    narrowed: set[str] = set()
    for group in groups:
        if group.kind == "channel":
            widths.setdefault(group.tower, set()).add(group.units)
            if group.units < group.dense_units:
                narrowed.add(group.tower)
    for tower in sorted(narrowed):
        if len(widths[tower]) > 1:
            shown = ", ".join(map(str, sorted(widths[tower])))
            raise RccError(f"model {model.spec!r} cannot be exported dense: the {tower} tower's blocks have MLP widths "
                           f"{shown}, and a plain {library} config holds one width per tower; {WAY_OUT}")
    return {tower: next(iter(widths[tower])) for tower in sorted(narrowed)}


def mlp_ratio_for(width: int, hidden: int) -> float:
    """A ratio r with int(width · r) == hidden, as open_clip computes the MLP width from ``mlp_ratio``."""
    ratio = hidden / width
    while int(width * ratio) < hidden:  # hidden / width may round just below in binary
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def model_width(model: VLModel, tower: str) -> int:
    """The residual width of a tower: the input width of its MLP layers."""
    return next(layer.shape[1] for layer in model.layers() if layer.tower == tower and layer.kind == "mlp_in")


def hf_tower_config(config, family: str, tower: str):
    """The transformers sub-config that holds ``intermediate_size`` for ``tower``."""
    if tower == "vision":
        return config.vision_config
    if family in ("hf_clip", "hf_blip") and tower in ("text", "decoder"):
        return config.text_config
    raise RccError(f"tower {tower!r} of a {family} model has no MLP width in its config; {WAY_OUT}")
