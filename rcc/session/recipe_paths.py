"""Paths inside a recipe may only point under the data roots given on the command line.

A recipe is shared data: a recipe from someone else must not make ``replay`` read (or
write) anywhere the person replaying it did not allow. Every path in a model or dataset
spec is resolved against the roots (relative paths are relative to the first root),
symlinks included, and refused when it lands outside all of them.
"""

from __future__ import annotations

from pathlib import Path

from rcc.session.ops import OpError

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json")


def _inside(path: str, roots: list[Path], what: str) -> str:
    """``path`` resolved (relative: against the first root), checked to lie under some root and to exist.

    Existence is checked here, before the replay's first op runs, so a recipe that names a
    file the roots lack stops with one line instead of failing after work began.
    """
    candidate = Path(path).expanduser()
    resolved = (candidate if candidate.is_absolute() else roots[0] / candidate).resolve()
    allowed = ", ".join(repr(str(r)) for r in roots)
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise OpError(f"{what} path {path!r} escapes the data roots; allowed: a path under {allowed} "
                      f"(relative paths are relative to the first; give more with --data-root)")
    if not resolved.exists():
        raise OpError(f"{what} path {path!r} (resolved to {str(resolved)!r}) does not exist; allowed: a file or "
                      f"folder under {allowed}")
    return str(resolved)


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or text.endswith(_WEIGHT_SUFFIXES) or ".." in Path(text).parts


def _known_pretrained_tag(name: str, tag: str) -> bool:
    """Whether open_clip knows ``tag`` as a pretrained tag of model ``name`` (then it downloads, never reads a file)."""
    if not tag or name.endswith(".json"):
        return False
    import open_clip

    return bool(open_clip.get_pretrained_cfg(name, tag))


def confine_model_spec(spec: str, roots: list[Path]) -> str:
    """The model spec with its file paths resolved under ``roots`` (hub ids and names pass)."""
    scheme, sep, target = spec.partition(":")
    if not sep:
        return spec  # rcc-mini
    if scheme == "open_clip":
        name, at, weights = target.partition("@")
        if _looks_like_path(name):
            name = _inside(name, roots, "model config")
        if at and not _known_pretrained_tag(name, weights):
            # open_clip reads anything that is not one of the model's tags as a file, bare names
            # (no slash, no suffix) included: relative to the working directory, not the roots.
            weights = _inside(weights, roots, "model weights")
        return f"{scheme}:{name}{at}{weights}"
    if _looks_like_path(target) or (roots[0] / target).exists():
        return f"{scheme}:{_inside(target, roots, 'model')}"
    if Path(target).exists():
        # transformers would read this folder of the working directory before the hub: refuse.
        raise OpError(f"model {target!r} names a folder of the working directory, outside the data roots; "
                      f"allowed: a folder under the first --data-root, or a hub id")
    return spec


def confine_data_spec(spec: str, roots: list[Path]) -> str:
    """The dataset spec with its path and path options resolved under ``roots``."""
    from rcc.data.registry import parse_dataset_spec

    parsed = parse_dataset_spec(spec)
    if parsed.path is None and not parsed.options:
        return parsed.text
    path = _inside(parsed.path, roots, "dataset") if parsed.path is not None else None
    options = [(key, _inside(value, roots, f"dataset option {key}") if key in ("root", "classnames") else value)
               for key, value in parsed.options]
    query = "&".join(f"{k}={v}" for k, v in options)
    return f"{parsed.kind}{':' + path if path else ''}{'?' + query if query else ''}"


def export_name(out: str) -> str:
    """Where a recipe's export goes in the replayed session: its last path part, never a path."""
    name = Path(out).name
    if name in ("", ".", ".."):
        raise OpError(f"export path {out!r} has no usable name; allowed: a directory name")
    return name
