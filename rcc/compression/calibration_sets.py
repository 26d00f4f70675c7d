"""Default calibration data for a dataset: what X (to reconstruct) and K₀ (to preserve) are.

- X: a class-balanced sample of the dataset's train split (N per class, seeded), the
  class prompts (every template × class name) or captions, and the ``calib`` half of the
  docstring corpus, so the text tower sees both the task's prompts and general English.
- K₀ (AlphaEdit's preserved inputs): a disjoint image sample and a disjoint slice of the
  corpus: inputs unrelated to the task, whose outputs a correction must leave alone.
- Pairs, for models whose text attends to the image (BLIP's fusion encoder and caption
  decoder): each X image with one of its captions (or its class prompt, templates taken in
  turn), each K₀ image with a corpus sentence (a mismatched pair, outside the task).

Both read the train split only (``rcc.data.roles``): never an image the eval or test split holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from rcc.compression.calibration import CalibrationData
from rcc.data.registry import load_dataset
from rcc.data.roles import CALIBRATION_SPLIT
from rcc.data.sampler import balanced_indices
from rcc.data.text_corpus import docstring_sentences
from rcc.data.types import ClassificationDataset, Dataset, indices_subset
from rcc.errors import DataError
from rcc.eval.templates import default_templates, fill

CORPUS_SENTENCES = 160


def calibration_sets(
    data_spec: str, per_class: int = 16, seed: int = 0, templates: Sequence[str] | None = None,
    train: Dataset | None = None,
) -> tuple[CalibrationData, CalibrationData]:
    """(X, K₀) for ``data_spec``: see the module docstring. ``train``: its train split, if loaded already."""
    dataset = train if train is not None else load_dataset(data_spec, CALIBRATION_SPLIT)
    if dataset.split != CALIBRATION_SPLIT:
        raise DataError(f"calibration reads the {CALIBRATION_SPLIT} split; '{dataset.split}' of '{data_spec}' "
                        f"was given")
    corpus = docstring_sentences("calib")
    if isinstance(dataset, ClassificationDataset):
        chosen = balanced_indices(dataset.labels, 2 * per_class, seed)
        templates = tuple(templates or default_templates(data_spec))
        texts = tuple(fill(t, name) for name in dataset.classnames for t in templates)
        x_pairs = tuple(fill(templates[j % len(templates)], dataset.classnames[dataset.labels[i]])
                        for j, i in enumerate(chosen[0::2]))
    else:
        chosen = list(range(min(len(dataset), 20 * per_class)))
        texts = tuple(c for caps in dataset.captions[: 10 * per_class] for c in caps)
        x_pairs = tuple(dataset.captions[i][j % len(dataset.captions[i])] if dataset.captions[i] else ""
                        for j, i in enumerate(chosen[0::2]))
    # Alternate the sample between X and K₀, so both cover every class.
    x_images = indices_subset(dataset.images, chosen[0::2])
    k_images = indices_subset(dataset.images, chosen[1::2])
    preserved_texts = tuple(corpus[CORPUS_SENTENCES:2 * CORPUS_SENTENCES])
    k_pairs = tuple(preserved_texts[j % len(preserved_texts)] for j in range(len(k_images)))
    x = CalibrationData(images=x_images, texts=texts + tuple(corpus[:CORPUS_SENTENCES]), pair_texts=x_pairs)
    k0 = CalibrationData(images=k_images, texts=preserved_texts, pair_texts=k_pairs)
    return x, k0
