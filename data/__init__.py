"""Datasets as in-memory uint8 tensors, batched tensor augmentation, and the loader that serves them."""
from data.augment import mixup_cutmix, train_transform
from data.catalog import DATASETS, get_spec, list_datasets
from data.loader import TensorLoader
from data.locate import load_data, load_dataset
from data.specs import DatasetSpec, ImageData

__all__ = ["DATASETS", "DatasetSpec", "ImageData", "TensorLoader", "get_spec", "list_datasets", "load_data",
           "load_dataset", "mixup_cutmix", "train_transform"]
