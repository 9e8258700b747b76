"""Data: embedded sets (``digits``, ``shapes``, ``random``), torchvision sets, on-device augmentation.

>>> from skiplab.data import load_dataset, iterate_batches
>>> data = load_dataset("digits")
>>> data.input_shape, data.num_classes, data.augment
((1, 8, 8), 10, 'crop1')
"""

from .augment import AUGMENT_KINDS, AugmentSpec, augment_batch, iterate_batches, parse_augment
from .datasets import (
    DATASETS,
    DatasetEntry,
    default_data_dir,
    get_dataset_entry,
    list_datasets,
    load_dataset,
)
from .tensor_data import TensorData

__all__ = [
    "AUGMENT_KINDS",
    "DATASETS",
    "AugmentSpec",
    "DatasetEntry",
    "TensorData",
    "augment_batch",
    "default_data_dir",
    "get_dataset_entry",
    "iterate_batches",
    "list_datasets",
    "load_dataset",
    "parse_augment",
]
