"""Datasets as in-memory uint8 tensors, plus batched tensor augmentation."""
from data.datasets import DATASETS, DatasetSpec, ImageData, get_spec, list_datasets, load_dataset

__all__ = ["DATASETS", "DatasetSpec", "ImageData", "get_spec", "list_datasets", "load_dataset"]
