"""Prompt templates for zero-shot classification, by name, plus user template files."""

from __future__ import annotations

from pathlib import Path

from rcc.errors import EvalError

# The demo's own prompts: the digits are tiny, blurry handwritten numerals.
DIGIT_TEMPLATES: tuple[str, ...] = (
    "a photo of the number {c}.",
    "a handwritten digit {c}.",
    "the digit {c}.",
    "a blurry image of the number {c}.",
    "a pixelated picture of a handwritten {c}.",
    "a low resolution scan of the digit {c}.",
    "the number {c}, written by hand.",
)


def _openai_imagenet() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{c}") for t in OPENAI_IMAGENET_TEMPLATES)


# The 18 CIFAR templates of CLIP_benchmark / the CLIP paper.
CIFAR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.", "a blurry photo of a {c}.", "a black and white photo of a {c}.",
    "a low contrast photo of a {c}.", "a high contrast photo of a {c}.", "a bad photo of a {c}.",
    "a good photo of a {c}.", "a photo of a small {c}.", "a photo of a big {c}.",
    "a photo of the {c}.", "a blurry photo of the {c}.", "a black and white photo of the {c}.",
    "a low contrast photo of the {c}.", "a high contrast photo of the {c}.", "a bad photo of the {c}.",
    "a good photo of the {c}.", "a photo of the small {c}.", "a photo of the big {c}.",
)

TEMPLATE_SETS = ("digits", "cifar", "openai-imagenet")


def load_templates(name_or_file: str) -> tuple[str, ...]:
    """Templates by set name, or from a text file with one template per line using ``{c}``."""
    if name_or_file == "digits":
        return DIGIT_TEMPLATES
    if name_or_file == "cifar":
        return CIFAR_TEMPLATES
    if name_or_file == "openai-imagenet":
        return _openai_imagenet()
    path = Path(name_or_file)
    if not path.is_file():
        raise EvalError(f"unknown templates {name_or_file!r}; allowed: {', '.join(TEMPLATE_SETS)} or a file path")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"templates file {name_or_file!r} cannot be read as text ({exc.__class__.__name__}); "
                        f"allowed: a UTF-8 text file, one template with {{c}} per line") from exc
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    bad = [line for line in lines if "{c}" not in line]
    if not lines or bad:
        raise EvalError(
            f"template file {str(path)!r} needs one template per line, each containing {{c}}"
            + (f"; line {lines.index(bad[0]) + 1} has none: {bad[0]!r}" if bad else "; it is empty")
        )
    return tuple(lines)


def default_templates(dataset_spec: str) -> tuple[str, ...]:
    """The templates a dataset is usually evaluated with."""
    kind = dataset_spec.split(":", 1)[0]
    if kind == "digits":
        return DIGIT_TEMPLATES
    if kind in ("cifar10", "cifar100"):
        return CIFAR_TEMPLATES
    return _openai_imagenet()


def fill(template: str, classname: str) -> str:
    return template.replace("{c}", classname)
