"""Builders of tiny OpenCLIP models for tests (random weights, built from a config dict)."""

TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 24, "heads": 2, "layers": 2},
}
