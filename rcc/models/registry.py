"""Model specs: one string names any model rcc can load (also on the CLI)."""

from __future__ import annotations

from rcc.errors import ModelSpecError
from rcc.models.adapter import VLModel

MODEL_FORMS = (
    "rcc-mini",
    "open_clip:NAME[@PRETRAINED_TAG_OR_FILE]",
    "open_clip:CONFIG.json[@WEIGHTS]",
    "hf:ID_OR_LOCAL_DIR",
    "hf-blip:ID_OR_LOCAL_DIR",
)
DEFAULT_MODEL = "rcc-mini"


def load_model(spec: str | None = None, device: str | None = None) -> VLModel:
    """Load the model named by ``spec`` (default: the built-in rcc-mini) onto ``device``."""
    from rcc.models.quiet import quiet_libraries

    if spec is not None and (not isinstance(spec, str) or not spec.strip()):
        raise ModelSpecError(f"model spec {spec!r} is empty; accepted forms: {', '.join(MODEL_FORMS)}")
    spec = (spec or DEFAULT_MODEL).strip()
    quiet_libraries()
    scheme, sep, target = spec.partition(":")
    if spec == "rcc-mini":
        from rcc.models.rcc_mini import build_rcc_mini

        model = build_rcc_mini()
    elif sep and scheme == "open_clip":
        from rcc.models.open_clip_adapter import load_open_clip

        model = load_open_clip(spec, target)
    elif sep and scheme == "hf":
        from rcc.models.hf_clip import load_hf_clip

        model = load_hf_clip(spec, target)
    elif sep and scheme == "hf-blip":
        from rcc.models.hf_blip import load_hf_blip

        model = load_hf_blip(spec, target)
    else:
        raise ModelSpecError(f"unknown model spec {spec!r}; accepted forms: {', '.join(MODEL_FORMS)}")
    if device is not None:
        model.to(resolve_device(device))
    return model


def resolve_device(device: str) -> str:
    """``auto`` → CUDA when present, else CPU; anything else must be a device torch accepts."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise ModelSpecError(f"unknown device {device!r}; allowed: auto, cpu, cuda, cuda:N") from exc
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelSpecError(f"device {device!r} asked for, but CUDA is not available here; allowed: cpu, auto")
        if parsed.index is not None and parsed.index >= count:
            raise ModelSpecError(f"device {device!r} does not exist; allowed: cuda:0 … cuda:{count - 1}, cpu, auto")
    elif parsed.type != "cpu":
        raise ModelSpecError(f"device {device!r} is not supported; allowed: auto, cpu, cuda, cuda:N")
    return device
