"""Datasets for rcc: specs, readers for common formats, and deterministic calibration samples."""

from rcc.data.images import ArrayImages, FileImages, read_image
from rcc.data.registry import DATASET_FORMS, DatasetSpec, dataset_splits, load_dataset, parse_dataset_spec
from rcc.data.sampler import balanced_indices, balanced_subset, first_n, subset
from rcc.data.types import CaptionDataset, ClassificationDataset, Dataset, ImageList, indices_subset

__all__ = [
    "DATASET_FORMS",
    "ArrayImages",
    "CaptionDataset",
    "ClassificationDataset",
    "Dataset",
    "DatasetSpec",
    "FileImages",
    "ImageList",
    "balanced_indices",
    "balanced_subset",
    "dataset_splits",
    "first_n",
    "indices_subset",
    "load_dataset",
    "parse_dataset_spec",
    "read_image",
    "subset",
]
